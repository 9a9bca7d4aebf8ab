"""A GGUF vocabulary → the tokenizer a .llmr file stores (kind, special ids, and a blob).

GGUF keeps a tokenizer as arrays (`tokenizer.ggml.tokens`, `.scores`, `.token_type`,
`.merges`) plus a few names and ids. We rebuild from them what the runtime already runs:

- `tokenizer.ggml.model == "llama"` (sentencepiece): a sentencepiece ModelProto, written by hand
  in protobuf's wire format: the pieces with their scores and types, a BPE trainer spec with byte
  fallback and the special ids, and LLaMA's normaliser (identity, dummy prefix, "▁" for spaces).
- `tokenizer.ggml.model == "gpt2"` (byte-level BPE): a `tokenizer.json` for the `tokenizers`
  library: the BPE vocab and merges, the pre-tokenizer named by `tokenizer.ggml.pre` (the same
  regexes llama.cpp runs), a byte-level decoder, control and user-defined tokens as added
  tokens, and a post-processor that adds BOS (and EOS) the way llama.cpp's add_special does.

Anything we cannot reproduce faithfully is refused with a ConvertError, never guessed.
"""
from __future__ import annotations

import json
import struct

from ..errors import ConvertError

# GGUF token types (llama.cpp's llama_token_type) = sentencepiece's ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# --- pre-tokenizers for byte-level BPE -----------------------------------------------------------
# Text is cut into words before BPE, never merging across a cut, then each word's bytes are mapped
# to GPT-2's printable alphabet. Each `tokenizer.ggml.pre` name gets the regexes llama.cpp runs
# for it (llama-vocab.cpp), written as the models' own tokenizer.json files write them: each regex
# in turn splits every piece into its matches and the gaps between them (`Split`, "Isolated").
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"  # digits in 1-3s
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one at a time


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _byte_level(gpt2_regex: bool) -> dict:
    """Bytes → GPT-2's alphabet; with gpt2_regex, GPT-2's regex splits words first."""
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": gpt2_regex}


class Pre:
    """A `tokenizer.ggml.pre` name: its pre-tokenizer steps and the llama.cpp flags that go with it."""

    def __init__(self, steps: list, add_bos=False, ignore_merges=False, nfc=False):
        self.steps, self.add_bos, self.ignore_merges, self.nfc = steps, add_bos, ignore_merges, nfc


_gpt2 = Pre([_byte_level(True)])
_llama3 = Pre([_split(LLAMA3), _byte_level(False)], add_bos=True, ignore_merges=True)
_qwen2 = Pre([_split(QWEN2), _byte_level(False)], nfc=True)  # Qwen2's tokenizer.json normalises to NFC
# single digits, then GPT-2's regex: llama.cpp's "\p{N}" split, as SmolLM2's and StarCoder's own
# tokenizer.json write it
_starcoder = Pre([{"type": "Digits", "individual_digits": True}, _byte_level(True)])
PRE_TOKENIZERS = {
    # what llama.cpp runs for a vocabulary that names no better one
    "default": Pre([_split(r"[\p{P}\$\+<=>\^~\|]+"), _split(GPT2), _split(r"\p{N}+"),
                    _split(r"[0-9][0-9][0-9]"), _byte_level(False)]),
    "gpt-2": _gpt2, "phi-2": _gpt2, "mpt": _gpt2, "olmo": _gpt2,
    "llama3": _llama3, "llama-v3": _llama3, "llama-bpe": _llama3, "falcon3": _llama3,
    "qwen2": _qwen2, "deepseek-r1-qwen": _qwen2,
    "smollm": _starcoder, "starcoder": _starcoder, "refact": _starcoder,
}


# What each key must hold: a GGUF's metadata values are typed by the file, which may lie.
LISTS = {"tokens": str, "merges": str, "token_type": int, "scores": (int, float)}
SCALARS = {"bos_token_id": int, "eos_token_id": int, "eot_token_id": int, "eom_token_id": int,
           "unknown_token_id": int, "padding_token_id": int, "add_bos_token": bool, "add_eos_token": bool,
           "model": str, "pre": str}


def _check_types(meta: dict) -> None:
    def ok(v, t):
        return isinstance(v, t) and (t is bool or not isinstance(v, bool))
    for key, t in LISTS.items():
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is not None and not (isinstance(v, list) and all(ok(x, t) for x in v)):
            raise ConvertError(f"tokenizer.ggml.{key} is not a list of {getattr(t, '__name__', 'number')}s")
    for key, t in SCALARS.items():
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is not None and not ok(v, t):
            raise ConvertError(f"tokenizer.ggml.{key} is {v!r}, not a {t.__name__}")


def tokenizer_from_gguf(meta: dict) -> tuple[dict, bytes]:
    """(info, blob) for a GGUF's metadata dict (key → str/int/float/bool or a list of those).

    info is {"kind": "spm"|"bpe", "bos_id", "eos_ids", "add_bos", "add_eos"}: eos_ids are the
    ids the GGUF names as ending a turn (eos, eot, eom), nothing guessed from token texts."""
    _check_types(meta)
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model not in ("llama", "gpt2"):
        raise ConvertError(f"unsupported GGUF tokenizer model {model!r} (tokenizer.ggml.model); "
                           "supported: 'llama' (sentencepiece), 'gpt2' (byte-level BPE)")
    if not tokens:
        raise ConvertError("the GGUF has no vocabulary (tokenizer.ggml.tokens is missing or empty)")
    n = len(tokens)
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * n)
    if len(types) != n:
        raise ConvertError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")

    def special(name, default=None):
        v = meta.get(f"tokenizer.ggml.{name}_token_id", default)
        return int(v) if v is not None and 0 <= int(v) < n else None

    if model == "llama":
        kind, pre, add_bos_default = "spm", None, True
        bos, eos = special("bos", 1), special("eos", 2)
    else:
        kind, pre = "bpe", _pre(meta)
        add_bos_default = pre.add_bos
        bos, eos = special("bos"), special("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    eos_ids = sorted({i for i in (eos, special("eot"), special("eom")) if i is not None})
    info = {"kind": kind, "bos_id": bos, "eos_ids": eos_ids, "add_bos": add_bos, "add_eos": add_eos}

    if kind == "spm":
        blob = _spm_model(meta, tokens, types, bos, eos)
    else:
        blob = _bpe_json(meta, tokens, types, pre, bos if add_bos else None, eos if add_eos else None)
    return info, blob


def _pre(meta: dict) -> Pre:
    name = meta.get("tokenizer.ggml.pre")
    if name is None:  # llama.cpp then warns and runs "default", wrongly for LLaMA 3 and most others
        raise ConvertError("the GGUF does not name its pre-tokenizer (tokenizer.ggml.pre): it predates "
                           "the key; convert the model again with a current llama.cpp")
    if name not in PRE_TOKENIZERS:
        raise ConvertError(f"unsupported GGUF pre-tokenizer {name!r} (tokenizer.ggml.pre); "
                           f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    return PRE_TOKENIZERS[name]


def _unique_texts(tokens) -> list[str]:
    """Token texts as sentencepiece / tokenizers can hold them: valid UTF-8, non-empty, unique.
    Others (rare: duplicates, empty or broken-UTF-8 tokens) get a placeholder no text can match."""
    out, seen = [], set()
    for i, t in enumerate(tokens):
        t = str(t)
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a reader's errors="surrogateescape"
            t = ""
        if not t or t in seen:
            t = f"[llmrun-unrepresentable-token-{i}]"
        seen.add(t)
        out.append(t)
    return out


# --- sentencepiece -------------------------------------------------------------------------------

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int32s are written as 10-byte two's complement
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _int(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(int(v))


def _float(field: int, v: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", v)


def _bytes(field: int, v: bytes | str) -> bytes:
    v = v.encode() if isinstance(v, str) else v
    return _varint(field << 3 | 2) + _varint(len(v)) + v


def _spm_model(meta, tokens, types, bos, eos) -> bytes:
    """A sentencepiece ModelProto: pieces (1), trainer_spec (2), normalizer_spec (3)."""
    n = len(tokens)
    scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * n)
    if len(scores) != n:
        raise ConvertError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
    unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
    unk = int(unk) if unk is not None and 0 <= int(unk) < n else None
    pad = meta.get("tokenizer.ggml.padding_token_id")
    pad = int(pad) if pad is not None and 0 <= int(pad) < n else -1
    texts = _unique_texts(tokens)
    if unk is None:  # sentencepiece needs exactly one unknown piece; llama.cpp falls back to bytes
        raise ConvertError("a sentencepiece GGUF vocabulary without an unknown token "
                           "(tokenizer.ggml.unknown_token_id)")
    pieces = []
    for i, (text, score, t) in enumerate(zip(texts, scores, types)):
        if i == unk:
            t = UNKNOWN
        elif t == UNKNOWN:
            t = CONTROL  # sentencepiece allows one UNKNOWN piece; others are never matched in text
        elif t not in (NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE):
            t = NORMAL
        elif text != str(tokens[i]):
            t = UNUSED  # a placeholder for an unrepresentable token
        if t == BYTE and not (len(text) == 6 and text.startswith("<0x") and text.endswith(">")):
            t = NORMAL
        pieces.append(_bytes(1, _bytes(1, text) + _float(2, float(score)) + _int(3, t)))
    trainer = b"".join([
        _int(3, 2),  # model_type: BPE (llama.cpp's SPM tokenizer merges by score, as BPE does)
        _int(4, n),  # vocab_size
        _int(35, 1),  # byte_fallback
        _int(40, unk), _int(41, -1 if bos is None else bos), _int(42, -1 if eos is None else eos),
        _int(43, pad),
        _bytes(45, texts[unk]),
    ])
    if bos is not None:
        trainer += _bytes(46, texts[bos])
    if eos is not None:
        trainer += _bytes(47, texts[eos])
    if pad >= 0:
        trainer += _bytes(48, texts[pad])
    normalizer = b"".join([
        _bytes(1, "identity"),
        _int(3, bool(meta.get("tokenizer.ggml.add_space_prefix", True))),  # add_dummy_prefix
        _int(4, bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False))),
        _int(5, 1),  # escape_whitespaces: " " → "▁"
    ])
    return b"".join(pieces) + _bytes(2, trainer) + _bytes(3, normalizer)


# --- byte-level BPE ------------------------------------------------------------------------------

def _bpe_json(meta, tokens, types, pre: Pre, bos, eos) -> bytes:
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise ConvertError("a byte-level BPE GGUF vocabulary without merges (tokenizer.ggml.merges)")
    texts = _unique_texts(tokens)
    vocab = {t: i for i, t in enumerate(texts)}
    pairs = []
    for m in merges:
        # llama.cpp splits at the first space after the first character
        cut = m.find(" ", 1)
        a, b = (m[:cut], m[cut + 1:]) if cut > 0 else (m, "")
        if a in vocab and b in vocab and a + b in vocab and " " not in a + b:
            pairs.append(f"{a} {b}")  # merges whose tokens are missing can never apply; drop them
    added = [{"id": i, "content": texts[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t in (CONTROL, UNKNOWN)}
             for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "vocab": vocab, "merges": pairs}
    if pre.ignore_merges:  # a word that is itself a token is not split (LLaMA 3); tokenizers ≥ 0.19
        model["ignore_merges"] = True
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"} if pre.nfc else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre.steps},
        "post_processor": _post_processor(texts, bos, eos),
        "decoder": _byte_level(True),
        "model": model,
    }, ensure_ascii=False).encode("utf-8")


def _post_processor(texts, bos, eos) -> dict:
    """encode(add_special_tokens=True) adds BOS / EOS as llama.cpp's add_special does."""
    first = [{"SpecialToken": {"id": texts[bos], "type_id": 0}}] if bos is not None else []
    last = [{"SpecialToken": {"id": texts[eos], "type_id": 0}}] if eos is not None else []
    special = {texts[i]: {"id": texts[i], "ids": [i], "tokens": [texts[i]]} for i in {bos, eos} if i is not None}
    return {"type": "TemplateProcessing",
            "single": first + [{"Sequence": {"id": "A", "type_id": 0}}] + last,
            "pair": first + [{"Sequence": {"id": "A", "type_id": 0}}] + last
            + first + [{"Sequence": {"id": "B", "type_id": 1}}] + last,
            "special_tokens": special}


# --- the way back: a .llmr tokenizer as GGUF metadata (models/gguf_export.py) ----------------------

def _wire_fields(buf: bytes):
    """(field number, value) of a protobuf message: ints for varints and fixed32s read as
    floats where the caller wants them (as raw bytes here), bytes for length-delimited fields."""
    pos = 0

    def varint():
        nonlocal pos
        v = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v
    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, varint()
        elif wire == 5:
            yield field, buf[pos:pos + 4]
            pos += 4
        elif wire == 1:
            yield field, buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            n = varint()
            yield field, buf[pos:pos + n]
            pos += n
        else:
            raise ConvertError(f"the sentencepiece model has a protobuf field of wire type {wire}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def pre_tokenizer_name(tok: dict) -> str:
    """The `tokenizer.ggml.pre` name of a tokenizer.json whose pre-tokenizer and normaliser are
    one of PRE_TOKENIZERS' (the first name of each; trim_offsets changes no ids)."""
    def steps(p):
        p = p or {}
        seq = p.get("pretokenizers") if p.get("type") == "Sequence" else [p]
        return [{k: v for k, v in s.items() if k != "trim_offsets"} for s in seq]
    have = steps(tok.get("pre_tokenizer")), tok.get("normalizer") == {"type": "NFC"}
    if tok.get("normalizer") not in (None, {"type": "NFC"}):
        raise ConvertError(f"the tokenizer's normaliser {tok['normalizer'].get('type')!r} has no GGUF form")
    for name, pre in PRE_TOKENIZERS.items():
        if (steps({"type": "Sequence", "pretokenizers": pre.steps}), pre.nfc) == have:
            return name
    raise ConvertError("the tokenizer's pre-tokenizer is none llama.cpp runs (tokenizer.ggml.pre); "
                       f"llmrun writes: {', '.join(sorted(PRE_TOKENIZERS))}")


def tokenizer_to_gguf(info: dict, blob: bytes, n_vocab: int) -> dict:
    """The `tokenizer.ggml.*` keys (without the prefix) for a .llmr tokenizer: the inverse of
    tokenizer_from_gguf, so that a GGUF's vocabulary comes back as the same blob. Token lists
    are padded to `n_vocab` (the embedding's rows) with unused "[PADi]" tokens, as llama.cpp's
    converter pads them. eos_ids become eos, eot, eom in order (llama.cpp ends a turn on any)."""
    from ..tokenizer import Tokenizer
    tok = Tokenizer.from_metadata(info, bytes(blob))
    if info["kind"] == "spm":
        out = _spm_keys(bytes(blob))
    else:
        out = _bpe_keys(json.loads(bytes(blob)))
    n = len(out["tokens"])
    if n > n_vocab:
        raise ConvertError(f"the tokenizer has {n} tokens, more than the model's {n_vocab} embeddings")
    out["tokens"] += [f"[PAD{i}]" for i in range(n, n_vocab)]
    out["token_type"] += [UNUSED] * (n_vocab - n)
    if "scores" in out:
        out["scores"] += [0.0] * (n_vocab - n)
    if info.get("bos_id") is not None:
        out["bos_token_id"] = info["bos_id"]
    for key, i in zip(("eos_token_id", "eot_token_id", "eom_token_id"), info.get("eos_ids") or []):
        out[key] = i
    # what encode adds, read from the tokenizer itself (a tokenizer.json's post-processor may add
    # BOS where the checkpoint's config did not say so)
    with_special, without = tok.encode("a"), tok.encode("a", add_special_tokens=False)
    out["add_bos_token"] = len(with_special) > len(without) and with_special[0] == info.get("bos_id")
    out["add_eos_token"] = bool(info.get("add_eos"))
    return out


def _spm_keys(blob: bytes) -> dict:
    tokens, scores, types, trainer, normalizer = [], [], [], {}, {}
    for field, v in _wire_fields(blob):
        if field == 1:
            piece = dict(_wire_fields(v))
            tokens.append(piece.get(1, b"").decode("utf-8"))
            scores.append(struct.unpack("<f", piece[2])[0] if 2 in piece else 0.0)
            types.append(piece.get(3, NORMAL))
        elif field == 2:
            trainer = dict(_wire_fields(v))
        elif field == 3:
            normalizer = dict(_wire_fields(v))
    # llama.cpp's sentencepiece tokenizer merges by score, as a BPE model does, and normalises
    # nothing: a unigram model or a normalisation rule would tokenise differently there
    if trainer.get(3, 1) != 2:
        raise ConvertError("a unigram sentencepiece tokenizer has no GGUF form llama.cpp runs the same "
                           "(tokenizer.ggml.model llama is sentencepiece BPE)")
    if normalizer.get(1, b"identity") != b"identity":
        raise ConvertError(f"the sentencepiece normalisation {normalizer[1].decode(errors='replace')!r} has no GGUF "
                           "form (llama.cpp normalises nothing)")
    out = {"model": "llama", "tokens": tokens, "scores": scores, "token_type": types,
           "add_space_prefix": bool(normalizer.get(3, 1)),
           "remove_extra_whitespaces": bool(normalizer.get(4, 1))}
    for key, field in (("unknown_token_id", 40), ("padding_token_id", 43)):
        v = _signed(trainer.get(field, -1))
        if 0 <= v < len(tokens):
            out[key] = v
    return out


def _bpe_keys(tok: dict) -> dict:
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tok.get("decoder")):
        raise ConvertError("only byte-level BPE tokenizer.json files have a GGUF form (tokenizer.ggml.model gpt2)")
    texts = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tok.get("added_tokens") or []}
    texts |= {i: a["content"] for i, a in added.items()}
    n = max(texts) + 1 if texts else 0
    tokens = [texts.get(i, f"[PAD{i}]") for i in range(n)]
    types = [UNUSED if i not in texts else NORMAL if i not in added else CONTROL if added[i].get("special")
             else USER_DEFINED for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"model": "gpt2", "pre": pre_tokenizer_name(tok), "tokens": tokens, "token_type": types, "merges": merges}
