"""Fuzz targets: one function per parser of untrusted input, each fed raw bytes.

A target must end in success or in an `LlmrunError` (a message for the user). Any other
exception, a crash, a sanitizer report or a hang is a bug. The same targets serve the bounded
run in the test suite (tests/test_fuzz.py, our own mutator) and the long coverage-guided run
(tests/fuzz/run.py, atheris); tests/fuzz/corpus/<target>/ holds their seeds and every input
that once found a bug.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from types import SimpleNamespace

from llmrun.errors import LlmrunError
from llmrun.model import Model

_DIR = tempfile.mkdtemp(prefix="llmrun-fuzz-")
os.environ["LLMRUN_HOME"] = os.path.join(_DIR, "home")  # nothing may reach the user's model cache
_serial = 0


def _scratch(name: str, data: bytes) -> str:
    """`data` in a new file of its own: an earlier input may still be mapped, and rewriting a
    mapped file in place would make reading the old map fault."""
    global _serial
    _serial += 1
    path = os.path.join(_DIR, f"{_serial}-{name}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _clear() -> None:
    for name in set(os.listdir(_DIR)) - {"home"}:
        p = os.path.join(_DIR, name)
        if os.path.isdir(p):
            for inner in os.listdir(p):
                os.unlink(os.path.join(p, inner))
            os.rmdir(p)
        else:
            os.unlink(p)


def _run_model(path: str) -> None:
    """Everything a user's first command does with a model file: load it (config, weights,
    tokenizer, the kernels' graph), check every tensor, tokenize and run two tokens."""
    m = Model(path)
    m.file.verify()
    ids = m.tokenizer.encode("Hi there", add_special_tokens=True)[:2] or [0]
    m.forward(ids, m.new_cache(8))


def _guard(fn):
    """The target as the fuzzers call it: our own errors are the expected way to say no."""
    def target(data: bytes) -> None:
        try:
            fn(data)
        except LlmrunError:
            pass
        finally:
            _clear()
    target.__name__ = fn.__name__
    target.__doc__ = fn.__doc__
    return target


# --- .llmr -------------------------------------------------------------------------------------

SIZE_OFFSET = 24  # of the header's file size field: after magic, byte-order mark, version, sizes

def _fix_llmr_header(body: bytes, size: bool, checksum: bool) -> bytes:
    """The header's file size set to the body's and its checksum recomputed over the sections
    it names, so that mutations that move bytes or edit the metadata and index reach the
    checks behind those two."""
    from llmrun.format import CHECKSUM_OFFSET, HEADER, HEADER_SIZE
    if len(body) < HEADER_SIZE:
        return body
    if size:
        body = body[:SIZE_OFFSET] + struct.pack("<Q", len(body)) + body[SIZE_OFFSET + 8:]
    if not checksum:
        return body
    fields = HEADER.unpack(body[:HEADER_SIZE])
    meta_off, meta_size, tok_off, tok_size, index_off, index_size = fields[7:13]
    crc = zlib.crc32(body[:CHECKSUM_OFFSET])
    for off, size in ((meta_off, meta_size), (tok_off, tok_size), (index_off, index_size)):
        crc = zlib.crc32(body[off:off + size], crc)
    return body[:CHECKSUM_OFFSET] + struct.pack("<I", crc) + body[CHECKSUM_OFFSET + 4:]


@_guard
def llmr(data: bytes) -> None:
    """A .llmr file behind one flag byte: bit 0 recomputes the header checksum, bit 1 sets
    the recorded file size to the real one."""
    if not data:
        return
    body = _fix_llmr_header(data[1:], size=bool(data[0] & 2), checksum=bool(data[0] & 1))
    _run_model(_scratch("model.llmr", body))


# --- GGUF --------------------------------------------------------------------------------------

@_guard
def gguf(data: bytes) -> None:
    """A GGUF file: parsed, imported (tensors and tokenizer) to .llmr, and the result run."""
    from llmrun.models import convert
    src = _scratch("model.gguf", data)
    out = os.path.join(_DIR, "from-gguf.llmr")
    convert(src, out)
    _run_model(out)


# --- Hugging Face checkpoints ------------------------------------------------------------------

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "tokenizer.model", "model.safetensors.index.json")
HF_SEPARATOR = b"\n--llmrun-fuzz-next-file--\n"


def pack_hf(files: dict[str, bytes]) -> bytes:
    """A checkpoint directory as one fuzz input: HF_FILES in order, an absent one empty."""
    return HF_SEPARATOR.join(files.get(name, b"") for name in HF_FILES)


@_guard
def hf(data: bytes) -> None:
    """A checkpoint directory (see pack_hf): config.json, safetensors, tokenizer files."""
    from llmrun.models import convert
    d = os.path.join(_DIR, "checkpoint")
    os.mkdir(d)
    for name, blob in zip(HF_FILES, data.split(HF_SEPARATOR)):
        if blob:
            with open(os.path.join(d, name), "wb") as f:
                f.write(blob)
    out = os.path.join(_DIR, "from-hf.llmr")
    convert(d, out, "q8_0")
    _run_model(out)


# --- tokenizers --------------------------------------------------------------------------------

TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "vocab.gguf")
TEXT = "Hello, world! Ünïcödé ✓ 日本語 \t\n  <s> 123 don't"


@_guard
def tokenizer(data: bytes) -> None:
    """A tokenizer file behind one byte choosing its kind (TOKENIZER_NAMES): loaded, then
    made to encode, decode and stream-decode a mixed text."""
    if not data:
        return
    from llmrun.tokenizer import StreamDecoder, load_tokenizer
    tok = load_tokenizer(_scratch(TOKENIZER_NAMES[data[0] % len(TOKENIZER_NAMES)], data[1:]))
    ids = tok.encode(TEXT)
    tok.decode(ids)
    stream = StreamDecoder(tok)
    for i in ids:
        stream.push(i)
    stream.flush()


# --- chat templates ----------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <s> {{ x }}"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


@_guard
def template(data: bytes) -> None:
    """A chat template (UTF-8, bad bytes replaced) rendered for a short conversation."""
    from llmrun.chat import render_chat
    tok = SimpleNamespace(bos_id=1, eos_ids=[2], decode=lambda ids: {1: "<s>", 2: "</s>"}[ids[0]])
    render_chat(SimpleNamespace(chat_template=None, tokenizer=tok), MESSAGES,
                template=data.decode("utf-8", errors="replace") or " ")


TARGETS = {t.__name__: t for t in (llmr, gguf, hf, tokenizer, template)}
