"""The LLaMA-style families (llmrun/families.py) against transformers' own float32 logits
(../shared/reference/families.*) on each family's tiny checkpoint (../shared/tools/
make_family_checkpoint.py): Hugging Face checkpoints, the GGUFs llama.cpp's converter makes of
them (tests/family_gguf.py writes the same bytes), prefill then decode, a batch, and the
quantised types."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

import llmrun
from llmrun.models import convert

from conftest import SHARED, run_cli

FAMILIES = ["qwen3", "smollm3", "phi3", "phi4mini", "gemma3", "mistral", "granite"]
ARCH = {"phi4mini": "phi3"}  # the family a checkpoint is of, where its name is not one
# The acceptance bound: logits[:, :2048] within 1e-4 of their largest magnitude, log-sum-exp
# within 1e-4. Measured (f32 from the checkpoint, and from its GGUF alike): 4e-7 .. 1.3e-6 and
# at most 6e-6.
REL_BOUND, LSE_BOUND = 1e-4, 1e-4


def _reference():
    if not (SHARED / "reference" / "families.npz").exists():
        pytest.skip(f"the families' reference is not here ({SHARED} is absent: it exists on the team's machines and in CI)")
    info = json.loads((SHARED / "reference" / "families.json").read_text())
    with np.load(SHARED / "reference" / "families.npz") as z:
        return info, {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def reference():
    return _reference()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, reference):
    """family -> its tiny checkpoint's directory, the weights the reference saw (sha256 checked)."""
    info, _ = reference
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in FAMILIES:
        r = subprocess.run([sys.executable, str(SHARED / "tools" / "make_family_checkpoint.py"), family,
                            str(root / family)], capture_output=True, text=True, check=True)
        assert r.stdout.strip() == info["families"][family]["weights_sha256"], f"{family}: not the reference's weights"
        out[family] = root / family
    return out


@pytest.fixture(scope="session")
def converted(checkpoints, tmp_path_factory):
    """(family, type) -> .llmr path, made on first use."""
    root, made = tmp_path_factory.mktemp("families-llmr"), {}

    def get(family, type="f32", via_gguf=False):
        key = (family, type, via_gguf)
        if key not in made:
            src = checkpoints[family]
            if via_gguf:
                from family_gguf import write_family_gguf
                src = root / f"{family}.gguf"
                write_family_gguf(checkpoints[family], src, family)
            made[key] = root / f"{family}-{type}{'-gguf' if via_gguf else ''}.llmr"
            convert(str(src), str(made[key]), None if via_gguf else type)
        return made[key]
    return get


def _log_sum_exp(logits):
    x = logits.astype(np.float64)
    top = x.max(-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[:, 0]


def _check(family, logits, reference, positions=slice(None)):
    _, ref = reference
    want = ref[f"{family}_logits"][positions]
    scale = np.abs(ref[f"{family}_logits"]).max()
    err = np.abs(logits[:, :2048] - want).max() / scale
    lse = np.abs(_log_sum_exp(logits) - ref[f"{family}_lse"][positions]).max()
    assert err <= REL_BOUND, f"{family}: logits off by {err:.3g} of their range"
    assert lse <= LSE_BOUND, f"{family}: log-sum-exp off by {lse:.3g}"
    np.testing.assert_array_equal(logits.argmax(-1), ref[f"{family}_argmax"][positions], err_msg=family)
    return err, lse


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_matches_transformers(family, converted, reference):
    """The whole prompt in one prefill, in C and in the Python graph (the same bits)."""
    model = llmrun.load(converted(family))
    assert model.config.arch == ARCH.get(family, family)
    ids = reference[0]["ids"]
    logits = model.logits(ids)
    err, lse = _check(family, logits, reference)
    print(f"{family}: max |logit error| / max |logit| {err:.2e}, log-sum-exp {lse:.2e}")
    python = model.forward(ids, model.new_cache(len(ids)), reference=True)
    np.testing.assert_array_equal(python, logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_matches_transformers(family, converted, reference):
    """Eleven tokens of prefill, then one token a step through the windowed positions (8 on)."""
    model = llmrun.load(converted(family))
    ids = reference[0]["ids"]
    cache = model.new_cache(len(ids))
    steps = [model.forward(ids[:11], cache)] + [model.forward([t], cache) for t in ids[11:]]
    _check(family, np.concatenate(steps), reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_beside_another_sequence_matches_alone(family, converted, reference):
    """The family's prompt decoded in a batch beside another sequence of the same model, further
    along: each gets the logits it gets alone, bit for bit."""
    from llmrun.model import Segment
    model = llmrun.load(converted(family))
    ids = reference[0]["ids"]
    other = ids[::-1]
    a, b = model.new_cache(len(ids)), model.new_cache(len(ids))
    model.forward(ids[:20], a)
    model.forward(other[:30], b)
    together = model.forward_batch([Segment(ids[20:25], a), Segment(other[30:], b)])
    alone_a, alone_b = model.new_cache(len(ids)), model.new_cache(len(ids))
    model.forward(ids[:20], alone_a)
    model.forward(other[:30], alone_b)
    np.testing.assert_array_equal(together[0], model.forward(ids[20:25], alone_a))
    np.testing.assert_array_equal(together[1], model.forward(other[30:], alone_b))
    _check(family, together[0], reference, slice(20, 25))


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_as_llama_cpp_writes_it_matches_transformers(family, converted, reference):
    """The GGUF llama.cpp's convert_hf_to_gguf.py makes of the checkpoint (--outtype f32) imports
    to the same model. llama.cpp drops Mistral's window (a `llama` GGUF), so there only the
    positions inside the window can match, and nothing is refused."""
    model = llmrun.load(converted(family, via_gguf=True))
    logits = model.logits(reference[0]["ids"])
    if family == "mistral":
        assert model.config.arch == "llama" and model.config.sliding_window == 0
        _check(family, logits[:8], reference, slice(0, 8))
    else:
        assert model.config.arch == ARCH.get(family, family)
        _check(family, logits, reference)
        # the same config as from the checkpoint, but for the numbers a GGUF stores as float32
        from_hf = llmrun.load(converted(family)).config.to_dict()
        assert model.config.to_dict() == {k: pytest.approx(v, rel=1e-7) if isinstance(v, float) else v
                                          for k, v in from_hf.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_quantised_types_run_and_stay_near_f32(family, converted, reference):
    """q8_0 and q4_0 conversions run; their mean KL against the f32 model's distribution is
    printed (pytest -s). On random weights it grows with the square of the logits' range (0.05
    for Granite, 20 for Qwen3): measured KL / range^2 at most 1.1e-5 for q8_0 and 1.6e-3 for q4_0,
    bounded here well below what a wrong graph gives (a KL near 1 and more)."""
    ids = reference[0]["ids"]
    f32 = llmrun.load(converted(family)).logits(ids).astype(np.float64)
    p = np.exp(f32 - _log_sum_exp(f32)[:, None])
    spread = np.abs(f32).max() ** 2
    for type, bound in (("q8_0", 1e-4 * spread), ("q4_0", 5e-3 * spread)):
        q = llmrun.load(converted(family, type)).logits(ids).astype(np.float64)
        kl = float((p * ((f32 - _log_sum_exp(f32)[:, None]) - (q - _log_sum_exp(q)[:, None]))).sum(-1).mean())
        print(f"{family} {type}: mean KL against f32 {kl:.2e}")
        assert 0 <= kl < bound, f"{family} {type}: KL {kl:.3g}"


def test_mistral_window_is_what_fixed_the_old_bug(converted, reference):
    """The Mistral checkpoint run with the window switched off gives today's bug back (argmax
    agreeing at a fraction of the positions past the window), so the window is what matches."""
    model = llmrun.load(converted("mistral"))
    ids = reference[0]["ids"]
    model.config = dataclasses.replace(model.config, sliding_window=0, window_layers=())
    logits = model.forward(ids, model.new_cache(len(ids)), reference=True)
    agree = (logits.argmax(-1) == reference[1]["mistral_argmax"])[8:].mean()
    assert agree < 0.5, f"argmax agrees at {agree:.0%} of positions past the window even without it"


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "granite"])
def test_info_names_the_family_and_its_switches(family, converted):
    r = run_cli("info", converted(family), check=True)
    assert f"family:      {family}: " in r.stdout
    switches = {"qwen3": ["qk_norm"], "gemma3": ["qk_norm", "post_norms", "act gelu_tanh", "sliding_window 8", "window_layers 0,1,2,3,4"],
                "granite": ["embed_scale 12", "residual_scale 0.22", "attn_scale 0.0625", "logit_scale 0.125"]}
    for s in switches[family]:
        assert s in r.stdout, (s, r.stdout)


def test_weights_sha256_is_the_tools_digest(checkpoints, reference):
    """The digest the checkpoint fixture checks is computed as the tool says: names, shapes and
    float32 bytes in name order (so a changed safetensors version cannot hide a changed stream)."""
    from safetensors.numpy import load_file
    weights = load_file(str(checkpoints["granite"] / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(f"{name}{weights[name].shape}".encode())
        h.update(np.ascontiguousarray(weights[name], np.float32).tobytes())
    assert h.hexdigest() == reference[0]["families"]["granite"]["weights_sha256"]


# A Phi-3.5 / Phi-4-mini style checkpoint with LongRoPE scaling (a partial rotary, short and long
# factors, a context grown 8x from 64), made by conftest's make_hf_checkpoint; its logits on
# ids 3..40 by transformers 5.25 (float32, PyTorch CPU) are in tests/data/phi3_longrope_transformers.npz.
LONGROPE = dict(arch="Phi3ForCausalLM", model_type="phi3", fused=True, tied=False, partial_rotary_factor=0.75,
                max_position_embeddings=512, original_max_position_embeddings=64, pad_token_id=0,
                rope={"rope_theta": 10000.0, "rope_scaling": {
                    "type": "longrope", "short_factor": [1.0, 1.25, 1.5, 2.0, 2.5, 3.0],
                    "long_factor": [2.0, 3.0, 4.0, 5.0, 7.0, 9.0]}})


def test_longrope_short_factors_match_transformers(tmp_path):
    """LongRoPE runs its short factors and attention factor sqrt(1 + ln 8 / ln 64), exact up to
    the original context, which becomes the model's (measured: 4.2e-7 of the logits' range)."""
    from conftest import ROOT, make_hf_checkpoint
    make_hf_checkpoint(tmp_path / "hf", **LONGROPE)
    convert(str(tmp_path / "hf"), str(tmp_path / "m.llmr"), "f32")
    model = llmrun.load(tmp_path / "m.llmr")
    assert model.config.max_seq_len == 64 and model.config.rope_mscale == pytest.approx(1.5 ** 0.5)
    with np.load(ROOT / "tests" / "data" / "phi3_longrope_transformers.npz") as ref:
        want, ids = ref["logits"], ref["ids"]
    logits = model.logits(ids)
    assert np.abs(logits - want).max() <= REL_BOUND * np.abs(want).max()
    np.testing.assert_array_equal(logits.argmax(-1), want.argmax(-1))


def test_phi3_old_longrope_names_read_as_longrope(tmp_path):
    """Early Phi-3 128k configs call LongRoPE "su" (transformers maps it, and "yarn", to longrope)."""
    from conftest import ROOT, make_hf_checkpoint
    scaling = {**LONGROPE["rope"]["rope_scaling"], "type": "su"}
    make_hf_checkpoint(tmp_path / "hf", **{**LONGROPE, "rope": {"rope_theta": 10000.0, "rope_scaling": scaling}})
    convert(str(tmp_path / "hf"), str(tmp_path / "m.llmr"), "f32")
    with np.load(ROOT / "tests" / "data" / "phi3_longrope_transformers.npz") as ref:
        want, ids = ref["logits"], ref["ids"]
    assert np.abs(llmrun.load(tmp_path / "m.llmr").logits(ids) - want).max() <= REL_BOUND * np.abs(want).max()


@pytest.mark.parametrize("config,want", [
    # transformers 5's rope spelling by layer type, the windowed layers' entry left null
    (dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6}, "sliding_attention": None}),
     dict(rope_theta=1e6, rope_local_theta=10000.0)),
    (dict(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     dict(rope_theta=1e6, rope_scaling={"type": "linear", "factor": 8.0}, rope_local_theta=1e4)),
])
def test_gemma3_rope_spellings(tmp_path, config, want):
    from conftest import FAMILY_CHECKPOINTS, make_hf_checkpoint
    make_hf_checkpoint(tmp_path / "hf", **{**FAMILY_CHECKPOINTS["gemma3"], "rope": config})
    convert(str(tmp_path / "hf"), str(tmp_path / "m.llmr"), "f32")
    cfg = llmrun.load(tmp_path / "m.llmr").config
    assert {k: getattr(cfg, k) for k in want} == want


def test_granite_without_attention_multiplier_scales_by_one(tmp_path):
    """GraniteConfig's default attention_multiplier is 1.0, not head_dim^-0.5."""
    from conftest import FAMILY_CHECKPOINTS, make_hf_checkpoint
    kw = {k: v for k, v in FAMILY_CHECKPOINTS["granite"].items() if k != "attention_multiplier"}
    make_hf_checkpoint(tmp_path / "hf", **kw)
    convert(str(tmp_path / "hf"), str(tmp_path / "m.llmr"), "f32")
    assert llmrun.load(tmp_path / "m.llmr").config.attn_scale == 1.0


def test_a_config_key_of_the_wrong_kind_is_one_line(tmp_path):
    from conftest import FAMILY_CHECKPOINTS, make_hf_checkpoint
    make_hf_checkpoint(tmp_path / "hf", **{**FAMILY_CHECKPOINTS["phi3"], "rope": {"rope_theta": 1e4, "rope_scaling": [1]}})
    r = run_cli("convert", tmp_path / "hf", tmp_path / "m.llmr")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "config.json" in r.stderr
