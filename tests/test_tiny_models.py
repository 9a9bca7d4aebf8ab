"""Tiny random LLaMA-family checkpoints: convert, load, and match an independent numpy forward."""
from __future__ import annotations

import numpy as np
import pytest

import llmrun
from llmrun.models import convert
from llmrun.quant import dequantize

from conftest import make_hf_checkpoint, reference_forward

IDS = [3, 17, 250, 99, 4, 4, 120, 7, 64, 200, 31]

# f32/f16/bf16 weights reach the graph unchanged, so only float32 rounding in the graph
# separates us from the float64 reference: a few ulps through 2 layers.
FLOAT_TOL = 2e-4  # max |Δlogit| / max |logit|
# q8_0 / q4_x also quantise activations to 8 bits per block (relative error up to 1/254 per
# element), so logits drift by a few tenths of a percent of their range through 2 layers.
QUANT_TOL = 2e-2

VARIANTS = {
    "llama-tied-bpe-f32": dict(),
    "llama-untied-bf16-llama3rope-sharded": dict(
        tied=False, dtype="bfloat16", shards=3,
        rope={"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    "qwen2-bias-untied-spm-f16": dict(arch="Qwen2ForCausalLM", model_type="qwen2", bias=True, tied=False,
                                       dtype="float16", tokenizer="spm", rope={"rope_theta": 1000000.0}),
    "mistral-linear-rope-newspelling": dict(
        arch="MistralForCausalLM", model_type="mistral", num_key_value_heads=1, head_dim=32, sliding_window=64,
        rope={"rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ckpt = make_hf_checkpoint(d / "hf", **VARIANTS[request.param])
    return request.param, d, ckpt


def _rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_float_conversion_matches_reference(tiny):
    name, d, ckpt = tiny
    source_type = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[VARIANTS[name].get("dtype", "float32")]
    out = d / f"{source_type}.llmr"
    convert(str(d / "hf"), str(out), source_type)
    model = llmrun.load(out)
    logits = model.logits(IDS)
    ref = reference_forward(ckpt, IDS)
    assert logits.shape == (len(IDS), ckpt["config"]["vocab_size"]) and logits.dtype == np.float32
    assert _rel_err(logits, ref) < FLOAT_TOL
    assert (logits.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_quantized_conversion_matches_reference_on_stored_weights(tiny, qtype):
    """The graph on quantised weights equals the float64 forward on those same weights
    dequantised by the numpy reference, within the activation-quantisation bound."""
    name, d, ckpt = tiny
    out = d / f"{qtype}.llmr"
    convert(str(d / "hf"), str(out), qtype)
    model = llmrun.load(out)
    stored = dict(ckpt["weights"])
    hf_names = {t: h for h, t in _name_map(ckpt).items()}
    for ours, info in model.file.tensors.items():
        t = model.file.tensor(ours)
        if info.type.quantized:
            assert ours not in ("layers.0.attn_norm", "norm")
            stored[hf_names[ours]] = dequantize(t.rows(), info.type, info.shape[1])
    logits = model.logits(IDS)
    ref = reference_forward({"config": ckpt["config"], "weights": stored}, IDS)
    assert _rel_err(logits, ref) < QUANT_TOL


def _name_map(ckpt):
    from llmrun.models.hf import LAYER_NAMES, TOP_NAMES
    out = {}
    for h in ckpt["weights"]:
        if h in TOP_NAMES:
            out[h] = TOP_NAMES[h]
        else:
            _, _, i, rest = h.split(".", 3)
            out[h] = f"layers.{i}.{LAYER_NAMES[rest]}"
    return out


def test_kv_cache_decode_matches_prefill(tiny):
    """Prefill of a prefix then one token at a time gives the full-prefill logits."""
    name, d, ckpt = tiny
    out = d / "cache.llmr"
    convert(str(d / "hf"), str(out), "f32")
    model = llmrun.load(out)
    full = model.logits(IDS)
    cache = model.new_cache(32)
    steps = [model.forward(IDS[:4], cache)]
    steps += [model.forward([t], cache) for t in IDS[4:]]
    stepped = np.concatenate(steps)
    assert cache.n == len(IDS) and cache.tokens == IDS
    np.testing.assert_allclose(stepped, full, rtol=0, atol=1e-5 * np.abs(full).max())


def test_config_roundtrip(tiny):
    name, d, ckpt = tiny
    out = d / "cfg.llmr"
    convert(str(d / "hf"), str(out), "f16")
    cfg = llmrun.load(out).config
    c = ckpt["config"]
    assert (cfg.dim, cfg.n_layers, cfg.vocab_size) == (c["hidden_size"], c["num_hidden_layers"], c["vocab_size"])
    assert cfg.tie_embeddings == VARIANTS[name].get("tied", True)
    assert cfg.attn_bias == VARIANTS[name].get("bias", False)
    if "sliding_window" in c:
        assert cfg.max_seq_len == c["sliding_window"]  # exact attention only inside the window
