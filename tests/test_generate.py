"""Generation, sampling, streaming detokenisation and tokenizers on tiny models."""
from __future__ import annotations

import numpy as np
import pytest

import llmrun
from llmrun.errors import ContextError
from llmrun.sampling import Sampler
from llmrun.models import convert
from llmrun.tokenizer import StreamDecoder

from conftest import SHARED, make_hf_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    make_hf_checkpoint(d / "hf", max_position_embeddings=64)
    convert(str(d / "hf"), str(d / "m.llmr"), "f32")
    return llmrun.load(d / "m.llmr")


def test_greedy_generate_is_argmax_loop(model):
    ids = model.tokenizer.encode("the theme")
    records = list(llmrun.generate(model, ids, max_tokens=10, temperature=0))
    cache = model.new_cache(64)
    logits = model.forward(ids, cache)[-1]
    want = []
    for _ in range(len(records)):
        want.append(int(logits.argmax()))
        logits = model.forward([want[-1]], cache)[-1]
    assert [r.token for r in records] == want
    assert records[-1].finish_reason in ("length", "stop")
    assert all(r.prompt_tokens == len(ids) and r.prompt_tps > 0 for r in records)
    assert [r.generation_tokens for r in records] == list(range(1, len(records) + 1))


def test_seeded_sampling_is_reproducible(model):
    def run(seed):
        return [r.token for r in llmrun.generate(model, "hello", max_tokens=12, temperature=50.0, top_k=0,
                                                 top_p=1.0, seed=seed)]
    assert run(7) == run(7)
    assert run(7) != run(8) or run(7) != run(9)


def test_max_tokens_and_length_finish(model):
    records = list(llmrun.generate(model, "x", max_tokens=3, temperature=0))
    assert len(records) <= 3
    if len(records) == 3:
        assert records[-1].finish_reason == "length"


def test_prompt_longer_than_context_is_a_clear_error(model):
    with pytest.raises(ContextError, match="context"):
        list(llmrun.generate(model, "a" * 100, max_tokens=1))  # 100 byte tokens, context 64


def test_empty_prompt(model):
    with pytest.raises(ValueError, match="empty"):
        list(llmrun.generate(model, "", max_tokens=1))


def test_stop_string_ends_generation_and_is_not_shown(model):
    free = "".join(r.text for r in llmrun.generate(model, "the", max_tokens=20, temperature=0))
    assert len(free) >= 4  # the seeded model runs long enough to place a stop string
    stop = free[2:4]
    records = list(llmrun.generate(model, "the", max_tokens=20, temperature=0, stop=[stop]))
    text = "".join(r.text for r in records)
    assert records[-1].finish_reason == "stop"
    assert text == free[:free.find(stop)]


def test_sampler_filters():
    logits = np.array([0.0, 5.0, 4.0, -3.0, 4.5], dtype=np.float32)
    assert Sampler(temperature=0)(logits) == 1
    top1 = Sampler(temperature=1.0, top_k=1, seed=0)
    assert all(top1(logits) == 1 for _ in range(20))
    nucleus = Sampler(temperature=1.0, top_k=0, top_p=0.5, seed=0)  # p(1) ≈ 0.5 alone covers it
    assert {nucleus(logits) for _ in range(50)} <= {1, 4}
    seen = {Sampler(temperature=1.0, top_k=3, top_p=1.0, seed=s)(logits) for s in range(200)}
    assert seen == {1, 2, 4}
    with pytest.raises(ValueError):
        Sampler(temperature=-1)


def test_stream_decoder_never_splits_a_character(model):
    text = "héllo wörld 世界 🎉 the end"
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # byte-level: multi-byte characters span several tokens
    dec = StreamDecoder(model.tokenizer)
    pieces = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == text


def test_bpe_special_tokens(model):
    tok = model.tokenizer
    assert tok.kind == "bpe"
    assert tok.bos_id == 0 and tok.eos_ids == [1]
    assert tok.encode("<s>hi</s>", add_special_tokens=False)[0] == 0
    assert tok.decode(tok.encode("the theme")) == "the theme"


@pytest.mark.skipif(not (SHARED / "tokenizers").exists(), reason="../shared/tokenizers is absent")
def test_sentencepiece_llama_vectors(tmp_path):
    """Our sentencepiece path on LLaMA's tokenizer.model reproduces llama.cpp's reference
    tokenisations (with BOS) for every test string."""
    import shutil
    d = tmp_path / "hf"
    make_hf_checkpoint(d, tokenizer="spm", vocab_size=32000)
    shutil.copy(SHARED / "tokenizers" / "llama-spm-32000.model", d / "tokenizer.model")
    convert(str(d), str(tmp_path / "spm.llmr"), "q8_0")
    tok = llmrun.load(tmp_path / "spm.llmr").tokenizer
    inputs = (SHARED / "tokenizers" / "ggml-vocab-llama-spm.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")[:-1]
    outputs = (SHARED / "tokenizers" / "ggml-vocab-llama-spm.gguf.out").read_text().split("\n")[:-1]
    assert len(inputs) == len(outputs) > 40
    for text, want in zip(inputs, outputs):
        assert tok.encode(text, add_special_tokens=False) == [int(x) for x in want.split()], repr(text)
    assert tok.encode("Hello world!") == [1, 15043, 3186, 29991]


def test_text_held_back_for_a_stop_string_that_never_completes_is_released(model):
    free = "".join(r.text for r in llmrun.generate(model, "the", max_tokens=20, temperature=0))
    stop = free[-1] + "\x00"  # text keeps ending with its first character; the whole never comes
    records = list(llmrun.generate(model, "the", max_tokens=20, temperature=0, stop=[stop]))
    assert "".join(r.text for r in records) == free
    last_piece = model.tokenizer.decode([records[-1].token])
    assert len(records[-1].text) > len(last_piece)  # the held-back character came out at the end
