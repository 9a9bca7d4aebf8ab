"""Every SIMD kernel path this CPU runs, held to the scalar path and to the numpy reference.

The ISA is chosen once, at import (LLMRUN_ISA), so each path runs in its own subprocess: this
file, run as a script, computes every case below with the kernels of its LLMRUN_ISA and saves
the outputs to an .npz; the tests compare those files. All paths run at once, in parallel.

Sizes are awkward on purpose: N rows that fill no tile (1, 3, 17, 67), K of 1, 3 and 65
blocks, 1 and 7 tokens, and for float weights K that is no multiple of 8 or 16 (a vector
tail)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llmrun._kernels as K
from llmrun.quant import reference as ref
from llmrun.quant.layout import X16, interleave
from llmrun.quant.types import Q6_K, TYPES

sys.path.insert(0, str(Path(__file__).parent))
from test_kernels import (FLOAT_DOT_BOUND, QUANT_DOT_BOUND, QUANT_DOT_SIMD_BOUND, RMSNORM_BOUND,  # noqa: E402
                          SILU_BOUND, X16_DOT_BOUND, edge_rows, matmul_magnitude, rand, rng_for)

ALL_TYPES = list(TYPES.values())  # every type the CPU runs, from the table in quant/types.py
QUANTISED = [t for t in ALL_TYPES if t.quantized]
X16_TYPES = [t for t in ALL_TYPES if t.x16]
SIMD_ISAS = ["avx2", "avx512", "avx512vnni"]  # x86-64; each needs the CPU features below
CPU_FLAGS = {"avx2": {"avx2", "fma", "f16c"},  # /proc/cpuinfo spellings
             "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"},
             "avx512vnni": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}}

ROWS = [1, 3, 17, 67]
TOKENS = [1, 7]
K_QUANT = [32, 96, 2080]
K_FLOAT = K_QUANT + [5, 33, 100]  # below one vector, and vector tails of 1 and 4 (or 4 and 4)

# --- error bounds ------------------------------------------------------------------------------
# Quantised weights on SIMD paths: QUANT_DOT_SIMD_BOUND, derived in test_kernels.py.


#
# Float weights: the SIMD kernels sum the K products in another order (several FMA accumulators,
# then a tree). For any order, K products (one rounding each, none when fused) and at most K - 1
# additions, each off by u times a partial sum bounded by M = sum_k |x_k w_k|, plus the final
# rounding give |err| <= (K + 1) u M against float64: FLOAT_DOT_BOUND(K) = (K + 2) u (one u of
# slack), the scalar kernel's own bound. Scalar and SIMD are each within it of float64, so
# within twice it of each other.
FLOAT_VS_SCALAR = 2

# The q16_a quantiser does the scalar f32 operations (max, one division, one reciprocal, one
# product, roundf per element, one product for s): its bytes must be the scalar's: bound 0.
# rope is the scalar kernel in every table: bound 0; rmsnorm, silu_mul and gelu_mul are held to float64
# (test_rmsnorm_silu_mul_and_gelu_mul_within_their_bounds). Attention has
# SIMD kernels, each held to float64 on every path in test_kernels.py (test_attention_every_path).


# --- the cases, computed by each path in its subprocess -----------------------------------------

def k_for(t, ks):
    """Row lengths for type t: ks for 32-element blocks; for a super-block type (q4_k, 256), one,
    three and nine blocks (the last past the tiles' and unrolls' strides)."""
    return ks if t.block_size <= 32 else [t.block_size, 3 * t.block_size, 9 * t.block_size]


GET_ROWS_K = {32: 96, 256: 256}  # get_rows' row length per block size


def matmul_cases():
    for t in ALL_TYPES:
        for k in k_for(t, K_QUANT) if t.quantized else K_FLOAT:
            for n in ROWS:
                for tokens in TOKENS:
                    yield t, tokens, n, k


# Quantised matmuls run tokens in tiles of LLMR_TILE (4) where the path has a tile kernel and the
# rest one by one; float weights run gemm tiles of 4 rows x 6 tokens (AVX-512, NEON) or 4 x 3
# (AVX2), a last partial tile with rows or tokens repeated, and one or two last tokens alone.
# Token counts around the tiles (none full, exact tiles, tiles plus a remainder), for floats
# also past matmul's 64-token chunk; 3 rows (no whole tile) and 17 (tiles and one more).
TILE_TOKENS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 17]
TILE_ROWS = [3, 17]
TILE_K = [32, 96, 2080]


def tile_cases():
    for t in ALL_TYPES:
        for k in k_for(t, TILE_K) if t.quantized else K_FLOAT:
            for n in TILE_ROWS:
                for tokens in TILE_TOKENS if t.quantized else TILE_TOKENS + [70]:
                    yield t, tokens, n, k


# The X16 layout: whole groups of 16 rows (one, three); token counts around the 4-token tile and
# past the 64-token chunk of a pass.
X16_TOKENS = [1, 2, 3, 4, 5, 7, 9, 17, 70]
X16_ROWS = [16, 48]


def x16_cases():
    for t in X16_TYPES:
        for k in k_for(t, TILE_K):
            for n in X16_ROWS:
                for tokens in X16_TOKENS:
                    if tokens < 70 or k < 2080:
                        yield t, tokens, n, k


def matmul_inputs(t, tokens, n, k):
    rng = rng_for("isa matmul", t.name, tokens, n, k)
    x = rand(rng, tokens, k, scale=2.0)
    x[:, : min(k, 3)] *= 50.0  # an outlier or three, which sets an activation block's scale
    return x, ref.quantize(rand(rng, n, k, scale=0.1), t)


def q6_k_extremes():
    """q6_k's largest integer terms: every sub-block scale -128 and every quant 0 (q - 32 = -32),
    so each weight's sc * (q - 32) is 4096, against activations at +-32767 (constant rows): an x86
    quad lane then holds 16 such products, 2,147,418,112, just under 2^31, and a q16_a block's
    sum, twice that, needs scalar's int64. Rows of alternating signs cancel instead. 5 tokens: a
    tile and one more; 3 super-blocks."""
    blk = np.zeros((3, 3, Q6_K.type_size), np.uint8)  # ql = qh = 0: every q is 0
    blk[..., 192:208] = np.array([-128], np.int8).view(np.uint8)
    blk[..., 208:210] = np.array([1e-3], np.float16).view(np.uint8)
    blk[1, :, 208:210] = np.array([-2.5], np.float16).view(np.uint8)
    x = np.full((5, 3 * 256), 3.0, np.float32)
    x[1] = -3.0
    x[2, ::2] = -3.0
    x[3, :256] = 1e-3
    return x, blk.reshape(3, -1)


def q6_k_extremes_x16(w):
    """The extremes' three rows repeated to a group of 16, for the X16 kernels, whose int32 lanes
    hold sc (q - 32) qa products, 16 to a lane: 2,147,418,112 < 2^31 at these values."""
    return np.tile(w, (6, 1))[:16]


def q16a_inputs():
    rng = rng_for("isa q16a")
    scales = np.repeat(10.0 ** rng.uniform(-4, 4, (5, 65)), 32, axis=-1)  # a scale per block
    # What a corrupt file or an overflowing model feeds the quantiser: infinities, and blocks
    # so small that 1/d is not finite (llmr_q16_a_inverse), beside ordinary blocks.
    odd = rng.standard_normal((4, 4 * 32)).astype(np.float32)
    odd[0, 5], odd[1, 40], odd[1, 41] = np.inf, -np.inf, np.inf
    odd[2, 64:96] = 1e-40
    odd[3, :32] = 3e-39
    odd[3, 32 + 3], odd[3, 64 + 17], odd[3, 96:128] = np.nan, np.nan, np.nan
    return {"random": (rng.standard_normal((5, 65 * 32)) * scales).astype(np.float32),
            "edges": edge_rows(), "non-finite": odd}


def other_inputs():
    rng = rng_for("isa ops")
    return {"x": rand(rng, 7, 100, scale=3.0), "w": rand(rng, 100), "q": rand(rng, 7, 6, 16),
            "gate": rand(rng, 7, 33, scale=4.0),
            "pos": np.arange(3, 10, dtype=np.int32),
            "inv_freq": (10000.0 ** (-np.arange(0, 16, 2) / 16)).astype(np.float32)}


def compute_all() -> dict[str, np.ndarray]:
    """Every output of this process's kernel path, by name."""
    out = {"isa": np.array(K.isa()), "prefetch": np.array(K.prefetch())}
    for t, tokens, n, k in matmul_cases():
        x, w = matmul_inputs(t, tokens, n, k)
        y = np.empty((tokens, n), np.float32)
        K.matmul(y, x, w, t.id)
        out[f"matmul/{t.name}/{tokens}/{n}/{k}"] = y
    for t, tokens, n, k in tile_cases():
        x, w = matmul_inputs(t, tokens, n, k)
        y = np.empty((tokens, n), np.float32)
        K.matmul(y, x, w, t.id)
        out[f"tile/{t.name}/{tokens}/{n}/{k}"] = y
        y1 = np.empty((tokens, n), np.float32)
        for i in range(tokens):  # one token per call: never a token tile (for floats, tiles of rows)
            K.matmul(y1[i], x[i], w, t.id)
        out[f"single/{t.name}/{tokens}/{n}/{k}"] = y1
        y1 = np.empty((tokens, n), np.float32)
        K._matmul_vec_dot(y1, x, w, t.id)  # each output one vec_dot call: no tile at all
        out[f"vec_dot/{t.name}/{tokens}/{n}/{k}"] = y1
    for t, tokens, n, k in x16_cases():
        x, w = matmul_inputs(t, tokens, n, k)
        y = np.empty((tokens, n), np.float32)
        K.matmul(y, x, interleave(w, t), t.id, X16)
        out[f"x16/{t.name}/{tokens}/{n}/{k}"] = y.copy()  # a copy: y is reused below
        if tokens > 1 and k < 2080:  # token by token (one kernel call each): a tiling must not change a bit
            y1 = np.empty((1, n), np.float32)
            single = np.empty_like(y)
            for i in range(tokens):
                K.matmul(y1, x[i:i + 1], interleave(w, t), t.id, X16)
                single[i] = y1[0]
            out[f"x16-single/{t.name}/{tokens}/{n}/{k}"] = single
        K.matmul(y, x, w, t.id)
        out[f"x16-as-rows/{t.name}/{tokens}/{n}/{k}"] = y.copy()
        rows = np.empty((3, k), np.float32)
        K.get_rows(rows, interleave(w, t), t.id, np.array([n - 1, 0, 5], np.int32), X16)
        out[f"x16-get_rows/{t.name}/{tokens}/{n}/{k}"] = rows
    x, w = q6_k_extremes()
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    K.matmul(y, x, w, Q6_K.id)
    out["q6k-extremes"] = y
    w16 = q6_k_extremes_x16(w)
    y = np.empty((x.shape[0], 16), np.float32)
    K.matmul(y, x, interleave(w16, Q6_K), Q6_K.id, X16)
    out["q6k-extremes-x16"] = y
    for name, x in q16a_inputs().items():
        q = np.empty((x.shape[0], x.shape[1] // 32 * ref.Q16A_BYTES), np.uint8)
        K.quantize_q16a(q, x)
        out[f"q16a/{name}"] = q
        q = np.empty((x.shape[0], x.shape[1] // 32 * ref.Q16B_BYTES), np.uint8)
        K.quantize_q16b(q, x)
        out[f"q16b/{name}"] = q
    ids = np.array([2, 0, 66, 2], np.int32)
    for t in ALL_TYPES:
        kg = GET_ROWS_K.get(t.block_size, 96)
        _, w = matmul_inputs(t, 1, 67, kg)
        rows = np.empty((len(ids), kg), np.float32)
        K.get_rows(rows, w, t.id, ids)
        out[f"get_rows/{t.name}"] = rows
    a = other_inputs()
    y = np.empty_like(a["x"])
    K.rmsnorm(y, a["x"], a["w"], 1e-5)
    out["rmsnorm"] = y
    y = a["q"].copy()
    K.rope(y, a["pos"], a["inv_freq"])
    out["rope"] = y
    y = np.empty_like(a["gate"])
    K.silu_mul(y, a["gate"], a["x"][:, :33].copy())
    out["silu_mul"] = y
    y = np.empty_like(a["gate"])
    K.gelu_mul(y, a["gate"], a["x"][:, :33].copy())
    out["gelu_mul"] = y
    return out


if __name__ == "__main__":  # the subprocess: python tests/test_isa.py OUT.npz
    np.savez(sys.argv[1], **compute_all())
    sys.exit(0)


# --- the tests ----------------------------------------------------------------------------------

def cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else None


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """isa -> its outputs, for scalar and every SIMD path this CPU runs (all started at once), and
    "isa:mode" -> a SIMD path's outputs under the prefetch mode this CPU does not choose."""
    tmp = tmp_path_factory.mktemp("isa")
    other = {"nta": "l2", "l2": "nta"}[K.prefetch()]
    runs = {isa: {"LLMRUN_ISA": isa} for isa in ["scalar"] + [i for i in SIMD_ISAS if i in K.isas()]}
    runs.update({f"{isa}:{other}": {"LLMRUN_ISA": isa, "LLMRUN_PREFETCH": other} for isa in SIMD_ISAS if isa in runs})
    procs = {}
    for key, env in runs.items():
        procs[key] = subprocess.Popen([sys.executable, __file__, str(tmp / f"{key}.npz")], env={**os.environ, **env},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for key, p in procs.items():
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, f"{runs[key]}: {err}"
        with np.load(tmp / f"{key}.npz") as f:
            out[key] = dict(f)
    return out


def needs(isa):
    if isa not in K.isas():
        pytest.skip(f"this CPU cannot run {isa}")


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_this_cpu_lists_the_isas_it_has(isa):
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to say what this CPU has")
    if platform.machine() not in ("x86_64", "AMD64"):
        assert isa not in K.isas()
        pytest.skip("not x86-64: no x86 kernels are built")
    if not CPU_FLAGS[isa] <= flags:
        assert isa not in K.isas()
        pytest.skip(f"this CPU lacks {sorted(CPU_FLAGS[isa] - flags)}")
    assert isa in K.isas()
    assert K.isas().index(isa) < K.isas().index("scalar")


def test_best_isa_is_the_default():
    assert K.isa() == K.isas()[0]


def test_unknown_isa_fails_listing_the_known_ones():
    env = {**os.environ, "LLMRUN_ISA": "avx1024"}
    r = subprocess.run([sys.executable, "-c", "import llmrun._kernels"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "LLMRUN_ISA=avx1024" in r.stderr and "unknown" in r.stderr
    for isa in K.isas():
        assert isa in r.stderr


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_forced_isa_runs(results, isa):
    needs(isa)
    assert str(results[isa]["isa"]) == isa


def test_prefetch_mode_is_the_cpus_unless_forced():
    """AMD's cores take NTA prefetches, other x86 cores L2 ones (kernels/cpu/prefetch_x86.h)."""
    if platform.machine() in ("x86_64", "AMD64"):
        amd = "AuthenticAMD" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
        if amd is not None:
            assert K.prefetch() == ("nta" if amd else "l2")
    for mode in ("nta", "l2"):
        r = subprocess.run([sys.executable, "-c", "import llmrun._kernels as K; print(K.prefetch())"],
                           env={**os.environ, "LLMRUN_PREFETCH": mode}, capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == mode, r.stderr
    r = subprocess.run([sys.executable, "-c", "import llmrun._kernels"], env={**os.environ, "LLMRUN_PREFETCH": "t0"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "LLMRUN_PREFETCH=t0: unknown prefetch mode; known: nta, l2" in r.stderr


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_prefetch_modes_give_the_same_bits(results, isa):
    """A prefetch changes when lines arrive, never what a kernel computes: every output of the
    other mode is the default mode's, bit for bit (and it ran in that mode)."""
    needs(isa)
    (key,) = [k for k in results if k.startswith(f"{isa}:")]
    other = results[key]
    assert str(other["prefetch"]) == key.split(":")[1] != str(results[isa]["prefetch"])
    assert other.keys() == results[isa].keys()
    for name, value in results[isa].items():
        if name not in ("isa", "prefetch"):
            np.testing.assert_array_equal(other[name], value, err_msg=name)


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_quantize_q16a_and_q16b_are_byte_identical(results, isa):
    needs(isa)
    for name, x in q16a_inputs().items():
        want = ref.q16a_to_bytes(*ref.quantize_q16a(x))
        np.testing.assert_array_equal(results["scalar"][f"q16a/{name}"], want)
        np.testing.assert_array_equal(results[isa][f"q16a/{name}"], want, err_msg=name)
        want = ref.q16b_to_bytes(*ref.quantize_q16a(x))
        np.testing.assert_array_equal(results["scalar"][f"q16b/{name}"], want)
        np.testing.assert_array_equal(results[isa][f"q16b/{name}"], want, err_msg=name)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_matmul(results, isa, t):
    needs(isa)
    for tt, tokens, n, k in matmul_cases():
        if tt is not t:
            continue
        key = f"matmul/{t.name}/{tokens}/{n}/{k}"
        got, scalar = results[isa][key].astype(np.float64), results["scalar"][key].astype(np.float64)
        x, w = matmul_inputs(t, tokens, n, k)
        mag = matmul_magnitude(w, t, x)
        bound = (QUANT_DOT_SIMD_BOUND(k // 32) if t.quantized else FLOAT_DOT_BOUND(k)) * mag
        err = np.abs(got - ref.matmul(w, t, x))
        assert (err <= bound).all(), f"{key}: max err {err.max():.3g}, bound {bound.flat[err.argmax()]:.3g}"
        if t.quantized:
            err = np.abs(got - scalar)
            vs = (QUANT_DOT_SIMD_BOUND(k // 32) + QUANT_DOT_BOUND(k // 32)) * mag
            assert (err <= vs).all(), f"{key}: vs scalar, max err {err.max():.3g}"
        else:
            err = np.abs(got - scalar)
            assert (err <= FLOAT_VS_SCALAR * bound).all(), f"{key}: vs scalar, max err {err.max():.3g}"


@pytest.mark.parametrize("isa", ["scalar"] + SIMD_ISAS)
@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_token_tiles_equal_single_token(results, isa, t):
    """Each output of a tile (tokens; for float weights rows x tokens) is the same path's vec_dot's
    arithmetic: bit-identical to one vec_dot call per output and to one token per matmul, whatever
    the token and row counts, and within the bounds of scalar and of the reference."""
    needs(isa)
    for tt, tokens, n, k in tile_cases():
        if tt is not t:
            continue
        key = f"tile/{t.name}/{tokens}/{n}/{k}"
        got = results[isa][key]
        np.testing.assert_array_equal(got, results[isa][f"single/{t.name}/{tokens}/{n}/{k}"], err_msg=key)
        np.testing.assert_array_equal(got, results[isa][f"vec_dot/{t.name}/{tokens}/{n}/{k}"], err_msg=key)
        x, w = matmul_inputs(t, tokens, n, k)
        mag = matmul_magnitude(w, t, x)
        if t.quantized:
            bound = (QUANT_DOT_SIMD_BOUND(k // 32) if isa != "scalar" else QUANT_DOT_BOUND(k // 32)) * mag
            vs_scalar = bound + QUANT_DOT_BOUND(k // 32) * mag
        else:
            bound = FLOAT_DOT_BOUND(k) * mag
            vs_scalar = FLOAT_VS_SCALAR * bound
        err = np.abs(got.astype(np.float64) - ref.matmul(w, t, x))
        assert (err <= bound).all(), f"{key}: max err {err.max():.3g}"
        err = np.abs(got.astype(np.float64) - results["scalar"][key].astype(np.float64))
        assert (err <= vs_scalar).all(), f"{key}: vs scalar, max err {err.max():.3g}"


@pytest.mark.parametrize("isa", ["scalar"] + SIMD_ISAS)
def test_q6_k_largest_terms_stay_exact(results, isa):
    """No integer sum of a q6_k kernel wraps: at its largest terms every path stays within its
    bound (a wrapped int32 would be off by 2^32 d da)."""
    needs(isa)
    x, w = q6_k_extremes()
    got = results[isa]["q6k-extremes"].astype(np.float64)
    bound = (QUANT_DOT_BOUND if isa == "scalar" else QUANT_DOT_SIMD_BOUND)(x.shape[1] // 32)
    _, wq = ref.q6_k_fields(w.reshape(3, -1, Q6_K.type_size))
    qa = ref.quantize_q16a(x)[2]
    assert (wq[0, 0, 0].astype(np.int64) * qa[0, 0]).sum() == 32 * 4096 * 32767 > 2 ** 31  # past int32
    want = ref.matmul(w, Q6_K, x)
    assert (np.abs(got - want) <= bound * matmul_magnitude(w, Q6_K, x)).all()
    w16 = q6_k_extremes_x16(w)
    got = results[isa]["q6k-extremes-x16"].astype(np.float64)
    bound = (QUANT_DOT_BOUND if isa == "scalar" else X16_DOT_BOUND)(x.shape[1] // 32)
    assert (np.abs(got - ref.matmul(w16, Q6_K, x)) <= bound * matmul_magnitude(w16, Q6_K, x)).all()


def test_x16_scalar_equals_rows_layout(results):
    """The scalar X16 kernels copy each block out of its group and run the rows layout's block
    arithmetic in the same order: bit-identical to the rows layout, for every token count."""
    for t, tokens, n, k in x16_cases():
        key = f"{t.name}/{tokens}/{n}/{k}"
        np.testing.assert_array_equal(results["scalar"]["x16/" + key], results["scalar"]["x16-as-rows/" + key],
                                      err_msg=key)


@pytest.mark.parametrize("isa", ["scalar"] + SIMD_ISAS)
@pytest.mark.parametrize("t", X16_TYPES, ids=lambda t: t.name)
def test_x16_token_count_does_not_change_a_bit(results, isa, t):
    """A token's X16 outputs are the same bits whether it comes alone or among others (the
    AVX-512 tiles of four, AVX2's q5 blocks unpacked once for up to 64 tokens)."""
    needs(isa)
    for tt, tokens, n, k in x16_cases():
        key = f"{t.name}/{tokens}/{n}/{k}"
        if tt is t and "x16-single/" + key in results[isa]:
            np.testing.assert_array_equal(results[isa]["x16/" + key], results[isa]["x16-single/" + key], err_msg=key)


@pytest.mark.parametrize("isa", ["scalar"] + SIMD_ISAS)
@pytest.mark.parametrize("t", X16_TYPES, ids=lambda t: t.name)
def test_x16_matmul(results, isa, t):
    """Every path's X16 kernel within X16_DOT_BOUND of the reference and of the scalar path; rows
    copied out of their groups by get_rows exactly."""
    needs(isa)
    for tt, tokens, n, k in x16_cases():
        if tt is not t:
            continue
        key = f"{t.name}/{tokens}/{n}/{k}"
        got = results[isa]["x16/" + key].astype(np.float64)
        x, w = matmul_inputs(t, tokens, n, k)
        mag = matmul_magnitude(w, t, x)
        bound = X16_DOT_BOUND(k // 32) * mag
        err = np.abs(got - ref.matmul(w, t, x))
        assert (err <= bound).all(), f"{key}: max err {err.max():.3g}, bound {bound.flat[err.argmax()]:.3g}"
        err = np.abs(got - results["scalar"]["x16/" + key])
        assert (err <= bound + QUANT_DOT_BOUND(k // 32) * mag).all(), f"{key}: vs scalar, max err {err.max():.3g}"
        np.testing.assert_array_equal(results[isa]["x16-get_rows/" + key], ref.dequantize(w, t, k)[[n - 1, 0, 5]])


@pytest.mark.parametrize("isa", ["scalar"] + SIMD_ISAS)
def test_rmsnorm_silu_mul_and_gelu_mul_within_their_bounds(results, isa):
    """The SIMD rmsnorm sums the squares (in double) in another order, and silu_mul and gelu_mul
    take their exponential from a polynomial: all within the scalar kernels' bounds of float64."""
    needs(isa)
    a = other_inputs()
    x64 = a["x"].astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + np.float64(np.float32(1e-5))) * a["w"]
    assert (np.abs(results[isa]["rmsnorm"] - want) <= RMSNORM_BOUND * np.abs(want)).all()
    g64 = a["gate"].astype(np.float64)
    want = g64 / (1 + np.exp(-g64)) * a["x"][:, :33]
    assert (np.abs(results[isa]["silu_mul"] - want) <= SILU_BOUND * np.abs(want)).all()
    # GELU's tanh form (Gemma): the SIMD kernels take it as g sigmoid(2u), the same function; for
    # negative g, 1 + tanh cancels, so the bound is on g u's size
    want = 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64 ** 3))) * a["x"][:, :33]
    assert (np.abs(results[isa]["gelu_mul"] - want) <= 1e-6 * np.abs(g64 * a["x"][:, :33])).all()


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_other_ops_equal_scalar(results, isa):
    needs(isa)
    skip = ("matmul/", "tile/", "single/", "vec_dot/", "q16a/", "isa", "x16", "rmsnorm", "silu_mul", "gelu_mul",
            "q6k-")
    for key in [k for k in results["scalar"] if not k.startswith(skip)]:
        np.testing.assert_array_equal(results[isa][key], results["scalar"][key], err_msg=key)
    for t in ALL_TYPES:  # get_rows dequantises with the reference: exact
        kg = GET_ROWS_K.get(t.block_size, 96)
        _, w = matmul_inputs(t, 1, 67, kg)
        np.testing.assert_array_equal(results[isa][f"get_rows/{t.name}"],
                                      ref.dequantize(w, t, kg)[[2, 0, 66, 2]])
