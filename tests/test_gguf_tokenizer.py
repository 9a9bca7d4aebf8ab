"""GGUF vocabulary → tokenizer: llama.cpp's reference tokenisations for each vocabulary kind,
SmolLM2's GGUF against its Hugging Face tokenizer.json, tiny hand-made vocabularies, and errors."""
from __future__ import annotations

import functools
import json
import os
import subprocess

import pytest

from llmrun.errors import ConvertError
from llmrun.models.gguf_tokenizer import PRE_TOKENIZERS, tokenizer_from_gguf
from llmrun.tokenizer import Tokenizer

from conftest import ASSETS, SHARED

VOCABS = SHARED / "tokenizers"
NAMES = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2"]
SMOLLM2_HF = SHARED / "models" / "smollm2-135m-instruct-hf" / "tokenizer.json"


def need(path):
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared exists on the team's machines and in CI)")


def gguf_metadata(path) -> dict:
    """A GGUF's metadata as the plain dict our importer reads: key → str / int / float / bool,
    or a list of those (read here with the `gguf` package, independently of models/gguf_file.py)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))
    STRING, ARRAY = gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY

    def value(f, i, vtype):
        if vtype == STRING:
            return bytes(f.parts[i]).decode("utf-8", errors="surrogateescape")
        return f.parts[i].tolist()[0]

    meta = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):  # the header's counts, not metadata
            continue
        if f.types[0] == ARRAY:
            meta[key] = [value(f, i, f.types[-1]) for i in f.data]
        else:
            meta[key] = value(f, f.data[0], f.types[0])
    return meta


@functools.lru_cache(maxsize=None)
def built(name: str):
    """(metadata, info, tokenizer) for ggml-vocab-NAME.gguf; each file is read once per session."""
    path = VOCABS / f"ggml-vocab-{name}.gguf"
    need(path)
    meta = gguf_metadata(path)
    info, blob = tokenizer_from_gguf(meta)
    return meta, info, Tokenizer.from_metadata(info, blob)


def cases(name: str) -> list[tuple[str, list[int]]]:
    base = VOCABS / f"ggml-vocab-{name}.gguf"
    need(base.with_name(base.name + ".inp"))
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(texts) == len(ids) > 0
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]


def all_texts() -> list[str]:
    return [t for name in NAMES for t, _ in cases(name)]


# --- llama.cpp's reference vocabularies ---------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_reference_tokenisations(name):
    _, _, tok = built(name)
    wrong = [(text, ids, got) for text, ids in cases(name)
             if (got := tok.encode(text, add_special_tokens=False)) != ids]
    assert not wrong, f"{len(wrong)} of {len(cases(name))} differ, e.g. " + "; ".join(
        f"{t!r}: want {i[:10]} got {g[:10]}" for t, i, g in wrong[:3])


@pytest.mark.parametrize("name", NAMES)
def test_decode_round_trips(name):
    # byte-level BPE is lossless; sentencepiece strips the dummy prefix it adds, so it is too here
    _, _, tok = built(name)
    bad = [text for text, _ in cases(name) if tok.decode(tok.encode(text, add_special_tokens=False)) != text]
    assert not bad, f"{len(bad)} strings do not round-trip, e.g. {bad[:3]}"


@pytest.mark.parametrize("name", NAMES)
def test_token_bytes_make_up_the_text(name):
    """Each token's own bytes, a split character's pieces included (what the server's logprobs
    give as `bytes`); sentencepiece's dummy prefix shows as a leading space."""
    _, _, tok = built(name)
    for text, ids in cases(name):
        want = (" " + text if tok.kind == "spm" and text else text).encode()
        assert b"".join(tok.token_bytes(i) for i in ids) == want, text


SPECIALS = {  # bos, eos ids, add_bos (llama.cpp: true for sentencepiece and LLaMA 3, else false)
    "llama-spm": (1, [2], True), "phi-3": (1, [32000], True), "llama-bpe": (128000, [128001], True),
    "qwen2": (151643, [151643], False), "gpt-2": (50256, [50256], False),
}


@pytest.mark.parametrize("name", NAMES)
def test_special_ids_and_bos(name):
    _, info, tok = built(name)
    bos, eos, add_bos = SPECIALS[name]
    assert (info["bos_id"], info["eos_ids"], info["add_bos"], info["add_eos"]) == (bos, eos, add_bos, False)
    plain = tok.encode("Hello world", add_special_tokens=False)
    assert tok.encode("Hello world", add_special_tokens=True) == ([bos] if add_bos else []) + plain
    assert tok.kind == ("spm" if name in ("llama-spm", "phi-3") else "bpe")


def test_spm_model_matches_the_rebuilt_llama_model():
    """Our ModelProto has the pieces, scores and types of ../shared's llama-spm-32000.model."""
    import sentencepiece as spm
    need(VOCABS / "llama-spm-32000.model")
    ours = built("llama-spm")[2]._sp
    ref = spm.SentencePieceProcessor(model_file=str(VOCABS / "llama-spm-32000.model"))
    assert ours.get_piece_size() == ref.get_piece_size() == 32000
    assert (ours.unk_id(), ours.bos_id(), ours.eos_id(), ours.pad_id()) == (ref.unk_id(), ref.bos_id(), ref.eos_id(), -1)
    for i in range(32000):
        assert (ours.id_to_piece(i), ours.get_score(i), ours.is_control(i), ours.is_unknown(i), ours.is_byte(i),
                ours.is_unused(i)) == (ref.id_to_piece(i), ref.get_score(i), ref.is_control(i), ref.is_unknown(i),
                                       ref.is_byte(i), ref.is_unused(i)), i
    for text in all_texts():
        assert ours.encode(text) == ref.encode(text), text


def test_phi3_chat_tokens():
    _, info, tok = built("phi-3")
    # phi-3's GGUF marks <unk> CONTROL and 53 [PAD…] tokens UNKNOWN: one unknown piece is kept
    assert tok._sp.unk_id() == 0 and tok._sp.is_control(32011)
    # <|end|> ends a turn in the chat template, but the GGUF names only <|endoftext|>: not guessed
    assert info["eos_ids"] == [32000]
    assert tok.decode(tok.encode("Hi there")) == "Hi there"


def test_lead_reader_gives_the_same_dict():
    """models/gguf_file.py's reader yields the dict shape this module was written for."""
    gguf_file = pytest.importorskip("llmrun.models.gguf_file")
    for name in ("gpt-2", "phi-3"):
        path = VOCABS / f"ggml-vocab-{name}.gguf"
        need(path)
        theirs = {k: v for k, v in gguf_file.GGUFFile(str(path)).metadata.items() if k.startswith("tokenizer.")}
        ours = {k: v for k, v in built(name)[0].items() if k.startswith("tokenizer.")}
        assert theirs == ours


# --- SmolLM2: a real GGUF against its Hugging Face tokenizer.json ------------------------------

@functools.lru_cache(maxsize=None)
def smollm2():
    need(SMOLLM2_HF)
    r = subprocess.run(["bash", str(SHARED / "tools" / "fetch_smollm2_gguf.sh"), str(ASSETS)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(r.stdout.strip()):
        pytest.skip(f"the SmolLM2 GGUF could not be fetched: {r.stderr.strip()[-200:]}")
    meta = gguf_metadata(r.stdout.strip())
    info, blob = tokenizer_from_gguf(meta)
    return meta, info, Tokenizer.from_metadata(info, blob)


def hf_tokenizer(original_pre: bool):
    """../shared's tokenizer.json, which transformers wrote from the GGUF. transformers ignores
    tokenizer.ggml.pre and gives it plain ByteLevel; SmolLM2's own tokenizer.json (and llama.cpp's
    "smollm") split single digits first. original_pre=True puts that step back."""
    from tokenizers import Tokenizer as HFTokenizer
    j = json.loads(SMOLLM2_HF.read_text(encoding="utf-8"))
    if original_pre:
        assert j["pre_tokenizer"]["type"] == "ByteLevel"
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, j["pre_tokenizer"]]}
    return HFTokenizer.from_str(json.dumps(j))


def space_before_number(text: str) -> bool:
    return any(a.isspace() and b.isnumeric() for a, b in zip(text, text[1:]))


def test_smollm2_gguf_matches_its_tokenizer_json():
    meta, info, tok = smollm2()
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert info == {"kind": "bpe", "bos_id": 1, "eos_ids": [2], "add_bos": False, "add_eos": False}
    hf = hf_tokenizer(original_pre=True)
    texts = all_texts() + ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "  123", "a\n\n 42"]
    for text in texts:
        for special in (False, True):
            assert tok.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special).ids, text
        assert tok.decode(tok.encode(text)) == text


def test_smollm2_differs_from_shared_tokenizer_json_only_before_numbers():
    _, _, tok = smollm2()
    hf = hf_tokenizer(original_pre=False)
    differ = [t for t in all_texts() if tok.encode(t, add_special_tokens=False) != hf.encode(t).ids]
    assert all(space_before_number(t) for t in differ), [t for t in differ if not space_before_number(t)]
    # the reference prompts (../shared/reference) have no such place: same ids either way
    ref = SHARED / "reference" / "reference.json"
    if ref.exists():
        for p in json.loads(ref.read_text())["prompts"]:
            assert tok.encode(p["text"]) == p["ids"]


# --- tiny hand-made vocabularies (no ../shared needed) ------------------------------------------

def tiny_bpe_meta(**extra) -> dict:
    from tokenizers import pre_tokenizers
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt", "he", "Ġthe", "<tool>"]
    types = [3, 3, 3] + [1] * 256 + [1, 1, 1, 4]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0,
            "tokenizer.ggml.eot_token_id": 2, **extra}


def tiny_spm_meta(**extra) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "t", "h", "e", "he", "▁t", "▁the"]
    scores = [0.0] * 259 + [-100.0, -101.0, -102.0, -103.0, -1.0, -2.0, -3.0]
    types = [2, 3, 3] + [6] * 256 + [1] * 7
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, **extra}


def load(meta):
    info, blob = tokenizer_from_gguf(meta)
    return info, Tokenizer.from_metadata(info, blob)


def test_tiny_bpe():
    info, tok = load(tiny_bpe_meta(**{"tokenizer.ggml.add_bos_token": True}))
    assert info == {"kind": "bpe", "bos_id": 1, "eos_ids": [0, 2], "add_bos": True, "add_eos": False}
    the, tool = tok.token_to_id("Ġthe"), tok.token_to_id("<tool>")
    assert tok.encode(" the", add_special_tokens=False) == [the]
    assert tok.encode(" the") == [1, the]
    # control and user-defined tokens are matched in text (chat templates write them as text)
    assert tok.encode("<|im_end|><tool> the", add_special_tokens=False) == [2, tool, the]
    assert tok.decode([1, the, 2]) == "<|im_start|> the<|im_end|>"
    text = "ünï code\n  \t x"
    assert tok.decode(tok.encode(text)[1:]) == text
    info, tok = load(tiny_bpe_meta(**{"tokenizer.ggml.add_eos_token": True}))
    assert (info["add_bos"], info["add_eos"]) == (False, True)
    assert tok.encode(" the") == [the, 0]


def test_tiny_spm():
    info, tok = load(tiny_spm_meta())
    assert info == {"kind": "spm", "bos_id": 1, "eos_ids": [2], "add_bos": True, "add_eos": False}
    assert tok.encode("the", add_special_tokens=False) == [265]  # "▁the": the dummy prefix is added
    assert tok.encode("the") == [1, 265]
    assert tok.encode("é", add_special_tokens=False) == [259, 3 + 0xC3, 3 + 0xA9]  # byte fallback
    assert tok.decode(tok.encode("the é")) == "the é"
    _, tok = load(tiny_spm_meta(**{"tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_eos_token": True}))
    assert tok.encode("the") == [1, 260, 263, 2]  # "t" "he", then EOS


def test_every_pre_tokenizer_loads():
    for name in PRE_TOKENIZERS:
        _, tok = load(tiny_bpe_meta(**{"tokenizer.ggml.pre": name}))
        text = "Hello, World! 12345 ½ ünï\n\n  the end"
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text, name


def test_errors():
    with pytest.raises(ConvertError, match="'tekken'.*supported: .*gpt-2.*llama-bpe.*qwen2.*smollm"):
        tokenizer_from_gguf(tiny_bpe_meta(**{"tokenizer.ggml.pre": "tekken"}))
    with pytest.raises(ConvertError, match="does not name its pre-tokenizer"):
        tokenizer_from_gguf({k: v for k, v in tiny_bpe_meta().items() if k != "tokenizer.ggml.pre"})
    with pytest.raises(ConvertError, match="tokenizer model 'bert'"):
        tokenizer_from_gguf({**tiny_bpe_meta(), "tokenizer.ggml.model": "bert"})
    with pytest.raises(ConvertError, match="tokenizer model None"):
        tokenizer_from_gguf({})
    with pytest.raises(ConvertError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf({**tiny_spm_meta(), "tokenizer.ggml.tokens": []})
    with pytest.raises(ConvertError, match="merges"):
        tokenizer_from_gguf({k: v for k, v in tiny_bpe_meta().items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(ConvertError, match="scores has 3 entries"):
        tokenizer_from_gguf({**tiny_spm_meta(), "tokenizer.ggml.scores": [0.0] * 3})
