"""The CUDA backend without a GPU: the kernels compile with nvcc into the installed fatbin, and
llmrun/backends/cuda.py's plans, run on tests/cuda_emulator.py (a driver whose kernels are numpy twins
of kernels/cuda/, each launch checked against the compiled kernel's parameters and block size),
give the CPU backend's logits: launch geometry, arguments, buffers, uploads, graph capture.
The CUDA code itself is tested on a GPU by tests/test_cuda_device.py."""
from __future__ import annotations

import ctypes
import gc
import shutil
import subprocess

import numpy as np
import pytest

from conftest import run_cli
from cuda_emulator import ROOT, Emulator, compile_ptx, constants, signatures
from gpu_checks import *  # noqa: F401,F403 (the whole-graph checks, run here on the emulator)
from llmrun.backends.gpu import TYPES
from llmrun.quant import dequantize, qtype, quantize

if not shutil.which("nvcc"):
    pytest.skip("nvcc is not installed: the CUDA kernels are neither built nor checked", allow_module_level=True)

# Relative to the largest output: f32 sums of K <= 512 terms; the tensor-core GEMM's activations
# carry 22 significant bits (hi + lo in f16), its weights are exact.
BOUND = {"matmul": 2e-6, "gemm": 4e-6}


@pytest.fixture(scope="module")
def kernels():
    return signatures(compile_ptx())


@pytest.fixture
def emulator(kernels, monkeypatch):
    from llmrun.backends import cuda
    emu = Emulator(kernels)
    monkeypatch.setattr(cuda, "Driver", lambda: emu)
    monkeypatch.setattr(cuda, "fatbin", lambda: b"emulated")
    return emu


@pytest.fixture
def backend():
    return "cuda"


@pytest.fixture
def device(emulator):
    return emulator


@pytest.fixture
def bound():
    return 1e-3  # the CPU's 16-bit activations against f32 (hi + lo f16 on tensor cores)


def test_the_module_has_every_kernel_the_plans_launch(kernels):
    from llmrun.backends import cuda, gpu
    ops = {"rmsnorm", "silu_mul", "gelu_mul", "scale", "add", "attention", "rope_store"}
    assert set(kernels) == {f"{op}_{t}" for op in ("matmul", "matmul_gate", "gemm", "embed") for t in gpu.TYPES} | \
        {f"matmul3_{a}_{b}" for a, b in cuda.MATMUL3_TYPES} | ops
    assert kernels["gemm_q4_0"][1] == cuda.GEMM_THREADS and kernels["matmul_q4_0"][1] == cuda.MATMUL_THREADS
    assert kernels["attention"][1] == cuda.ATTENTION_THREADS


def test_the_host_knows_the_kernels_tiles():
    """llmrun/backends/cuda.py's grids divide by the tiles kernels/cuda/ declares."""
    from llmrun.backends import cuda
    c = constants()
    assert (cuda.MATMUL_ROWS, cuda.MATMUL_TOKENS, cuda.GEMM_ROWS, cuda.GEMM_TOKENS, cuda.MAX_HEAD_DIM) == \
        (c["MATMUL_ROWS"], c["MATMUL_TOKENS"], c["GEMM_ROWS"], c["GEMM_TOKENS"], c["MAX_HEAD_DIM"])
    assert (cuda.MATMUL_THREADS, cuda.GEMM_THREADS, cuda.ATTENTION_THREADS) == \
        (c["MATMUL_WARPS"] * 32, c["GEMM_THREADS"], c["ATTENTION_WARPS"] * 32)


def test_the_fatbin_is_installed():
    from llmrun.backends import cuda
    assert cuda.fatbin()[:4] == bytes.fromhex("50ed55ba")  # a fatbin's magic number


def _tensor(w, t):
    from llmrun.selftest import tensor
    return tensor(w, t), quantize(w, t)


@pytest.mark.parametrize("type", TYPES)
@pytest.mark.parametrize("rows, k, tokens", [(16, 32, 1), (48, 96, 3), (64, 512, 16), (80, 64, 17), (144, 96, 70)])
def test_matmul_geometry(emulator, type, rows, k, tokens):
    """Up to 16 tokens read the weights once per 8 (matmul), more go to the tensor-core GEMM;
    either grid covers every row and token."""
    from llmrun.backends import cuda
    t = qtype(type)
    k = -(-k // t.block_size) * t.block_size  # whole blocks (256 values for the k-quants)
    rng = np.random.default_rng(rows + k + tokens)
    tensor, blocks = _tensor(rng.standard_normal((rows, k)).astype(np.float32), t)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    dev = cuda.Device()
    got = dev.matmul(dev.upload(tensor), x)
    want = x.astype(np.float64) @ dequantize(blocks, t, k).astype(np.float64).T
    kernel = "gemm" if tokens > cuda.GEMM_FROM else "matmul"
    tile = (cuda.GEMM_ROWS, cuda.GEMM_TOKENS) if kernel == "gemm" else (cuda.MATMUL_ROWS, cuda.MATMUL_TOKENS)
    assert emulator.launches == [(f"{kernel}_{type}", (-(-rows // tile[0]), -(-tokens // tile[1])),
                                  cuda.GEMM_THREADS if kernel == "gemm" else cuda.MATMUL_THREADS)]
    assert np.abs(got - want).max() <= BOUND[kernel] * np.abs(want).max()


# The types whose decoding (kernels/cuda/x16.cuh's X16Bytes) tests/cuda_host.cu runs on the host
HOST_TYPES = [t for t in TYPES if "X16Bytes<" in ((ROOT / "kernels" / "cuda" / f"{t}.cuh").read_text()
                                                  if (ROOT / "kernels" / "cuda" / f"{t}.cuh").exists() else "")]


@pytest.fixture(scope="module")
def host_decoder(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cuda-host") / "cuda_host"
    subprocess.run([shutil.which("nvcc"), "-std=c++17", "-O1", f"-I{ROOT / 'kernels' / 'include'}",
                    f"-I{ROOT / 'kernels' / 'cuda'}", str(ROOT / "tests" / "cuda_host.cu"), "-o", str(exe)],
                   check=True, capture_output=True)
    return exe


@pytest.mark.parametrize("type", HOST_TYPES)
@pytest.mark.parametrize("blocks", ["quantised", "random"])
def test_the_kernels_decoding_on_the_host(host_decoder, tmp_path, type, blocks):
    """The CUDA code that reads a type's x16 bytes, compiled for the host (tests/cuda_host.cu):
    embed's rows are quant/'s dequantisation bit for bit, the decode matvec's lanes (every step
    and lane of a warp) give the product within the matvec's bound of float64, and the quants
    the GEMM puts in f16 are exact there. Weights quantised from normals, or random bytes (every
    bit pattern)."""
    from llmrun.quant.layout import interleave
    t = qtype(type)
    rows, k, tokens = 48, 2 * t.block_size * (1 + (t.block_size == 32)), 3
    rng = np.random.default_rng(12)
    data = (quantize(rng.standard_normal((rows, k)).astype(np.float32), t) if blocks == "quantised"
            else random_blocks(t, rows, k, rng))
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    (tmp_path / "in").write_bytes(np.array([rows, k, tokens], np.uint32).tobytes() + interleave(data, t).tobytes()
                                  + x.tobytes())
    subprocess.run([host_decoder, type, tmp_path / "in", tmp_path / "out"], check=True)
    out = np.frombuffer((tmp_path / "out").read_bytes(), np.uint8)
    table = out[:rows * k * 4].view(np.float32).reshape(rows, k)
    product = out[rows * k * 4:(rows * k + tokens * rows) * 4].view(np.float32).reshape(tokens, rows)
    w = dequantize(data, t, k)
    np.testing.assert_array_equal(table, w)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(product - want).max() <= BOUND["matmul"] * np.abs(want).max()
    assert out[-4:].view(np.uint32)[0] == 1  # every quant a whole number under 2^11


def test_weights_go_up_through_the_staging_buffer_in_pieces(emulator, monkeypatch):
    from llmrun.backends import cuda
    monkeypatch.setattr(cuda, "STAGING", 1000)  # the matrix below is 2304 bytes: three pieces
    tensor, blocks = _tensor(np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32), qtype("q8_0"))
    dev = cuda.Device()
    m = dev.upload(tensor)
    (buffer, _, _), = m.parts
    assert bytes(emulator.view(buffer.ptr, tensor.data.nbytes)) == tensor.data.tobytes()


def test_selftest_on_the_emulator(emulator):
    """Every weight type: a 12-token prefill and three decode steps, as the CPU computes them."""
    from llmrun import selftest
    checks = selftest.run("cuda")
    assert [c.type for c in checks] == list(selftest.TYPES)
    assert all(c.passed for c in checks), checks


@pytest.fixture
def models(tiny_models, emulator):
    import llmrun

    def load(kind, type):
        path = tiny_models[kind, type]
        return llmrun.load(path), llmrun.load(path, backend="cuda")
    return load


def test_decode_steps_replay_one_captured_graph(models, emulator):
    """A prefill of more than 16 tokens runs on tensor cores; the first decode step is captured,
    the next ones replay it: they read their positions from the step buffer, so their logits
    are still the CPU's."""
    cpu, gpu = models("llama", "q4_0")
    cache, c_cache = gpu.new_cache(32), cpu.new_cache(32)
    gpu.forward(list(range(1, 21)), cache)
    cpu.forward(list(range(1, 21)), c_cache)
    assert "gemm_q4_0" in {name for name, _, _ in emulator.launches}
    for t in range(21, 25):
        got, want = gpu.forward([t], cache), cpu.forward([t], c_cache)
        assert got.argmax() == want.argmax() and np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    plan = cache.store.plan
    assert list(plan.graphs) == [(1, 0)] and emulator.graph_launches == 4
    assert cache.store.dispatches == len(emulator.graphs[plan.graphs[1, 0][0]])
    assert cache.store.bytes_up == 4 + 12 and cache.store.bytes_down == cpu.config.vocab_size * 4


def test_decode_steps_of_several_contexts_run_as_one_step(models, emulator):
    """forward_batch of several contexts' decode steps is one step on the device: each product
    one launch over all their tokens (the weights read once), RoPE, the KV store and the
    attention once per context at its own position and cache; captured once, replayed after.
    Their logits are what the CPU gives each context; a prompt in the same batch runs alone."""
    from llmrun.model import Segment
    cpu, gpu = models("llama", "q4_0")
    rng = np.random.default_rng(7)
    prompts = [rng.integers(1, cpu.config.vocab_size, n).tolist() for n in (5, 20, 9)]
    caches = [(m.new_cache(40), m) for m in (cpu, gpu) for _ in prompts]
    for (cache, m), p in zip(caches, prompts * 2):
        m.forward(p, cache)
    c_caches, g_caches = [c for c, _ in caches[:3]], [c for c, _ in caches[3:]]
    layers = cpu.config.n_layers
    for step in range(3):
        tokens = rng.integers(1, cpu.config.vocab_size, 3).tolist()
        before = emulator.graph_launches
        want = cpu.forward_batch([Segment([t], c, last_only=True) for t, c in zip(tokens, c_caches)])
        got = gpu.forward_batch([Segment([t], c, last_only=True) for t, c in zip(tokens, g_caches)])
        for w, g in zip(want, got):
            assert g.shape == w.shape == (1, cpu.config.vocab_size)
            assert g.argmax() == w.argmax() and np.abs(g - w).max() <= 1e-3 * np.abs(w).max()
        assert emulator.graph_launches == before + 1  # the batch's graph: captured at the first step
    (batch,) = gpu.backend.batches.values()
    launched = [(launch.name, grid) for launch, grid in emulator.graphs[batch.plan.graphs[3, 0][0]]]
    names = [name for name, _ in launched]
    layer = ["matmul3_q4_0_q8_0", *["rope_store"] * 3, *["attention"] * 3, "matmul_q4_0", "matmul_gate_q4_0", "matmul_q8_0"]
    assert names == ["embed_q8_0", *layer * layers, "rmsnorm", "matmul_q8_0"]
    assert all(grid[1] == 1 for name, grid in launched if name.startswith("attention"))  # one token each
    assert [c.n for c in g_caches] == [5 + 3, 20 + 3, 9 + 3]
    # a prompt beside two decode steps: the prompt alone, the two as a batch of their own
    tokens = rng.integers(1, cpu.config.vocab_size, 6).tolist()
    segments = lambda cs: [Segment(tokens[:4], cs[0], last_only=True), Segment([tokens[4]], cs[1], last_only=True),  # noqa: E731
                           Segment([tokens[5]], cs[2], last_only=True)]
    for w, g in zip(cpu.forward_batch(segments(c_caches)), gpu.forward_batch(segments(g_caches))):
        assert g.argmax() == w.argmax() and np.abs(g - w).max() <= 1e-3 * np.abs(w).max()
    assert len(gpu.backend.batches) == 2
    del caches, c_caches, g_caches, segments
    gc.collect()
    assert not gpu.backend.batches  # a context's batch plans go with it (they hold its KV cache)


def test_a_decode_step_runs_the_fused_launches(models, emulator):
    """A LLaMA decode step launches 6 kernels a layer: q/k/v in one matvec with the attention's
    pre-norm in its prologue, RoPE and the cache's new rows in one, the attention, o with the
    residual add in its epilogue, gate/up with the feed-forward's pre-norm in its prologue and
    the SiLU gate applied as they are stored, down with its residual add (17 unfused); a
    prefill runs the same graph on tensor cores (the norms, GEMMs, separate gate op)."""
    cpu, gpu = models("llama", "q4_0")
    cache = gpu.new_cache(32)
    gpu.forward(list(range(1, 21)), cache)
    prefill = [name for name, _, _ in emulator.launches]
    assert not any(n.startswith("matmul3") for n in prefill) and "silu_mul" in prefill and "add" not in prefill
    assert prefill.count("rmsnorm") == 2 * cpu.config.n_layers + 1
    gpu.forward([3], cache)
    plan = cache.store.plan
    names = [launch.name for launch, _ in emulator.graphs[plan.graphs[1, 0][0]]]
    # quant/policy.py's q4_0: k, v, down and the (tied) embeddings in q8_0
    layer = ["matmul3_q4_0_q8_0", "rope_store", "attention", "matmul_q4_0", "matmul_gate_q4_0", "matmul_q8_0"]
    assert names == ["embed_q8_0", *layer * cpu.config.n_layers, "rmsnorm", "matmul_q8_0"]
    accumulate = [launch.args[-1].value for launch, _ in emulator.graphs[plan.graphs[1, 0][0]]
                  if launch.name.startswith("matmul_q")]
    assert accumulate == [1, 1] * cpu.config.n_layers + [0]
    norms = [(launch.name, launch.args[5].value) for launch, _ in emulator.graphs[plan.graphs[1, 0][0]]
             if launch.name.startswith(("matmul3", "matmul_gate"))]
    assert all(ptr != 0 for _, ptr in norms) and len(norms) == 2 * cpu.config.n_layers  # each with its norm


def test_the_folded_norm_is_the_cpus():
    """The twin of the pre-norm a fused matvec folds in gives the CPU's rmsnorm bit for bit
    (squares summed in double, the scale rounded to f32, (x * scale) * w in f32)."""
    from cuda_emulator import prenormed
    from llmrun.backends import cpu
    rng = np.random.default_rng(11)
    for d in (64, 2048, 8192):
        x = (rng.standard_normal((5, d)) * rng.uniform(0.01, 100, (5, 1))).astype(np.float32)
        w = rng.standard_normal(d).astype(np.float32)
        np.testing.assert_array_equal(prenormed(x, w, 1e-5), cpu.rmsnorm(x, w, 1e-5))


@pytest.mark.parametrize("type", TYPES)
def test_fused_matvecs_match_the_products(emulator, type):
    """matmul3 (three matrices of one input), matmul_gate (the gate in the epilogue) and the
    residual add of matmul, against float64, for 1 to 16 tokens."""
    from llmrun.backends import cuda
    t = qtype(type)
    rng = np.random.default_rng(3)
    k, rows = -(-96 // t.block_size) * t.block_size, (48, 16, 32)
    ws = [_tensor(rng.standard_normal((r, k)).astype(np.float32), t) for r in rows]
    want_w = [dequantize(b, t, k).astype(np.float64) for _, b in ws]
    dev = cuda.Device()
    ms = [dev.upload(w) for w, _ in ws]
    for T, folded in ((1, False), (5, False), (16, False), (1, True), (7, True), (16, True), (20, True)):
        x = rng.standard_normal((T, k)).astype(np.float32)
        outs = [dev.zeros(T * r * 4) for r in rows]
        step = dev.buffer(np.array([0, T, 0, 0], np.uint32))
        plan = cuda.Plan(dev, step)
        xb = dev.buffer(x)
        norm = None
        if folded:  # the products of RMSNorm(x) * nw: in the matvec's prologue, or the rmsnorm op then GEMMs
            from cuda_emulator import prenormed
            nw = rng.standard_normal(k).astype(np.float32)
            xb, norm = dev.zeros(T * k * 4), (xb, dev.buffer(nw), 1e-5)  # xb: h, written for the GEMMs only
            x = prenormed(x, nw, 1e-5)
        plan.matmul_qkv(*ms, xb, *outs, norm=norm)
        g, u = ms[0], dev.upload(_tensor(rng.standard_normal((48, k)).astype(np.float32), t)[0])
        gate, up = dev.zeros(T * 48 * 4), dev.zeros(T * 48 * 4)
        plan.matmul_gate(g, u, xb, gate, up, "silu_mul", norm=norm)
        res0 = rng.standard_normal((T, 48)).astype(np.float32)
        res = dev.buffer(res0)
        plan.matmul(ms[0], dev.buffer(x), res, accumulate=True)
        assert plan.run(T) == (3 if T <= cuda.GEMM_FROM else 9)  # + two rmsnorm ops, 5 GEMMs, the gate op
        bound = BOUND["matmul" if T <= cuda.GEMM_FROM else "gemm"]
        for out, r, w in zip(outs, rows, want_w):
            got = dev.read(out, T * r * 4).view(np.float32).reshape(T, r)
            want = x.astype(np.float64) @ w.T
            assert np.abs(got - want).max() <= bound * np.abs(want).max()
        wu = emulator.weights(u.parts[0][0].ptr, type, 48, k)
        gs, us = x.astype(np.float64) @ want_w[0].T, x.astype(np.float64) @ wu.T
        want = gs / (1 + np.exp(-gs)) * us
        got = dev.read(gate, T * 48 * 4).view(np.float32).reshape(T, 48)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        got = dev.read(res, T * 48 * 4).view(np.float32).reshape(T, 48)
        want = res0 + x.astype(np.float64) @ want_w[0].T
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_device_memory_is_freed_with_its_cache(models, emulator):
    _, gpu = models("llama", "q8_0")
    weights = len(emulator.memory)
    cache = gpu.new_cache(32)
    gpu.forward(list(range(20)), cache)
    gpu.forward([3], cache)
    assert len(emulator.memory) > weights
    del cache
    gc.collect()
    assert len(emulator.memory) == weights


def test_a_cache_the_device_cannot_hold_is_one_line(models, emulator):
    from llmrun.errors import ContextError
    _, gpu = models("llama", "q8_0")
    emulator.capacity = sum(a.nbytes for a in emulator.memory.values()) + (1 << 20)
    with pytest.raises(ContextError, match="cannot hold a KV cache of 100000 positions"):
        gpu.new_cache(100000)


def test_an_f16_kv_cache_is_refused_on_the_gpu(tiny_models, emulator):
    """--kv-type f16 is the CPU's: a GPU backend says so in one line, at load and at new_cache."""
    import llmrun
    from llmrun.errors import SettingError
    with pytest.raises(SettingError, match="the cuda backend keeps its KV cache in f32, not f16"):
        llmrun.load(tiny_models["llama", "q8_0"], backend="cuda", kv_type="f16")
    gpu = llmrun.load(tiny_models["llama", "q8_0"], backend="cuda")
    with pytest.raises(SettingError, match="keeps its KV cache in f32, not f16"):
        gpu.backend.new_cache(8, "f16")


def test_old_gpus_and_missing_kernels_are_one_line(kernels, monkeypatch, tiny_models):
    import llmrun
    from llmrun.backends import cuda
    from llmrun.errors import LlmrunError
    monkeypatch.setattr(cuda, "Driver", lambda: Emulator(kernels, capability=(7, 0)))
    monkeypatch.setattr(cuda, "fatbin", lambda: b"emulated")
    with pytest.raises(LlmrunError, match="compute capability 7.0; the CUDA kernels need 7.5"):
        llmrun.load(tiny_models["llama", "q8_0"], backend="cuda")


def test_without_the_driver_the_backend_is_one_line(tiny_models):
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has the NVIDIA driver: tests/test_cuda_device.py runs the backend")
    except OSError:
        pass
    r = run_cli("generate", tiny_models["llama", "q8_0"], "-p", "x", "--backend", "cuda")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["llmrun: error: the cuda backend needs the NVIDIA driver "
                                             "(libcuda.so.1 was not found); use --backend cpu or webgpu"]
    r = run_cli("info", "--backends", check=True)
    assert "cuda:    unavailable: the cuda backend needs the NVIDIA driver" in r.stdout
