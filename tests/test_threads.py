"""The kernels' thread pool: results bit-identical for any thread count, the set_threads /
get_threads API and LLMRUN_THREADS, no deadlock over thousands of small jobs, and the real
SmolLM2 giving the same logits on 1 and 2 threads."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import llmrun._kernels as K
from llmrun.quant import reference as ref
from llmrun.quant.layout import X16, interleave
from llmrun.quant.types import F16, Q4_1, TYPES

ALL_TYPES = list(TYPES.values())  # every type the CPU runs, from the table in quant/types.py
COUNTS = [1, 2, 3, 8]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = K.get_threads()
    yield
    K.set_threads(n)


def run(code: str, env_extra: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


# --- bit-identical results ---------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("t", [1, 9])
@pytest.mark.parametrize("n", [67, 1000])
def test_matmul_bit_identical_for_any_thread_count(qtype, t, n):
    rng = np.random.default_rng(n * 100 + t)
    k = 320  # even q4_0 at N=67, T=1 (12 KB) is above the size matmul runs unthreaded
    if k % qtype.block_size:  # super-blocks (q4_k): five of them
        k = 5 * qtype.block_size
    w = ref.quantize((rng.standard_normal((n, k)) * k ** -0.5).astype(np.float32), qtype).tobytes()
    x = rng.standard_normal((t, k)).astype(np.float32)
    outs = []
    for threads in COUNTS:
        K.set_threads(threads)
        out = np.full((t, n), np.nan, np.float32)
        K.matmul(out, x, w, qtype.id)
        outs.append(out)
    assert not np.isnan(outs[0]).any()
    for threads, out in zip(COUNTS[1:], outs[1:]):
        assert out.tobytes() == outs[0].tobytes(), f"{threads} threads differ from 1"


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t.x16], ids=lambda t: t.name)
@pytest.mark.parametrize("t", [1, 9, 70])
def test_x16_matmul_bit_identical_for_any_thread_count(qtype, t):
    """The X16 layout's groups split among the threads (and 70 tokens: past a 64-token pass)."""
    rng = np.random.default_rng(t)
    n, k = 400, 2 * max(256, qtype.block_size)  # 25 groups, enough work to thread at T = 1
    w = ref.quantize((rng.standard_normal((n, k)) * k ** -0.5).astype(np.float32), qtype)
    w = interleave(w, qtype).tobytes()
    x = rng.standard_normal((t, k)).astype(np.float32)
    outs = []
    for threads in COUNTS:
        K.set_threads(threads)
        out = np.full((t, n), np.nan, np.float32)
        K.matmul(out, x, w, qtype.id, X16)
        outs.append(out.tobytes())
    assert not np.isnan(np.frombuffer(outs[0], np.float32)).any()
    assert all(o == outs[0] for o in outs[1:])


@pytest.mark.parametrize("qtype", [Q4_1, F16], ids=lambda t: t.name)
def test_matmul_long_prefill_bit_identical(qtype):
    """Enough tokens that the activation quantisation is split across the pool too, and past one
    64-token chunk of matmul (float weights: gemm tiles of rows and tokens, rows split in items)."""
    rng = np.random.default_rng(5)
    t, n, k = 70, 131, 256
    w = ref.quantize(rng.standard_normal((n, k)).astype(np.float32), qtype).tobytes()
    x = rng.standard_normal((t, k)).astype(np.float32)
    outs = []
    for threads in COUNTS:
        K.set_threads(threads)
        out = np.empty((t, n), np.float32)
        K.matmul(out, x, w, qtype.id)
        outs.append(out.tobytes())
    assert all(o == outs[0] for o in outs)


# Decode (one token: its heads are split between threads) and prefill (runs of 4 tokens, or of
# one when there are too few for the threads), each large enough to be threaded, and a first
# token small enough to run on the caller alone.
@pytest.mark.parametrize("t,n_past", [(1, 0), (1, 300), (7, 9), (13, 5), (40, 200), (70, 0)])
def test_attention_bit_identical_for_any_thread_count(t, n_past):
    rng = np.random.default_rng(t * 31 + n_past)
    hq, hkv, hd, n_ctx = 9, 3, 64, 320
    q = rng.standard_normal((t, hq, hd)).astype(np.float32)
    kc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)  # head-major, as the kernels take it
    vc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    outs = []
    for threads in COUNTS:
        K.set_threads(threads)
        out = np.full_like(q, np.nan)
        K.attention(out, q, kc, vc, n_past)
        outs.append(out.tobytes())
    assert not np.isnan(np.frombuffer(outs[0], np.float32)).any()
    assert all(o == outs[0] for o in outs)


# --- API -----------------------------------------------------------------------------------------

def test_set_get_round_trip():
    for n in (1, 2, 3, 8, 1, 512):
        K.set_threads(n)
        assert K.get_threads() == n
    assert K.default_threads() >= 1


@pytest.mark.parametrize("bad", [0, -1, 513, 2 ** 70, True])
def test_invalid_counts_raise_value_error(bad):
    before = K.get_threads()
    with pytest.raises(ValueError):
        K.set_threads(bad)
    assert K.get_threads() == before


@pytest.mark.parametrize("bad", [1.5, "2", None])
def test_non_integer_counts_raise_type_error(bad):
    with pytest.raises(TypeError):
        K.set_threads(bad)


def test_llmrun_threads_env_sets_the_count():
    r = run("import llmrun._kernels as K; print(K.get_threads())", {"LLMRUN_THREADS": "3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"


def test_default_is_the_physical_cores():
    r = run("import llmrun._kernels as K; print(K.get_threads(), K.default_threads())", {"LLMRUN_THREADS": ""})
    assert r.returncode == 0, r.stderr
    got, default = map(int, r.stdout.split())
    assert got == default
    assert 1 <= default <= (os.cpu_count() or 1)


@pytest.mark.parametrize("bad", ["0", "abc", "-2", "4x", "100000"])
def test_invalid_llmrun_threads_is_an_import_error(bad):
    r = run("import llmrun._kernels", {"LLMRUN_THREADS": bad})
    assert r.returncode != 0
    assert "ImportError" in r.stderr and f"LLMRUN_THREADS={bad}" in r.stderr, r.stderr


# --- robustness ------------------------------------------------------------------------------------

STRESS = """
import threading, numpy as np, llmrun._kernels as K
from llmrun.quant import reference as ref
from llmrun.quant.types import Q4_0, F32
rng = np.random.default_rng(0)
# small, but above the size that matmul runs on the caller alone (4 KiB of weights)
w = ref.quantize(rng.standard_normal((37, 256)).astype(np.float32), Q4_0).tobytes()
wf = rng.standard_normal((5, 256)).astype(np.float32)
x = rng.standard_normal((1, 256)).astype(np.float32)
out, outf = np.empty((1, 37), np.float32), np.empty((1, 5), np.float32)
K.matmul(out, x, w, Q4_0.id); want = out.copy()
for i in range(4000):
    if i % 500 == 0:
        K.set_threads(1 + (i // 500) % 4)   # the pool is remade under load
    K.matmul(out, x, w, Q4_0.id)
    K.matmul(outf, x, wf, F32.id)
    assert out.tobytes() == want.tobytes()
# two Python threads in kernels at once (the GIL released): one runs on the pool, one alone
def loop():
    o = np.empty((1, 37), np.float32)
    for _ in range(2000):
        K.matmul(o, x, w, Q4_0.id)
        assert o.tobytes() == want.tobytes()
ts = [threading.Thread(target=loop) for _ in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
print("ok")
"""


def test_stress_many_tiny_matmuls_no_deadlock():
    r = run(STRESS, {"LLMRUN_THREADS": "4"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_pool_survives_fork():
    code = """
import os, numpy as np, llmrun._kernels as K
x = np.ones((1, 64), np.float32); w = np.ones((64, 64), np.float32); out = np.empty((1, 64), np.float32)
K.matmul(out, x, w, 0)          # the parent's pool is running
pid = os.fork()
if pid == 0:
    K.matmul(out, x, w, 0)      # the child must make its own workers, not wait for the parent's
    os._exit(0 if (out == 64).all() else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    r = run(code, {"LLMRUN_THREADS": "2"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


# --- the real model ---------------------------------------------------------------------------------

def test_smollm2_logits_bit_identical_on_1_and_2_threads(smollm2_hf, tmp_path):
    import llmrun
    from llmrun.models import convert
    path = tmp_path / "q4_0.llmr"
    convert(str(smollm2_hf["float32"]), str(path), "q4_0")
    model = llmrun.load(path)
    ids = model.tokenizer.encode("The capital of France is")
    logits = {}
    for threads in (1, 2):  # prefill (every position), then three greedy decode steps
        K.set_threads(threads)
        cache = model.new_cache(len(ids) + 3)
        steps = [np.array(model.forward(ids, cache))]
        for _ in range(3):
            steps.append(np.array(model.forward([int(steps[-1][-1].argmax())], cache)))
        logits[threads] = b"".join(s.tobytes() for s in steps)
    assert logits[1] == logits[2]
