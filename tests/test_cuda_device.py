"""The CUDA kernels on a real NVIDIA GPU (skipped where the driver finds none; CI has none, so
these run by benchmarks/cuda_device_check.sh on a GPU machine): each kernel against its numpy
twin in tests/cuda_emulator.py (the products against quant/'s dequantised weights), then the
whole graph against the CPU backend (tests/gpu_checks.py), SmolLM2 included."""
from __future__ import annotations

import numpy as np
import pytest

from cuda_emulator import Emulator
from gpu_checks import *  # noqa: F401,F403 (the whole-graph checks, run here on the GPU)
from llmrun.backends.gpu import TYPES
from llmrun.quant import dequantize, qtype, quantize


@pytest.fixture(scope="module")
def device():
    return device_or_skip("cuda", "no CUDA GPU")


@pytest.fixture
def backend():
    return "cuda"


@pytest.fixture
def bound():
    return 1e-3  # the CPU's 16-bit activations against f32 (hi + lo f16 on tensor cores)


@pytest.mark.parametrize("type", TYPES)
@pytest.mark.parametrize("rows, k, tokens", [(16, 32, 1), (48, 96, 3), (64, 512, 16), (80, 64, 17),
                                             (144, 2048, 70), (576, 1536, 300), (96, 4160, 1), (32, 8192, 2)])
def test_matmul_matches_reference(device, type, rows, k, tokens):
    """Both products (matvec up to 16 tokens, tensor cores beyond) against float64 over the
    dequantised weights: f32 sums, relative to the largest output. k rounded up to whole
    blocks (256 values for the k-quants)."""
    from llmrun.selftest import tensor
    t = qtype(type)
    k = -(-k // t.block_size) * t.block_size
    rng = np.random.default_rng(rows + k + tokens)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    got = device.matmul(device.upload(tensor(w, t)), x)
    want = x.astype(np.float64) @ dequantize(quantize(w, t), t, k).astype(np.float64).T
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_f16_matvec_of_a_partial_group(device):
    """f16 keeps the rows layout: a last group of fewer than 16 rows reads no row past the matrix."""
    from llmrun.selftest import tensor
    t = qtype("f16")
    rng = np.random.default_rng(7)
    w, x = rng.standard_normal((40, 96)).astype(np.float32), rng.standard_normal((3, 96)).astype(np.float32)
    for tokens in (1, 3):
        got = device.matmul(device.upload(tensor(w, t)), x[:tokens])
        want = x[:tokens].astype(np.float64) @ dequantize(quantize(w, t), t, 96).astype(np.float64).T
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _on_both(device, kernel, params, arrays, grid, T, n_past=0, first=0, weight_type=None, threads=64, out=-1):
    """One launch on the GPU and on the emulator's numpy twin: buffer `out` from each."""
    from llmrun.backends import cuda
    results = []
    for dev in (device, cuda.Device(Emulator(None))):
        buffers = [dev.buffer(np.ascontiguousarray(a)) for a in arrays]
        plan = cuda.Plan(dev, dev.buffer(np.array([n_past, T, first, 0], np.uint32)))
        plan.op(kernel, params, buffers, lambda T, first: grid, weight_type, threads)
        plan.run(T, n_past, first)
        results.append(dev.read(buffers[out], arrays[out].nbytes).view(np.float32))
    return results


def test_small_ops_match_their_twins(device):
    from llmrun.backends import cuda
    rng = np.random.default_rng(1)
    T, H, Hkv, hd, n_past, C = 5, 4, 2, 64, 7, 16
    x, w = rng.standard_normal((T, 96)).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    got, want = _on_both(device, "rmsnorm", (96, 1e-5, 1, 1), [x, w, np.zeros_like(x)], (T - 2, 1), T, first=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    # the per-head q/k norms: T * H rows of hd
    got, want = _on_both(device, "rmsnorm", (hd, 1e-5, 0, H), [q, w[:hd], np.zeros_like(q)], (T * H, 1), T)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    k, v = rng.standard_normal((2, C, Hkv, hd)).astype(np.float32)
    for scale, window in ((float(1 / np.sqrt(hd)), 0), (0.3, 4)):  # every position, or a sliding window
        got, want = _on_both(device, "attention", (H, Hkv, hd, scale, window), [q, k, v, np.zeros_like(q)],
                             (H, T), T, n_past - T + 1, threads=cuda.ATTENTION_THREADS, out=3)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    g, u = rng.standard_normal((2, T, 40)).astype(np.float32) * 4
    for kernel, params, arrays in (("silu_mul", (40,), [g, u]), ("gelu_mul", (40,), [g, u]),
                                   ("add", (40, 40), [g, u[0]]), ("scale", (40, 0, 0.3), [g])):
        got, want = _on_both(device, kernel, params, arrays, (4, 1), T, n_past, out=0)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 if kernel != "gelu_mul" else 1e-5)


@pytest.mark.parametrize("type", TYPES)
def test_embed_matches_its_twin(device, type):
    from llmrun.backends.gpu import device_bytes
    from llmrun.selftest import tensor
    k = max(64, qtype(type).block_size)
    w = np.random.default_rng(5).standard_normal((48, k)).astype(np.float32)
    data = np.ascontiguousarray(device_bytes(tensor(w, qtype(type)), "CUDA")).view(np.uint8)  # as upload() sends it
    ids = np.array([47, 0, 16, 16], np.uint32)
    got, want = _on_both(device, "embed", (k, 48, 0), [data, ids, np.zeros((4, k), np.float32)], (4, 1), 4,
                         weight_type=type)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("hd", [64, 96, 128, 256])
def test_attention_over_a_long_cache_matches_its_twin(device, hd):
    """Many batches of positions a warp, a partial last batch, each head width's registers."""
    from llmrun.backends import cuda
    rng = np.random.default_rng(hd)
    T, H, Hkv, C = 2, 4, 2, 333
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k, v = rng.standard_normal((2, C, Hkv, hd)).astype(np.float32)
    for scale, window in ((float(1 / np.sqrt(hd)), 0), (0.3, 50)):
        got, want = _on_both(device, "attention", (H, Hkv, hd, scale, window), [q, k, v, np.zeros_like(q)],
                             (H, T), T, C - T, threads=cuda.ATTENTION_THREADS, out=3)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _plan_on_both(device, build, T, n_past=0):
    """A plan built by build(dev, plan) -> [(buffer, nbytes)] run on the GPU and on the
    emulator's twins: the buffers' bytes as float32 from each."""
    from llmrun.backends import cuda
    results = []
    for dev in (device, cuda.Device(Emulator(None))):
        plan = cuda.Plan(dev, dev.buffer(np.array([n_past, T, 0, 0], np.uint32)))
        outs = build(dev, plan)
        plan.run(T, n_past)
        results.append([dev.read(b, n).view(np.float32) for b, n in outs])
    return results


@pytest.mark.parametrize("types", [("q4_0", "q4_0"), ("q4_0", "q8_0"), ("q4_1", "q8_0"), ("q8_0", "q8_0"),
                                   ("f16", "f16"), ("q5_0", "q5_0"), ("q5_1", "q5_1"), ("iq4_nl", "iq4_nl"),
                                   ("q4_k", "q4_k"), ("q5_k", "q5_k"), ("q6_k", "q6_k")])
@pytest.mark.parametrize("T", [1, 3, 20])
def test_fused_matvecs_match_their_twins(device, types, T):
    """q/k/v in one launch (matmul3, k and v of another type), gate/up with SiLU or GELU in the
    epilogue (matmul_gate), each also with the pre-norm folded into its prologue (T = 20: the
    rmsnorm op then the GEMMs), the residual add in the product's epilogue (matmul and, T = 20,
    the GEMM with accumulate): the GPU against the numpy twins."""
    from llmrun.selftest import tensor
    rng = np.random.default_rng(T)
    k, rows = 256, (64, 32, 32)
    ws = [rng.standard_normal((r, k)).astype(np.float32) for r in (*rows, 64)]
    x = rng.standard_normal((T, k)).astype(np.float32)
    res = rng.standard_normal((T, 64)).astype(np.float32)
    nw = rng.standard_normal(k).astype(np.float32)
    xs = x * np.float32(30.0)  # the residual stream's scale: the norm brings it back

    def build(dev, plan):
        mq, mk, mv = (dev.upload(tensor(w, qtype(t))) for w, t in zip(ws, (types[0], types[1], types[1])))
        mu = dev.upload(tensor(ws[3], qtype(types[0])))
        xb = dev.buffer(x)
        q, kk, v = (dev.zeros(T * r * 4) for r in rows)
        gs, us, gg, ug = (dev.zeros(T * 64 * 4) for _ in range(4))
        r = dev.buffer(res)
        plan.matmul_qkv(mq, mk, mv, xb, q, kk, v)
        plan.matmul_gate(mq, mu, xb, gs, us, "silu_mul")
        plan.matmul_gate(mq, mu, xb, gg, ug, "gelu_mul")
        plan.matmul(mq, xb, r, accumulate=True)
        nq, nk, nv = (dev.zeros(T * r * 4) for r in rows)
        ng, nu, h = dev.zeros(T * 64 * 4), dev.zeros(T * 64 * 4), dev.zeros(T * k * 4)
        norm = (dev.buffer(xs), dev.buffer(nw), 1e-5)
        plan.matmul_qkv(mq, mk, mv, h, nq, nk, nv, norm=norm)
        plan.matmul_gate(mq, mu, h, ng, nu, "silu_mul", norm=norm)
        return [(b, T * n * 4) for b, n in ((q, 64), (kk, 32), (v, 32), (gs, 64), (gg, 64), (r, 64), (nq, 64),
                                           (nk, 32), (nv, 32), (ng, 64))]
    got, want = _plan_on_both(device, build, T)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


@pytest.mark.parametrize("rd", [64, 48, 0])
def test_rope_store_matches_its_twin(device, rd):
    """RoPE on q in place, on k into the key cache, v into the value cache, in one launch: every
    element turned (rd = hd), a partial rotary, none (a layer without RoPE)."""
    rng = np.random.default_rng(rd)
    T, H, Hkv, hd, n_past, C = 3, 4, 2, 64, 5, 16
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k, v = rng.standard_normal((2, T, Hkv, hd)).astype(np.float32)
    half = max(rd, 2) // 2
    angle = np.arange(C, dtype=np.float32)[:, None] * (10000.0 ** (-np.arange(half) / half)).astype(np.float32)
    table = np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float32)

    def build(dev, plan):
        qb, kb, vb, tb = (dev.buffer(a) for a in (q, k, v, table))
        kc, vc = dev.zeros(C * Hkv * hd * 4), dev.zeros(C * Hkv * hd * 4)
        plan.rope_store(qb, kb, vb, tb, kc, vc, H, Hkv, hd, rd)
        return [(qb, q.nbytes), (kc, C * Hkv * hd * 4), (vc, C * Hkv * hd * 4)]
    got, want = _plan_on_both(device, build, T, n_past)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
