"""The KV cache's element type (`--kv-type`, llmrun.backends.KV_DTYPES): f16 keys and values,
rounded to nearest even as they are stored and widened exactly as attention loads them, so that
the C forward equals the Python graph (numpy's float16 rounding, the same kernels) bit for bit;
half the memory; logits close to an f32 cache's. q8_0 the same way: rows stored as q8_0 blocks
(those of quant/'s numpy reference), each value d * q made exactly as attention loads it; 34 /
128 of f32's memory. The kernels themselves: tests/test_kernels.py (every path's f16 and q8_0
attention is its f32 attention on a cache of the same values, bit for bit)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import llmrun
from llmrun import model as model_module
from llmrun import _kernels as K
from llmrun.errors import SettingError
from llmrun.model import Segment
from llmrun.quant import reference as ref
from llmrun.quant.types import Q8_0

from conftest import FAMILY_CHECKPOINTS, make_hf_checkpoint, run_cli

IDS = [3, 17, 5, 9, 31, 2, 44, 12, 8, 27, 19, 6, 40, 11]


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)), in float64."""
    def log_softmax(z):
        z = z.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("kv") / "hf"
    make_hf_checkpoint(d)
    return d


@pytest.mark.parametrize("family", sorted(FAMILY_CHECKPOINTS))
def test_f16_cache_forward_equals_the_python_graph(family_models, family):
    """Prefill in two chunks, then decode steps: the C forward's logits and f16 cache rows are
    the Python graph's bit for bit, on every family (windows, layers without RoPE, q/k norms)."""
    model = llmrun.load(family_models[family, "f32"], kv_type="f16")
    fast, slow = model.new_cache(32), model.new_cache(32)
    assert fast.k.dtype == fast.v.dtype == np.float16
    for chunk in (IDS[:6], IDS[6:11], IDS[11:12], IDS[12:13], IDS[13:]):
        np.testing.assert_array_equal(model.forward(chunk, fast), model.forward(chunk, slow, reference=True))
    np.testing.assert_array_equal(fast.k, slow.k)
    np.testing.assert_array_equal(fast.v, slow.v)


def test_f16_cache_rows_are_the_f32_rows_rounded(hf):
    """The first layer's keys and values depend on the embeddings alone: an f16 cache holds an
    f32 cache's rows rounded to nearest even (numpy's float16), whatever the chunking."""
    f32, f16 = llmrun.load(hf), llmrun.load(hf, kv_type="f16")
    a, b = f32.new_cache(16), f16.new_cache(16)
    f32.forward(IDS[:9], a)
    f16.forward(IDS[:4], b)
    f16.forward(IDS[4:9], b)
    assert b.k.shape == (f16.config.n_layers, f16.config.n_kv_heads, 16, f16.config.head_dim)  # head-major
    np.testing.assert_array_equal(b.k[0, :, :9], a.k[0, :, :9].astype(np.float16))
    np.testing.assert_array_equal(b.v[0, :, :9], a.v[0, :, :9].astype(np.float16))
    assert b.k[0, :, :9].all() and not b.k[:, :, 9:].any()  # the positions run, and nothing past them


def test_f16_cache_logits_are_close_to_f32(hf):
    f32, f16 = llmrun.load(hf), llmrun.load(hf, kv_type="f16")
    a, b = f32.logits(IDS), f16.logits(IDS)
    assert not np.array_equal(a, b)  # the rounding is there
    assert mean_kl(a, b) < 1e-6
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_a_batch_mixes_f16_and_f32_caches(hf):
    """forward_batch with one f16 and one f32 context: each gets what it gets alone."""
    f32, f16 = llmrun.load(hf), llmrun.load(hf, kv_type="f16")
    c32, c16 = f32.new_cache(16), f16.new_cache(16)
    got = f32.forward_batch([Segment(IDS[:5], c32, last_only=True), Segment(IDS[5:12], c16, last_only=True)])
    np.testing.assert_array_equal(got[0], f32.forward(IDS[:5], f32.new_cache(16), last_only=True))
    np.testing.assert_array_equal(got[1], f16.forward(IDS[5:12], f16.new_cache(16), last_only=True))


def test_f16_cache_takes_half_the_memory(tmp_path, monkeypatch):
    """Half the bytes a position, so the default context (what fits beside the weights) doubles."""
    make_hf_checkpoint(tmp_path / "long", max_position_embeddings=131072)
    f32, f16 = llmrun.load(tmp_path / "long"), llmrun.load(tmp_path / "long", kv_type="f16")
    assert f16.new_cache(64).k.nbytes * 2 == f32.new_cache(64).k.nbytes
    per_position = model_module.kv_bytes_per_position(f32.config)
    assert model_module.kv_bytes_per_position(f16.config, "f16") * 2 == per_position
    weights = os.path.getsize(f32.path)
    monkeypatch.setattr(model_module, "available_memory", lambda: weights + 64 * per_position * 1024)
    assert f32.default_context()[0] == 32 * 1024 and f16.default_context()[0] == 64 * 1024


def test_kv_type_from_the_environment_and_bad_types(hf, monkeypatch):
    monkeypatch.setenv("LLMRUN_KV_TYPE", "f16")
    assert llmrun.load(hf).new_cache(8).k.dtype == np.float16
    for bad in ("q4_0", "F16", ""):
        with pytest.raises(SettingError, match="KV cache type"):
            llmrun.load(hf, kv_type=bad or "?")


def test_cli_kv_type(hf):
    r = run_cli("generate", hf, "-p", "hi", "-n", "4", "--temp", "0", "--raw", "--kv-type", "f16", check=True)
    assert r.stdout
    bench = run_cli("bench", hf, "-p", "8", "-n", "4", "-t", "1", "-r", "1", "--kv-type", "f16", check=True).stdout
    assert "| kv " in bench.splitlines()[0] and "| f16 " in bench.splitlines()[2]
    r = run_cli("generate", hf, "-p", "hi", "-n", "4", "--kv-type", "q4")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["llmrun: error: unknown KV cache type 'q4'; known: f32, f16, q8_0"]


# ---- q8_0 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hd32(tmp_path_factory):
    """LLaMA and FAMILY_CHECKPOINTS with heads of 32 elements (a q8_0 block): {family: checkpoint}."""
    d = tmp_path_factory.mktemp("kv-hd32")
    out = {}
    for family, kw in {"llama": {}, **FAMILY_CHECKPOINTS}.items():
        make_hf_checkpoint(d / family, **{**kw, "head_dim": 32})
        out[family] = d / family
    return out


@pytest.mark.parametrize("family", ["llama", *sorted(FAMILY_CHECKPOINTS)])
def test_q8_0_cache_forward_equals_the_python_graph(hd32, family):
    """As for f16: the C forward's logits and q8_0 cache rows are the Python graph's bit for bit,
    in chunked prefill and decode, on every family."""
    model = llmrun.load(hd32[family], kv_type="q8_0")
    fast, slow = model.new_cache(32), model.new_cache(32)
    assert fast.k.dtype == np.uint8 and fast.k.shape[-1] == 34  # one block a row
    for chunk in (IDS[:6], IDS[6:11], IDS[11:12], IDS[12:13], IDS[13:]):
        np.testing.assert_array_equal(model.forward(chunk, fast), model.forward(chunk, slow, reference=True))
    np.testing.assert_array_equal(fast.k, slow.k)
    np.testing.assert_array_equal(fast.v, slow.v)


def test_q8_0_cache_rows_are_the_reference_blocks_of_the_rotated_f32_rows(hd32):
    """The first layer's rows (the embeddings' alone) are quant/'s numpy q8_0 blocks of an f32
    cache's rows turned by the Walsh-Hadamard rotation, whatever the chunking; nothing is
    written past the positions run."""
    f32, q8 = llmrun.load(hd32["llama"]), llmrun.load(hd32["llama"], kv_type="q8_0")
    a, b = f32.new_cache(16), q8.new_cache(16)
    f32.forward(IDS[:9], a)
    q8.forward(IDS[:4], b)
    q8.forward(IDS[4:9], b)
    for got, rows in ((b.k, a.k), (b.v, a.v)):
        turned = np.array(rows[0, :, :9])
        K.kv_rotate(turned, False)
        want = ref.quantize(turned.reshape(-1, 32), Q8_0).reshape(got[0, :, :9].shape)
        np.testing.assert_array_equal(got[0, :, :9], want)
    assert not b.k[:, :, 9:].any() and not b.v[:, :, 9:].any()


def sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("hd", [32, 64, 96, 128, 256])
def test_kv_rotate_is_the_walsh_hadamard_matrix(hd):
    """Each run of n (the largest power of two dividing hd: 32, 64, 32, 128, 256) times Sylvester's
    H_n, within float32's rounding of float64; then / n; and the two in turn give x back, so
    that q.k and the attention output are unchanged by the rotation."""
    n = hd & -hd
    x = np.random.default_rng(hd).standard_normal((5, 3, hd)).astype(np.float32)
    want = (x.astype(np.float64).reshape(-1, hd // n, n) @ sylvester(n)).reshape(x.shape)
    y = x.copy()
    K.kv_rotate(y, False)
    bound = np.log2(n) * 2.0 ** -24 * (np.abs(x).reshape(-1, hd // n, n).sum(-1, keepdims=True) + 0.0)
    assert (np.abs(y.reshape(-1, hd // n, n) - want.reshape(-1, hd // n, n)) <= bound).all()
    z = y.copy()
    K.kv_rotate(z, True)
    np.testing.assert_allclose(z, x, rtol=0, atol=4 * np.log2(n) * 2.0 ** -24 * np.abs(x).max() * n ** 0.5)
    q, k = x[0, 0], x[1, 1]
    qr, kr = q.copy(), k.copy()
    K.kv_rotate(qr, True)
    K.kv_rotate(kr, False)
    assert abs(float(qr @ kr) - float(q.astype(np.float64) @ k)) < 1e-5 * np.abs(q).sum() * np.abs(k).max()


def test_q8_0_cache_logits_are_close_to_f32(hd32):
    f32, q8 = llmrun.load(hd32["llama"]), llmrun.load(hd32["llama"], kv_type="q8_0")
    a, b = f32.logits(IDS), q8.logits(IDS)
    assert not np.array_equal(a, b)  # the rounding is there
    assert mean_kl(a, b) < 1e-6
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_a_batch_mixes_q8_0_f16_and_f32_caches(hd32):
    models = {t: llmrun.load(hd32["llama"], kv_type=t) for t in ("f32", "f16", "q8_0")}
    caches = {t: m.new_cache(16) for t, m in models.items()}
    runs = {"f32": IDS[:5], "f16": IDS[5:12], "q8_0": IDS[2:9]}
    got = models["f32"].forward_batch([Segment(runs[t], caches[t], last_only=True) for t in runs])
    for i, t in enumerate(runs):
        np.testing.assert_array_equal(got[i], models[t].forward(runs[t], models[t].new_cache(16), last_only=True))


def test_q8_0_cache_takes_34_128ths_of_f32s_memory(hd32):
    f32, q8 = llmrun.load(hd32["llama"]), llmrun.load(hd32["llama"], kv_type="q8_0")
    assert q8.new_cache(64).k.nbytes * 128 == f32.new_cache(64).k.nbytes * 34
    assert model_module.kv_bytes_per_position(q8.config, "q8_0") * 128 == \
        model_module.kv_bytes_per_position(f32.config) * 34


def test_q8_0_blocks_of_nan_or_inf_read_as_nan():
    """A block holding a NaN or an infinity (a model's activations gone) reads back as NaN
    throughout, not as finite numbers; the blocks beside it are untouched."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    x[1, 5], x[2, 30] = np.nan, -np.inf
    x[4] *= np.float32(1e-38)  # a scale too small to invert: the block reads as 0
    blocks = np.empty((5, 34), np.uint8)
    K.quantize(blocks, x, Q8_0.id)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0
        values = d * blocks[:, 2:].view(np.int8).astype(np.float32)
    assert np.isnan(values[1:3]).all() and not values[4].any()
    np.testing.assert_array_equal(blocks, ref.quantize(x, Q8_0))  # quant/'s numpy twin, the same bytes


def test_q8_0_needs_heads_of_whole_blocks(hf):
    """A head dim that is not a multiple of 32 is refused in one line, before anything is loaded."""
    with pytest.raises(SettingError, match="multiple of 32, and this model's is 16: use --kv-type f16"):
        llmrun.load(hf, kv_type="q8_0")
    r = run_cli("generate", hf, "-p", "hi", "-n", "2", "--kv-type", "q8_0")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_q8_0(hd32):
    bench = run_cli("bench", hd32["llama"], "-p", "8", "-n", "4", "-t", "1", "-r", "1", "--kv-type", "q8_0",
                    check=True).stdout
    assert "| q8_0 " in bench.splitlines()[2]
