"""The WebGPU backend's kernels (kernels/wgsl/) against the numpy reference in quant/, on
whatever adapter wgpu finds: in CI, Mesa's software Vulkan device (lavapipe), which .ci/run
installs; on a Mac, the Apple GPU through Metal."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from gpu_checks import *  # noqa: F401,F403 (the whole-graph checks, run here on WebGPU)
from llmrun.backends import KV_DTYPES
from llmrun.backends.gpu import TYPES as GPU_TYPES, X16_TYPES
from llmrun.quant import dequantize, qtype, quantize

wgpu = pytest.importorskip("wgpu", reason="the webgpu extra is not installed (pip install -e '.[test]' brings it)")

# The kernels sum in f32 in their own order; the reference is float64 over the same weights.
# Relative to the largest output: f32 rounding over K terms, K <= 512 here.
BOUND = 2e-6


@pytest.fixture
def backend():
    return "webgpu"


@pytest.fixture
def bound():
    return 1e-3  # the CPU's 16-bit activations against the GPU's f32


@pytest.fixture(scope="module")
def device():
    return device_or_skip("webgpu", "no WebGPU adapter")


def _tensor(w: np.ndarray, t) -> tuple[object, np.ndarray]:
    """The weight as the device gets it, and its blocks in rows (for the reference)."""
    from llmrun.selftest import tensor
    return tensor(w, t), quantize(w, t)


@pytest.mark.parametrize("type", GPU_TYPES)
@pytest.mark.parametrize("rows, k, tokens", [(16, 32, 1), (48, 96, 1), (64, 512, 11), (32, 64, 8), (80, 64, 17),
                                             (48, 96, 70)])
def test_matmul_matches_reference(device, type, rows, k, tokens):
    """k rounded up to whole blocks of the type (256 for the k-quants). Up to 16 tokens the
    matvec, beyond the tiled GEMM (64 x 64 tiles: here the last one partial in rows or tokens)."""
    t = qtype(type)
    k = -(-k // t.block_size) * t.block_size
    rng = np.random.default_rng(rows * 1000 + k + tokens)
    tensor, blocks = _tensor(rng.standard_normal((rows, k)).astype(np.float32), t)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    got = device.matmul(device.upload(tensor), x)
    want = x.astype(np.float64) @ dequantize(blocks, t, k).astype(np.float64).T
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= BOUND * np.abs(want).max()


@pytest.mark.parametrize("tokens", [3, 20])
@pytest.mark.parametrize("type", X16_TYPES)
def test_every_bit_of_a_block(device, type, tokens):
    """Blocks of random bytes (every quant and sub-block scale bit pattern; f16 fields random but
    finite) in the layouts a file holds them in (X16; also rows for q2_k and q3_k, as files
    written before their CPU X16 kernels hold them, re-laid as they go up): the product against
    float64 over quant/'s dequantisation (the matvec's 3 tokens and the GEMM's 20), and the
    embedding rows bit for bit."""
    from llmrun.format import Tensor
    from llmrun.quant.layout import ROWS, X16, interleave, kernel_layout
    t = qtype(type)
    rows, k = 32, 2 * max(t.block_size, 64)
    rng = np.random.default_rng(9)
    blocks = random_blocks(t, rows, k, rng)
    w = dequantize(blocks, t, k)
    assert np.isfinite(w).all()
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    for layout in {kernel_layout(t, (rows, k))} | ({ROWS} if type in ("q2_k", "q3_k") else set()):
        m = device.upload(Tensor("w", t, (rows, k), (interleave(blocks, t) if layout == X16 else blocks).reshape(-1),
                                 layout))
        assert np.abs(device.matmul(m, x) - want).max() <= BOUND * np.abs(want).max(), layout
        ids = np.array([31, 0, 17], np.uint32)
        (buf, row0, n), = m.parts
        got = _run_op(device, "embed", (k, n, row0), [buf, ids, np.zeros((3, k), np.float32)], (3, 1), 3,
                      weight_type=type)
        np.testing.assert_array_equal(got.reshape(3, k), w[ids])


def test_f16_rows_not_a_multiple_of_16(device):
    """The rows layout's last workgroup is partial: its missing rows write nothing."""
    rng = np.random.default_rng(7)
    tensor, blocks = _tensor(rng.standard_normal((40, 64)).astype(np.float32), qtype("f16"))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = x.astype(np.float64) @ dequantize(blocks, qtype("f16"), 64).astype(np.float64).T
    assert np.abs(device.matmul(device.upload(tensor), x) - want).max() <= BOUND * np.abs(want).max()


def test_matrices_past_the_binding_limit_are_split(device, monkeypatch):
    """A matrix larger than one storage binding goes up in several buffers of whole 16-row
    groups, and the product is the same."""
    rng = np.random.default_rng(3)
    tensor, _ = _tensor(rng.standard_normal((96, 128)).astype(np.float32), qtype("q4_0"))
    x = rng.standard_normal((5, 128)).astype(np.float32)
    whole = device.upload(tensor)
    monkeypatch.setattr(device, "max_binding", 32 * 72)  # two 16-row groups of q4_0 [., 128]
    split = device.upload(tensor)
    assert len(whole.parts) == 1 and [(r0, n) for _, r0, n in split.parts] == [(0, 32), (32, 32), (64, 32)]
    np.testing.assert_array_equal(device.matmul(split, x), device.matmul(whole, x))


def test_info_lists_the_adapters(device):
    r = run_cli("info", "--backends", check=True)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cpu:") and any(line.startswith("webgpu:") and "shader-f16" in line for line in lines)


# --- the whole graph on the device -------------------------------------------------------------

def test_selftest_passes(device):
    r = run_cli("selftest", "--backend", "webgpu")
    assert r.returncode == 0 and r.stdout.count("PASS") == len(GPU_TYPES), r.stdout + r.stderr


def test_generate_and_chat_commands(device, tiny_models):
    path = tiny_models["llama", "q8_0"]
    want = run_cli("generate", path, "-p", "the cat", "-n", "8", "--temp", "0", check=True).stdout
    assert run_cli("generate", path, "-p", "the cat", "-n", "8", "--temp", "0", "--backend", "webgpu",
                   check=True).stdout == want
    r = run_cli("chat", path, "--backend", "webgpu", "--temp", "0", "-n", "6", input="hello\nmore\n", check=True)
    assert r.stdout.count("\n") >= 2


def test_unknown_backend_is_one_line(tiny_models):
    r = run_cli("generate", tiny_models["llama", "q8_0"], "-p", "x", "--backend", "cuda9")
    assert r.returncode == 1 and r.stderr.strip() == "llmrun: error: unknown backend 'cuda9'; known: cpu, webgpu, cuda"


# --- each kernel against numpy -----------------------------------------------------------------

def _run_op(device, kernel, params, buffers, groups, T, n_past=0, weight_type=None, out=-1, kv_type=None):
    """One kernel on a step of T tokens (numpy arrays go up as buffers); buffer `out` afterwards."""
    from llmrun.backends.webgpu import Plan
    u = device.wgpu.BufferUsage
    bufs = [device.buffer(np.ascontiguousarray(b), u.STORAGE | u.COPY_SRC) if isinstance(b, np.ndarray) else b
            for b in buffers]
    plan = Plan(device, device.uniform(n_past, T, 0))
    plan.op(kernel, params, bufs, lambda T, first: groups, weight_type, kv_type=kv_type)
    plan.run(T, n_past)
    return np.frombuffer(device.device.queue.read_buffer(bufs[out]), dtype=np.float32)


@pytest.mark.parametrize("per_token", [1, 3])
def test_rmsnorm_kernel(device, per_token):
    """Rows of the residual stream (one a token), and heads of q (per_token a token: the per-head
    q/k norms)."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((5 * per_token, 96)).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    out = _run_op(device, "rmsnorm", (96, 1e-5, 0, per_token), [x, w, np.zeros_like(x)], (5 * per_token, 1), 5)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out.reshape(5 * per_token, 96), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("rd", [16, 12, 0])
def test_rope_store_kernel(device, rd, kv_type):
    """RoPE on q in place and on k into the key cache (every element of each head, the first rd
    of them, a partial rotary whose rest pass, or none), v into the value cache, at rows n_past
    .. n_past + T - 1 read from the step state on the device; the cache's other rows stay. An
    f16 cache gets each value rounded once to nearest (numpy's astype, but for ties, which WGSL
    leaves to the device: within one f16 step)."""
    from llmrun.backends import cpu
    from llmrun.backends.webgpu import Plan
    rng = np.random.default_rng(2)
    T, H, Hkv, hd, n_past, C = 3, 4, 2, 16, 5, 10
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k, v = rng.standard_normal((2, T, Hkv, hd)).astype(np.float32)
    dtype = np.dtype(KV_DTYPES[kv_type])
    kc, vc = rng.standard_normal((2, C, Hkv, hd)).astype(np.float32).astype(dtype)
    inv_freq = (10000.0 ** (-np.arange(0, rd or 16, 2) / (rd or 16))).astype(np.float32)
    angle = np.arange(C, dtype=np.float32)[:, None] * inv_freq[None, :]
    table = np.stack([np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))], -1).astype(np.float32)
    u = device.wgpu.BufferUsage
    qb, kb, vb, tb, kcb, vcb = (device.buffer(a, u.STORAGE | u.COPY_SRC) for a in (q, k, v, table, kc, vc))
    plan = Plan(device, device.uniform(n_past, T, 0))
    plan.rope_store(qb, kb, vb, tb, kcb, vcb, H, Hkv, hd, rd, kv_type=kv_type)
    assert plan.run(T, n_past) == 1
    want_q, want_k = q.copy(), k.copy()
    if rd:
        for x in (want_q, want_k):
            cpu.rope_(x, np.arange(n_past, n_past + T, dtype=np.int32), inv_freq)  # the CPU's kernel
    want_kc, want_vc = kc.copy(), vc.copy()
    want_kc[n_past:n_past + T], want_vc[n_past:n_past + T] = want_k, v
    got = {name: np.frombuffer(device.device.queue.read_buffer(b), t) for name, b, t in
           (("q", qb, np.float32), ("kc", kcb, dtype), ("vc", vcb, dtype))}
    np.testing.assert_allclose(got["q"].reshape(q.shape), want_q, rtol=1e-6, atol=1e-6)
    if kv_type == "f32":
        np.testing.assert_allclose(got["kc"].reshape(kc.shape), want_kc, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got["vc"].reshape(vc.shape), want_vc)
    else:  # within one f16 step of the f32 values (2^-10 relative; 2^-24 below f16's normals)
        for name, want in (("kc", want_kc), ("vc", want_vc)):
            g = got[name].reshape(want.shape).astype(np.float64)
            assert (np.abs(g - want) <= np.maximum(np.abs(want) * 2.0 ** -10, 2.0 ** -24)).all(), name
        assert (got["kc"].reshape(kc.shape)[:n_past] == kc[:n_past]).all()  # the other rows stay


def test_an_f16_cache_stores_values_past_its_range_as_infinities(device):
    """As the CPU's f16 cache (numpy's astype): 65519 rounds to 65504, 65520 and beyond to inf
    (pack2x16float alone leaves them undefined)."""
    from llmrun.backends.webgpu import Plan
    values = np.array([65504, 65519, 65520, 1e6, -1e6, -65519, 3.0, -0.5], np.float32)
    v = values.reshape(1, 1, 8)
    u = device.wgpu.BufferUsage
    kc, vc = (device.buffer(np.zeros((2, 1, 8), np.float16), u.STORAGE | u.COPY_SRC) for _ in range(2))
    plan = Plan(device, device.uniform(1, 1, 0))
    plan.rope_store(*(device.buffer(a) for a in (np.zeros(8, np.float32), v, v, np.zeros(2, np.float32))), kc, vc,
                    1, 1, 8, 0, kv_type="f16")
    plan.run(1, 1)
    for cache in (kc, vc):
        got = np.frombuffer(device.device.queue.read_buffer(cache), np.float16).reshape(2, 8)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(got[1], values.astype(np.float16))
        assert (got[0] == 0).all()


@pytest.mark.parametrize("type", ["f16", "q4_0", "q4_k"])
@pytest.mark.parametrize("T, first", [(20, 5), (40, 5), (70, 0)])
def test_products_add_into_out_from_the_first_token(device, type, T, first):
    """accumulate (out += x W^T: the residual add) and from_first (x holds the tokens from
    step.first on: the output head), on the matvec (15 tokens) and the GEMM (35, 70); f16 in
    rows with 37 rows (a partial group of 8 and tile of 64)."""
    from llmrun.backends.webgpu import Plan
    t = qtype(type)
    rows, k = (37 if type == "f16" else 80), 256
    rng = np.random.default_rng(T)
    tensor, blocks = _tensor(rng.standard_normal((rows, k)).astype(np.float32), t)
    m = device.upload(tensor)
    x = rng.standard_normal((T - first, k)).astype(np.float32)
    before = rng.standard_normal((T - first, rows)).astype(np.float32)
    u = device.wgpu.BufferUsage
    out = device.buffer(before, u.STORAGE | u.COPY_SRC)
    plan = Plan(device, device.uniform(0, T, first))
    plan.matmul(m, device.buffer(x), out, from_first=True, accumulate=True)
    assert plan.run(T, 0, first) == 1
    got = np.frombuffer(device.device.queue.read_buffer(out), np.float32).reshape(T - first, rows)
    want = before + x.astype(np.float64) @ dequantize(blocks, t, k).astype(np.float64).T
    assert np.abs(got - want).max() <= BOUND * np.abs(want).max()


@pytest.mark.parametrize("window, scale", [(0, None), (3, 0.3), (270, None)])
@pytest.mark.parametrize("hd, n_past, C", [(16, 4, 8), (64, 290, 300), (96, 5, 16), (256, 258, 264)])
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_attention_kernel(device, window, scale, hd, n_past, C, kv_type):
    """Causal GQA over a cache of n_past + T positions, against the CPU's kernel: every position,
    or a sliding window, with the default or a family's scale; head widths from the tiny models'
    to Gemma's 256 (the value lanes: 16 columns by 16 lanes .. 64 by 4; 24 by 10 for 96, six
    invocations idle), and more positions than the workgroup's 256 invocations. An f16 cache
    is read as the f32 values it holds (the CPU's kernel on those)."""
    from llmrun.backends import cpu
    rng = np.random.default_rng(3)
    T, H, Hkv = 3, 4, 2
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k, v = rng.standard_normal((2, C, Hkv, hd)).astype(np.float32).astype(KV_DTYPES[kv_type])
    out = np.zeros_like(q)
    scores = np.zeros((T, H, C), np.float32)
    got = _run_op(device, "attention", (H, Hkv, hd, C, 0, float(scale or hd ** -0.5), window), [q, k, v, out, scores],
                  (H, T), T, n_past, out=3, kv_type=kv_type).reshape(T, H, hd)
    want = cpu.attention(q, *(np.ascontiguousarray(c.transpose(1, 0, 2), np.float32) for c in (k, v)), n_past,
                         window, scale)
    # both f32, summed in their own orders: scores over hd products, values over the positions
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("hd", [260, 18])
def test_heads_the_attention_kernel_cannot_take_are_one_line(device, hd):
    from types import SimpleNamespace
    from llmrun.backends.webgpu import Plan
    from llmrun.errors import LlmrunError
    cfg = SimpleNamespace(n_heads=2, n_kv_heads=1, head_dim=hd)
    with pytest.raises(LlmrunError, match=f"heads of up to 256, a multiple of 4, not {hd}"):
        Plan(device, device.uniform(0, 1, 0)).attention(None, None, None, None, cfg, 8, 1, 1.0, 0)


@pytest.mark.parametrize("arch, per_layer", [("llama", 12), ("qwen2", 15)])
def test_the_dispatches_of_a_prompt_and_a_decode_step(device, tiny_models, arch, per_layer):
    """A layer: norm, q, k, v, rope_store, attention, o adding into the residual, norm, gate, up,
    the gate op, down adding into the residual (and Qwen2's three bias adds); then the final
    norm and the head, after the embedding. A prompt of 20 runs each product once too (the
    GEMM, not the matvec as well) and a second attention dispatch a layer (16 tokens each)."""
    import llmrun
    model = llmrun.load(tiny_models[arch, "q4_0"], backend="webgpu")
    cache = model.new_cache(32)
    model.forward(np.arange(1, 21, dtype=np.int32), cache)
    assert cache.store.dispatches == (per_layer + 1) * model.config.n_layers + 3
    model.forward(np.array([4], np.int32), cache)
    assert cache.store.dispatches == per_layer * model.config.n_layers + 3


def test_elementwise_kernels(device):
    rng = np.random.default_rng(4)
    g, u = rng.standard_normal((2, 3, 40)).astype(np.float32) * 4
    got = _run_op(device, "silu_mul", (40,), [g, u], (2, 1), 3, out=0)
    np.testing.assert_allclose(got.reshape(3, 40), g / (1 + np.exp(-g.astype(np.float64))) * u, rtol=1e-5, atol=1e-6)
    g[0, :3] = [30.0, -30.0, 100.0]  # past where an exp-based tanh overflows
    got = _run_op(device, "gelu_mul", (40,), [g, u], (2, 1), 3, out=0)
    x = g.astype(np.float64)
    want = 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))) * u
    # f32's tanh is good to ~1e-7 of 1: where 1 + tanh cancels, relative to the gate's size
    assert (np.abs(got.reshape(3, 40) - want) <= 2e-6 * np.abs(g * u) + 1e-6).all()
    bias = rng.standard_normal(40).astype(np.float32)
    got = _run_op(device, "add", (40, 40), [g, bias], (2, 1), 3, out=0)
    np.testing.assert_array_equal(got.reshape(3, 40), g + bias)
    got = _run_op(device, "scale", (40, 0, 0.3), [g], (2, 1), 3, out=0)
    np.testing.assert_array_equal(got.reshape(3, 40), g * np.float32(0.3))


@pytest.mark.parametrize("type", GPU_TYPES)
def test_embed_kernel(device, type):
    """Rows of the table, dequantised exactly as quant.dequantize does."""
    t = qtype(type)
    k = max(64, t.block_size)
    rng = np.random.default_rng(5)
    tensor, blocks = _tensor(rng.standard_normal((48, k)).astype(np.float32), t)
    m = device.upload(tensor)
    ids = np.array([47, 0, 16, 16], np.uint32)
    out = np.zeros((4, k), np.float32)
    (w, row0, rows), = m.parts
    got = _run_op(device, "embed", (k, rows, row0), [w, ids, out], (4, 1), 4, weight_type=type)
    np.testing.assert_array_equal(got.reshape(4, k), dequantize(blocks, t, k)[ids])


def test_weights_without_kernels_are_one_line(device, tiny_models, tmp_path):
    from conftest import make_hf_checkpoint
    make_hf_checkpoint(tmp_path / "hf")
    run_cli("convert", tmp_path / "hf", tmp_path / "f32.llmr", "--type", "f32", check=True)
    r = run_cli("generate", tmp_path / "f32.llmr", "-p", "x", "--backend", "webgpu")
    assert r.returncode == 1 and "llmrun: error: " in r.stderr and "no WebGPU kernels for f32 weights" in r.stderr


def test_a_cache_the_device_cannot_hold_is_one_line(device, tiny_models):
    """A context whose KV cache is past the device's largest buffer: a ContextError naming --ctx."""
    import llmrun
    from llmrun.errors import ContextError
    gpu = llmrun.load(tiny_models["llama", "q8_0"], backend="webgpu")
    too_many = device.adapter.limits["max-buffer-size"] // (gpu.config.n_kv_heads * gpu.config.head_dim * 4) + 1
    with pytest.raises(ContextError, match="--ctx"):
        gpu.new_cache(too_many)


def test_bench_on_the_device(device, tiny_models):
    import json
    r = run_cli("bench", tiny_models["llama", "q4_0"], "--backend", "webgpu", "-p", "16", "-n", "4", "-r", "1",
                "-o", "json", check=True)
    results = json.loads(r.stdout)
    assert [(x["test"], x["isa"], x["threads"]) for x in results] == [("pp16", "webgpu", 0), ("tg4", "webgpu", 0)]
    assert all(x["avg_ts"] > 0 for x in results)


def test_a_step_the_device_cannot_hold_is_one_line(device, tiny_models, monkeypatch):
    import llmrun
    from llmrun.errors import ContextError
    gpu = llmrun.load(tiny_models["llama", "q8_0"], backend="webgpu")
    cache = gpu.new_cache(64)
    real_zeros = type(device).zeros

    def small_device(dev, nbytes, usage=None):  # a device whose buffers stop at 64 KiB
        if nbytes > 1 << 16:
            raise device.wgpu.GPUValidationError("buffer too large")
        return real_zeros(dev, nbytes, usage)

    # a 64-token step's logits take 64 * 320 * 4 bytes: past that device's largest buffer
    monkeypatch.setattr(type(device), "zeros", small_device)
    with pytest.raises(ContextError, match="fewer tokens"):
        gpu.forward(list(range(64)), cache)


def test_a_model_whose_rows_cannot_start_a_binding_runs_one_context_a_call(device, monkeypatch):
    """A batch binds each context's rows of q and k/v at an offset; where the adapter's storage
    offset alignment does not divide their size, the model runs one context a call instead
    (max_segments 1, as before), and a larger forward is refused in one line, not run wrong."""
    from dataclasses import replace
    from llmrun import selftest
    from llmrun.backends.gpu import Graph
    from llmrun.errors import LlmrunError
    cfg = selftest.CONFIG  # k/v rows of 2 x 32 floats: 256 bytes
    w = selftest.random_weights("q8_0", cfg)
    monkeypatch.setattr(device, "storage_align", 256)
    assert device.batches(cfg) and Graph(device, cfg, w, selftest.rope_frequencies(cfg), "webgpu").max_segments is None
    monkeypatch.setattr(device, "storage_align", 512)
    assert not device.batches(cfg) and device.batches(replace(cfg, n_kv_heads=4))  # k/v rows of 512 bytes
    graph = Graph(device, cfg, w, selftest.rope_frequencies(cfg), "webgpu")
    assert graph.max_segments == 1
    caches = [graph.new_cache(8) for _ in range(2)]
    with pytest.raises(LlmrunError, match="runs one sequence a call, not 2"):
        graph.forward([(np.array([1], np.int32), 0, c, 0) for c in caches])


def test_an_f16_kv_cache_beside_f32_ones(device, bound):
    """The every-switch model (windows, no-RoPE layers, q/k norms) with contexts of f16, f32 and
    f16 caches: prompts, then decode steps of the three as one device step (each context's
    rope_store and attention of its own cache's type), against the CPU with the same caches.
    An f16 cache takes half the bytes of an f32 one."""
    from llmrun import selftest
    from llmrun.backends import cpu
    from llmrun.backends.gpu import Graph
    from llmrun.model import KVCache
    cfg, w = every_switch("q8_0")
    inv_freq = selftest.rope_frequencies(cfg)
    graph, on_device = cpu.graph(cfg, w, inv_freq), Graph(device, cfg, w, inv_freq, "webgpu")
    rng = np.random.default_rng(4)
    kv_types = ("f16", "f32", "f16")
    prompts = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in (3, 18, 10)]
    caches = [(KVCache(cfg, 24, kv_type=t), on_device.new_cache(24, t), len(p)) for p, t in zip(prompts, kv_types)]
    assert [d.k[0].size for _, d, _ in caches] == [24 * cfg.n_kv_heads * cfg.head_dim * (2 if t == "f16" else 4)
                                                  for t in kv_types]
    for (c, d, _), p in zip(caches, prompts):
        want, got = cpu.forward(graph, p, 0, c.k, c.v, 0, cfg.vocab_size), d.run(p, 0, 0)
        assert np.abs(got - want).max() <= bound * np.abs(want).max()
    for step in range(3):
        ids = [rng.integers(0, cfg.vocab_size, 1).astype(np.int32) for _ in range(3)]
        got = on_device.forward([(t, n, d, 0) for t, (_, d, n) in zip(ids, caches)])
        for t, (c, _, n), g in zip(ids, caches, got):
            want = cpu.forward(graph, t, n, c.k, c.v, 0, cfg.vocab_size)
            assert g.argmax() == want.argmax() and np.abs(g - want).max() <= bound * np.abs(want).max()
        caches = [(c, d, n + 1) for t, (c, d, n) in zip(ids, caches)]
    assert len(on_device.batches) == 1


def test_the_plan_s_tiles_are_the_kernels():
    """webgpu.py sizes its grids by the kernels' constants: each one as the WGSL declares it."""
    from llmrun.backends import webgpu
    for kernel, name, value in (("matmul", "ROWS", webgpu.ROWS_PER_WORKGROUP),
                                ("matmul", "TOKENS", webgpu.TOKENS_PER_WORKGROUP),
                                ("gemm", "TILE", webgpu.GEMM_TILE), ("attention", "MAX_HEAD_DIM", webgpu.MAX_HEAD_DIM)):
        assert f"const {name}: u32 = {value}u;" in webgpu.wgsl(kernel), (kernel, name)


def test_no_kernel_writes_one_component_of_a_shared_vector():
    """A write to one component of a vector in workgroup memory may write the whole vector
    (WGSL's memory model; seen on Apple's GPUs): invocations writing different components of
    one vector race. Every kernel writes its workgroup vectors whole."""
    import re
    from pathlib import Path
    for path in sorted((Path(__file__).parent.parent / "kernels" / "wgsl").glob("*.wgsl")):
        code = path.read_text()
        for name in re.findall(r"var<workgroup>\s+(\w+)\s*:\s*array<vec", code):
            bad = re.findall(rf"\b{name}\[[^\]]*\](?:\[[^\]]*\]|\.[xyzwrgba]+)\s*[-+*/]?=(?!=)", code)
            assert not bad, f"{path.name}: {bad}"
