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
    from llmrun.families import HF_LAYER as LAYER_NAMES, HF_TOP as TOP_NAMES
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
        # the window is honoured (each token sees its last 64), so the whole trained context is usable
        assert cfg.max_seq_len == c["max_position_embeddings"] and cfg.sliding_window == c["sliding_window"]
        assert cfg.window_layers == tuple(range(c["num_hidden_layers"]))


@pytest.mark.parametrize("qtype", ["f32", "q4_1"])
def test_forward_in_c_equals_the_python_graph(tiny, qtype):
    """Model.forward (one call into the kernels) is the Python graph op for op: the same logits
    and cache bit for bit, in prefill and in decode, on every variant (biases, untied heads)."""
    name, d, ckpt = tiny
    out = d / f"c-{qtype}.llmr"
    convert(str(d / "hf"), str(out), qtype)
    model = llmrun.load(out)
    fast, slow = model.new_cache(32), model.new_cache(32)
    for chunk in (IDS[:6], IDS[6:7], IDS[7:]):
        for last_only in (False, True):
            a, b = model.new_cache(32), model.new_cache(32)
            for c in (a, b):
                c.k[:], c.v[:], c.n, c.tokens = fast.k, fast.v, fast.n, list(fast.tokens)
            np.testing.assert_array_equal(model.forward(chunk, a, last_only), model.forward(chunk, b, last_only,
                                                                                              reference=True))
        np.testing.assert_array_equal(model.forward(chunk, fast), model.forward(chunk, slow, reference=True))
        np.testing.assert_array_equal(fast.k, slow.k)
        np.testing.assert_array_equal(fast.v, slow.v)
        assert fast.n == slow.n and fast.tokens == slow.tokens


def test_forward_refuses_token_ids_outside_the_vocabulary(tiny):
    name, d, ckpt = tiny
    out = d / "ids.llmr"
    convert(str(d / "hf"), str(out), "q8_0")
    model = llmrun.load(out)
    cache = model.new_cache(8)
    for bad in (-1, model.config.vocab_size):
        with pytest.raises(ValueError, match=f"token id {bad} is out of range"):
            model.forward([1, bad], cache)
        assert cache.n == 0 and cache.tokens == []


def test_graph_checks_every_weight_it_binds(tiny):
    """The C graph never trusts the Python side's shapes: a short buffer or a wrong shape is a
    ValueError naming the tensor, not a read past the end."""
    import copy
    import dataclasses
    import types

    from llmrun.backends import cpu
    name, d, ckpt = tiny
    out = d / "graph.llmr"
    convert(str(d / "hf"), str(out), "q4_0")
    model = llmrun.load(out)
    w, cfg = model.weights, model.config
    short = dataclasses.replace(w.layers[0].w_up, data=w.layers[0].w_up.data[:-1])
    bad = dataclasses.replace(w, layers=[dataclasses.replace(w.layers[0], w_up=short), *w.layers[1:]])
    with pytest.raises(ValueError, match="w_up"):
        cpu.graph(cfg, bad, model.inv_freq)
    with pytest.raises(ValueError, match="inv_freq"):
        cpu.graph(cfg, w, {"global": model.inv_freq["global"][:-1]})
    inconsistent = copy.copy(cfg)
    object.__setattr__(inconsistent, "n_kv_heads", cfg.n_heads + 1)  # past the config's own checks
    with pytest.raises(ValueError, match="config"):
        cpu.graph(inconsistent, w, model.inv_freq)
    # weights go by name: a misspelt field is refused, not left out; a norm of q needs one of k
    layer = dict(vars(w.layers[0]), q_norm=np.ones(cfg.head_dim, np.float32))
    with pytest.raises(ValueError, match="one of q_norm and k_norm"):
        cpu.graph(cfg, dataclasses.replace(w, layers=[types.SimpleNamespace(**layer), *w.layers[1:]]), model.inv_freq)
    layer = dict(vars(w.layers[0]), wq=np.zeros(3, np.float32))  # a vector where a weight goes
    with pytest.raises(TypeError, match="wq must be a tuple"):
        cpu.graph(cfg, dataclasses.replace(w, layers=[types.SimpleNamespace(**layer), *w.layers[1:]]), model.inv_freq)
    layer = dict(vars(w.layers[0]), w_upp=w.layers[0].w_up)
    with pytest.raises(ValueError, match="unknown field 'w_upp'"):
        cpu.graph(cfg, dataclasses.replace(w, layers=[types.SimpleNamespace(**layer), *w.layers[1:]]), model.inv_freq)


def test_logits_from_a_position_are_the_full_logits_rows(tiny):
    """forward(..., logits_from=i) runs the head on rows i.. only: the same values as the full
    logits' rows, in C and in the Python graph; a position outside the tokens is refused."""
    name, d, ckpt = tiny
    out = d / "from.llmr"
    convert(str(d / "hf"), str(out), "q4_0")
    model = llmrun.load(out)
    full = model.logits(IDS)
    for reference in (False, True):
        part = model.forward(IDS, model.new_cache(len(IDS)), logits_from=4, reference=reference)
        np.testing.assert_array_equal(part, full[4:])
        with pytest.raises(ValueError, match="logits from token 11"):
            model.forward(IDS, model.new_cache(len(IDS)), logits_from=len(IDS), reference=reference)
