"""The C kernels (llmrun._kernels) held to the numpy reference (llmrun.quant.reference) and to
float64 maths, each with a named error bound derived below, plus the argument checking that
keeps every call in bounds, and the LLMRUN_ISA switch."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import llmrun._kernels as K
from llmrun.quant import reference as ref
from llmrun.quant.layout import X16, deinterleave, has_x16, interleave
from llmrun.quant.types import (BF16, F16, F32, IQ4_NL, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0,
                                TABLE, TYPES)

ALL_TYPES = list(TYPES.values())  # every type the CPU runs, from the table in quant/types.py
QUANTISED = [t for t in ALL_TYPES if t.quantized]
X16_TYPES = [t for t in ALL_TYPES if t.x16]

# --- error bounds ------------------------------------------------------------------------------
# u is float32's unit roundoff: one f32 operation is off by at most u times its result.
U = 2.0 ** -24

# Quantisers and dequantisers do the reference's f32 operations in the reference's order, so
# bytes (and dequantised floats) must be identical: the bound is zero.

# Float-weight matmul vs the reference (float64): K products (1 rounding each) summed in any
# order (at most K - 1 roundings on partial sums, each bounded by the sum of |terms|) and one
# final rounding: |err| <= (K + 1) u sum_k |x_k w_k|. One more u of slack.
def FLOAT_DOT_BOUND(k):
    return (k + 2) * U

# Quantised matmul vs the reference: integer block sums are exact on both sides; each block
# term (dw*da*isum, dw*(da*isum - 8*sa), dw*da*isum + mw*sa; for q6_k dw is the super-block's d
# and qw the integer sc*(q - 32), its isum rounded to float once) takes at most 3 roundings, the
# nb terms are summed with nb - 1 more and the result rounded once: |err| <= (nb + 3) u M with
# M = sum_b (|dw| da sum_j |qw_j qa_j| + |offset_b sa_b|), which bounds every partial sum.
def QUANT_DOT_BOUND(nb):
    return (nb + 4) * U


# Quantised weights: the SIMD kernels compute each block's integer sums exactly (as the scalar
# kernel), in int32 vector lanes, with no reduction per block: each lane's partial sum P (half a
# block, 16 products) is converted to float (exact for q4, at most one rounding for q8_0 and q6_k
# where |P| may pass 2^24) and fused-multiply-added with c_b = fl(dw*da) into a float accumulator, four
# blocks per step (G = ceil(nb/4) steps); the offsets (-8 dw sa for q4_0, exact -8 sa; mw sa for
# q4_1) go by FMA into a 4-lane accumulator; at the end 8 lanes fold to 4 (1 add), the offsets are
# added (1) and a 2-level tree sums the 4 lanes (2). Every term c_b*P or o_b is bounded in total
# by M = sum_b (|dw| da sum|qw qa| + |off| |sa|) (matmul_magnitude) and meets at most
# 1 (c_b) + 1 (convert) + G + 4 <= nb + 6 roundings: |err| <= (nb + 6) u M + O(u^2) against
# float64, QUANT_DOT_SIMD_BOUND(nb) = (nb + 7) u (one u of slack). Against the scalar path
# (within QUANT_DOT_BOUND) they are within the sum of the two bounds. A token tile does the
# single-token kernel's operations per token, lane for lane: its outputs equal the same path's
# single-token outputs bit for bit.
def QUANT_DOT_SIMD_BOUND(nb):
    return (nb + 7) * U

# The X16 layout's SIMD kernels (kernels/cpu/gemm_x16_avx512.c) sum the same exact integers in
# int32 lanes, lane (r, p) holding half of row r's block; per block the lane gets c_b * P
# (c_b = fl(dw*da): 1 rounding; P to float: 1 for q8_0 past 2^24) by one FMA, and the q4 offset
# by a second FMA into the p = 0 lane, so a term meets at most 2 nb accumulations; the two lanes
# of a row are added at the end (1): |err| <= (2 nb + 3) u M + O(u^2), X16_DOT_BOUND(nb) =
# (2 nb + 4) u (one u of slack). The scalar X16 kernels are the rows layout's, bit for bit.
def X16_DOT_BOUND(nb):
    return (2 * nb + 4) * U

# Quantised matmul vs float64 x @ dequantised(W).T: the q16_a activations differ from x by at
# most half a step d per element (q = round(x/d)); x*id is computed in f32 with relative error
# ~2u at |x*id| <= 32767, i.e. 65534u (0.4%) of a step, covered by the 1% margin.
ACT_QUANT_HALF_STEP = 0.5 * 1.01

# rmsnorm vs float64: the sum of squares is in double, in any order (negligible error); 1/sqrt
# rounded to f32, x*scale and *w each add one rounding: 3u relative; one u of slack.
RMSNORM_BOUND = 4 * U

# rope vs float64 with the same f32 angle and f32 cos/sin: two products and one sum or
# difference, 2u of (|a c| + |b s|) plus 1u; one u of slack for a libm whose cos/sin rounds
# differently to f32 than numpy's.
ROPE_BOUND = 4 * U

# silu_mul vs float64: expf (<= 1 ulp, so 2u), 1 + e (u; e's error is scaled down by e/(1+e)),
# division (u), multiply by up (u): 5u relative; one u of slack. The SIMD kernels take
# z = e^-|g| from a polynomial (<= 2 ulp, kernels/cpu/exp_x86.h) and sigmoid as 1/(1+z) (z's
# error scaled by z/(1+z) <= 1/2) or z/(1+z) (scaled by 1/(1+z) <= 1): 2u, then 1 + z, the
# division, * g and * up: 6u, the same bound.
SILU_BOUND = 6 * U


def ATTENTION_BOUND(q, k, hd, n_kv):
    """Absolute bound per output element, relative to max|v|: the scaled scores are f32 dots
    of hd terms, off by at most E = (hd + 2) u sum_i |q_i k_i| / sqrt(hd); a score error E
    changes its softmax weight by a factor within exp(+-2E) (its own exp and, through the
    max and the sum, the others'); expf (2u), the sum of n_kv weights (n_kv u) and the
    division (u) are relative errors on every weight; the weighted sum of values adds n_kv u.
    So |err| <= (2E + (2 n_kv + 4) u) max|v|, with E the largest over the keys."""
    e = (hd + 2) * U * (np.abs(q) @ np.abs(k).T).max() / np.sqrt(hd)
    return 2 * e + (2 * n_kv + 4) * U


# The ISAs whose attention is a SIMD kernel (attention_avx2.c, attention_avx512.c,
# attention_neon.c); scalar runs the scalar one.
ATTENTION_SIMD_ISAS = {"avx2", "avx512", "avx512vnni", "neon"}
# Their polynomial exp, measured against float64 over every f32 in [-1, 0] and every 64th in
# [-87, -1]: within 1.97 u relative; below -87.7 it returns 0 (e^x < 2^-126, nothing beside the
# max's e^0 = 1). Bounded here by 2u.
EXP_POLY = 2 * U


def ATTENTION_SIMD_BOUND(q, k, hd, n_kv):
    """ATTENTION_BOUND's reasoning for the online softmax, which keeps a running max M and
    rescales the sums by e^(M_old - M_new) whenever a block of B positions raises it. With A
    bounding every |score|: scores off by E = (hd + 2) u A (FMA dots in any order, then the
    scale); the exponents' arguments, s_j - M_block and each M_old - M_new, are rounded, in
    total at most u (M - s_j) <= 2 u A, which counts like E (twice: its own weight and the
    sum): 2E + 4uA. Each weight takes the exp's 2u and, from up to ceil(n_kv / B) - 1 rescales,
    the factor's exp (2u) and a product's rounding for the value sums and for the weight sum
    (2u): (2 + 4 (nb - 1)) u <= 4 nb u, doubled by the normalisation that every weight enters
    twice: 8 nb u. The
    sum of n_kv weights, of n_kv weighted values (one FMA chain per element over the positions
    in order, the rescales folded in), 1/sum and its product: (2 n_kv + 3) u. A row's
    arithmetic does not depend on the tokens and heads that share its tile, so the bound is
    the row's alone. So |err| <= (2(hd + 4) u A + (2 n_kv + 8 nb + 3) u) max|v|, taking
    B = 8 (AVX2's block; AVX-512's 16 rescales less), with one u of slack."""
    a = (np.abs(q) @ np.abs(k).T).max() / np.sqrt(hd)
    nb = -(-n_kv // 8)
    return 2 * (hd + 4) * U * a + (2 * n_kv + 8 * nb + 4) * U


def attention_bound_for(isa):
    return ATTENTION_SIMD_BOUND if isa in ATTENTION_SIMD_ISAS else ATTENTION_BOUND


# --- helpers ------------------------------------------------------------------------------------

def rng_for(*key) -> np.random.Generator:
    """A generator seeded by the test's parameters, the same in every run."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand(rng, *shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def kernel_quantize(x: np.ndarray, t) -> np.ndarray:
    rows = x.shape[:-1]
    out = np.empty((*rows, t.row_bytes(x.shape[-1])), np.uint8)
    K.quantize(out, x, t.id)
    return out


def kernel_matmul(x: np.ndarray, w: np.ndarray, t, n: int) -> np.ndarray:
    out = np.empty((*x.shape[:-1], n), np.float32)
    K.matmul(out, x, w, t.id)
    return out


def block_fields(w: np.ndarray, t):
    """Quantised rows [N, row_bytes] -> (d [N, nb], offset [N, nb], q [N, nb, 32]) with
    W = d * q + offset; the layout the kernels must read (see quant/types.py)."""
    nb = w.shape[-1] // t.type_size
    blocks = w.reshape(w.shape[0], nb, t.type_size)
    if t in (Q4_K, Q5_K):  # per 32-value sub-block: d * sc, offset -dmin * m (quant/reference.py)
        dsc, dmm, q = ref.q4_k_fields(blocks)
        return dsc.reshape(w.shape[0], -1), -dmm.reshape(w.shape[0], -1), q.reshape(w.shape[0], -1, 32).astype(np.float64)
    if t in (Q3_K, Q6_K):  # per q16_a block: the super-block's d, the integer weights sc * q
        d, wq = (ref.q3_k_fields if t is Q3_K else ref.q6_k_fields)(blocks)
        d = d.reshape(w.shape[0], -1)
        return d, np.zeros_like(d), wq.reshape(w.shape[0], -1, 32).astype(np.float64)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    if t is Q8_0:
        return d, np.zeros_like(d), blocks[..., 2:].copy().view(np.int8).astype(np.float64)
    if t is IQ4_NL:  # the nibbles' signed levels (no offset)
        q = ref.IQ4_NL_VALUES[ref._unpack_nibbles(blocks[..., 2:])].astype(np.float64)
        return d, np.zeros_like(d), q
    if t in (Q5_0, Q5_1):  # q5_0: signed q - 16 (no offset); q5_1: q, offset m
        first = 2 if t is Q5_0 else 4
        q = ref._unpack_q5(blocks[..., first:first + 4], blocks[..., first + 4:]).astype(np.float64)
        if t is Q5_0:
            return d, np.zeros_like(d), q - 16
        return d, blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64), q
    first = 4 if t is Q4_1 else 2
    q = np.concatenate([blocks[..., first:] & 0x0F, blocks[..., first:] >> 4], axis=-1).astype(np.float64)
    if t is Q4_1:
        return d, blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64), q
    return d, -8 * d, q


def matmul_magnitude(w: np.ndarray, t, x: np.ndarray) -> np.ndarray:
    """[T, N]: the sum of |terms| that the matmul rounding bounds are relative to."""
    if not t.quantized:
        wd = ref.dequantize(w, t, x.shape[-1]).astype(np.float64)
        return np.abs(x.astype(np.float64)) @ np.abs(wd).T
    da, sa, qa = (a.astype(np.float64) for a in ref.quantize_q16a(x))
    if t is Q2_K:  # mins per sub-block of 16: sum_b da (|d| sum |sc q qa| + |dmin| sum m |qa|)
        d, dmin, wq, wm = ref.q2_k_fields(w.reshape(w.shape[0], -1, t.type_size))
        per = np.abs(d)[..., None] * wq + np.abs(dmin)[..., None] * wm  # [N, nb, 8, 32]
        return np.einsum("nbj,tbj->tn", per.reshape(w.shape[0], -1, 32), np.abs(qa) * da[..., None])
    d, off, qw = block_fields(w, t)
    isum_abs = np.einsum("nbj,tbj->tnb", np.abs(qw), np.abs(qa))
    return (np.abs(d)[None] * da[:, None] * isum_abs + np.abs(off)[None] * np.abs(sa)[:, None]).sum(-1)


# --- quantisers ---------------------------------------------------------------------------------

def edge_rows() -> np.ndarray:
    """Blocks of 32 that exercise ties, zeros and rounding corners, as float32 [rows, 64]."""
    ramp = np.arange(32, dtype=np.float32)
    blocks = [
        np.zeros(32),                                    # all zero: d = 0, id = 0
        np.full(32, 3.0),                                # all equal: q4_1 range 0
        np.full(32, -0.75),                              # all equal, negative
        np.r_[127.0, np.arange(31) + 0.5],               # d = 1: x*id lands on .5 ties
        np.r_[-8.0, (ramp[:31] % 16) - 7.5],             # q4_0 with d = 1: ties at +8.5
        np.r_[0.0, 15.0, ramp[:30] / 2],                 # q4_1 with d = 1: (x - min) + 0.5 whole
        np.r_[127.0, 0.49999997, -0.49999997, np.zeros(29)],  # roundf gives 0; floor(|v| + 0.5f) would give 1
        np.r_[1e4, np.full(31, 1e-4)],                   # one huge value, the rest tiny
        np.r_[7.0, -7.0, np.ones(30)],                   # equal magnitudes: the first wins
        np.r_[-7.0, 7.0, np.ones(30)],
        np.r_[65504.0, 65519.0, 65520.0, 1e5, 6e-8, 2.0 ** -25, 3e-8, -1e-7, np.ones(24)],  # f16 corners
        ramp * 2.0 ** -20,                               # f16 subnormal scales
    ]
    return np.stack([np.r_[b, b[::-1] * -0.5] for b in blocks]).astype(np.float32)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape,scale", [((1, 32), 1.0), ((5, 64), 1e-3), ((3, 2, 256), 50.0)])
def test_quantize_random_matches_reference(t, shape, scale):
    if t.block_size > 32:  # super-blocks (q4_k: 256): as many of them as the shape has blocks of 32
        shape = (*shape[:-1], shape[-1] * t.block_size // 32)
    x = rand(rng_for("quantize", t.name, shape), *shape, scale=scale)
    np.testing.assert_array_equal(kernel_quantize(x, t), ref.quantize(x, t))


@pytest.mark.parametrize("t", [t for t in ALL_TYPES if t.quantized], ids=lambda t: t.name)
def test_quantize_rows_among_threads_match_reference(t):
    # 600 rows of 512: items of 128 rows (65536 values), five of them, taken by two threads
    x = rand(rng_for("quantize threads", t.name), 600, 512)
    before = K.get_threads()
    K.set_threads(2)
    try:
        np.testing.assert_array_equal(kernel_quantize(x, t), ref.quantize(x, t))
    finally:
        K.set_threads(before)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # numpy, on the f16 corners
def test_quantize_edge_cases_match_reference(t):
    x = edge_rows()
    if t.block_size > 32:  # the same blocks of 32, as the sub-blocks of super-blocks
        x = x.reshape(-1, t.block_size)
    np.testing.assert_array_equal(kernel_quantize(x, t), ref.quantize(x, t))


@pytest.mark.parametrize("t", [t for t in ALL_TYPES if not t.quantized], ids=lambda t: t.name)
def test_quantize_float_types_any_row_length(t):
    x = rand(rng_for("float rows", t.name), 3, 37, scale=100.0)
    np.testing.assert_array_equal(kernel_quantize(x, t), ref.quantize(x, t))


def test_quantize_q16a_matches_reference():
    for shape in [(1, 32), (4, 96), (2, 3, 64)]:
        x = rand(rng_for("q16a", shape), *shape, scale=3.0)
        out = np.empty((*shape[:-1], shape[-1] // 32 * ref.Q16A_BYTES), np.uint8)
        K.quantize_q16a(out, x)
        np.testing.assert_array_equal(out, ref.q16a_to_bytes(*ref.quantize_q16a(x)))
    x = edge_rows()
    out = np.empty((x.shape[0], 2 * ref.Q16A_BYTES), np.uint8)
    K.quantize_q16a(out, x)
    np.testing.assert_array_equal(out, ref.q16a_to_bytes(*ref.quantize_q16a(x)))


@pytest.mark.parametrize("t,k,expected", [(F32, 5, 20), (F16, 7, 14), (BF16, 3, 6), (Q8_0, 64, 68),
                                          (Q4_0, 32, 18), (Q4_1, 96, 60), (Q5_0, 64, 44), (Q5_1, 32, 24),
                                          (IQ4_NL, 64, 36),
                                          (Q6_K, 512, 420)],
                         ids=lambda v: str(v))
def test_row_bytes(t, k, expected):
    assert K.row_bytes(t.id, k) == t.row_bytes(k) == expected


# --- get_rows -----------------------------------------------------------------------------------

@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows_matches_dequantize(t):
    rng = rng_for("get_rows", t.name)
    rows, k = 11, max(64, t.block_size)
    w = ref.quantize(rand(rng, rows, k), t)
    ids = np.array([3, 0, 10, 3, 7], np.int32)
    out = np.empty((len(ids), k), np.float32)
    K.get_rows(out, w, t.id, ids)
    np.testing.assert_array_equal(out, ref.dequantize(w, t, k)[ids])  # bound 0: same f32 ops


def test_iq4_nl_levels_are_ggmls():
    """llmrun.h's level table is quant/reference.py's (GGML's kvalues_iq4nl): a block with d = 1
    and every nibble, low and high, comes back as the 16 levels, on every path that reads it."""
    assert ref.IQ4_NL_VALUES.tolist() == [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    block = np.r_[np.array([1.0], np.float16).view(np.uint8), np.arange(16, dtype=np.uint8) * 17].astype(np.uint8)
    out = np.empty((1, 32), np.float32)
    K.get_rows(out, block[None], IQ4_NL.id, np.zeros(1, np.int32))
    levels = ref.IQ4_NL_VALUES.astype(np.float32)
    np.testing.assert_array_equal(out[0], np.r_[levels, levels])
    np.testing.assert_array_equal(ref.dequantize(block, IQ4_NL, 32), np.r_[levels, levels])
    # a dot product with one activation per level picks each one out
    x = np.zeros((16, 32), np.float32)
    x[np.arange(16), np.arange(16)] = 1.0
    np.testing.assert_allclose(kernel_matmul(x, block[None], IQ4_NL, 1)[:, 0], levels, rtol=4 * U)  # d_a = 1/32767 rounded


# --- the X16 layout -----------------------------------------------------------------------------

@pytest.mark.parametrize("t", [t for t in QUANTISED if has_x16(t)], ids=lambda t: t.name)
def test_x16_layout_puts_each_byte_where_documented(t):
    """Group g, block b: the 16 rows' f16 scale fields (found at the table's scales_at: q6_k's d
    is its last field), then word c of the block's other bytes, in order, of row r at
    (c * 16 + r) * 4 (kernels/include/llmrun.h); and back again exactly. Every quantised type."""
    rng = rng_for("x16 layout", t.name)
    rows = ref.quantize(rand(rng, 32, 3 * t.block_size), t)  # two groups of three blocks
    flat = interleave(rows, t).reshape(-1)
    n_scales, at = t.n_scales, t.scales_at
    size, nb = t.type_size, 3
    for g in range(2):
        for b in range(nb):
            base = (g * nb + b) * 16 * size
            for r in range(16):
                block = rows[g * 16 + r, b * size:(b + 1) * size]
                for f in range(n_scales):
                    np.testing.assert_array_equal(flat[base + (f * 16 + r) * 2:][:2], block[at + 2 * f:at + 2 * f + 2])
                other = np.concatenate([block[:at], block[at + 2 * n_scales:]])
                for c in range((size - 2 * n_scales) // 4):
                    np.testing.assert_array_equal(flat[base + n_scales * 32 + (c * 16 + r) * 4:][:4], other[4 * c:4 * c + 4])
    np.testing.assert_array_equal(deinterleave(flat, t, rows.shape[1]), rows)


@pytest.mark.parametrize("t", X16_TYPES, ids=lambda t: t.name)
def test_x16_matmul_and_get_rows_agree_with_rows_layout(t):
    rng = rng_for("x16 vs rows", t.name)
    k = 4 * t.block_size  # four blocks (q4_k: four super-blocks)
    x, w = rand(rng, 6, k), ref.quantize(rand(rng, 48, k, scale=0.1), t)
    got = np.empty((6, 48), np.float32)
    K.matmul(got, x, interleave(w, t), t.id, X16)
    mag = matmul_magnitude(w, t, x)
    bound = (X16_DOT_BOUND(k // 32) if K.isa() != "scalar" else QUANT_DOT_BOUND(k // 32)) * mag
    assert (np.abs(got - ref.matmul(w, t, x)) <= bound).all()
    ids = np.array([47, 0, 16, 15], np.int32)
    rows = np.empty((4, k), np.float32)
    K.get_rows(rows, interleave(w, t), t.id, ids, X16)
    np.testing.assert_array_equal(rows, ref.dequantize(w, t, k)[ids])


@pytest.mark.parametrize("t", [Q4_K, Q5_K], ids=lambda t: t.name)
def test_x16_k_quant_reads_every_bit_of_the_packed_scales(t):
    """q4_k's and q5_k's X16 kernels unpack 16 rows' 6-bit scales and mins at once (gemm_x16.h),
    and q5_k's its rows' fifth bits: on random bytes (every bit pattern of the 12 packed bytes and
    of qh; finite d and dmin of both signs) they must agree with the numpy reference, whose
    unpacking is gguf-py's; so must the rows layout's kernel."""
    rng = rng_for("x16 k-quant scales", t.name)
    n, nb = 32, 3
    blocks = rng.integers(0, 256, (n, nb, t.type_size), dtype=np.uint8)
    blocks[..., 0:4] = (rng.uniform(-1, 1, (n, nb, 2)) * [0.01, 0.1]).astype(np.float16).view(np.uint8)
    w = blocks.reshape(n, -1)
    x = rand(rng, 5, nb * 256, scale=2.0)
    bound = (X16_DOT_BOUND(nb * 8) if K.isa() != "scalar" else QUANT_DOT_BOUND(nb * 8)) * matmul_magnitude(w, t, x)
    want = ref.matmul(w, t, x)
    for layout, data in ((X16, interleave(w, t)), (0, w)):
        got = np.empty((5, n), np.float32)
        K.matmul(got, x, data, t.id, layout)
        err = np.abs(got - want)
        assert (err <= bound).all(), f"layout {layout}: max err {err.max():.3g}"


@pytest.mark.parametrize("t", [Q4_K, Q6_K, Q3_K, Q2_K], ids=lambda t: t.name)
def test_x16_super_blocks_read_every_bit(t):
    """The super-block types' X16 kernels unpack 16 rows' scales and quants at once (q4_k's 6-bit
    scales and mins, gemm_x16.h; q6_k's int8 scales and split 6-bit quants, q3_k's packed 6-bit
    scales and split 3-bit quants, q2_k's 4-bit scales and mins, gemm_x16_q6_k.h): on
    random bytes (every bit pattern; finite f16 scales of both signs) they must agree with the
    numpy reference, whose unpacking is gguf-py's."""
    rng = rng_for("x16 super-block bits", t.name)
    n, nb = 32, 3
    blocks = rng.integers(0, 256, (n, nb, t.type_size), dtype=np.uint8)
    at = t.scales_at
    blocks[..., at:at + 2 * t.n_scales] = (rng.uniform(-1, 1, (n, nb, t.n_scales)) * [0.01, 0.1][:t.n_scales]
                                           ).astype(np.float16).view(np.uint8)
    w = blocks.reshape(n, -1)
    x = rand(rng, 5, nb * 256, scale=2.0)
    bound = (X16_DOT_BOUND(nb * 8) if K.isa() != "scalar" else QUANT_DOT_BOUND(nb * 8)) * matmul_magnitude(w, t, x)
    rows = np.empty((5, n), np.float32)  # the rows layout too: files written before q3_k / q2_k had X16 kernels hold it so
    K.matmul(rows, x, w, t.id, 0)
    err = np.abs(rows - ref.matmul(w, t, x))
    assert (err <= bound).all(), f"rows layout: max err {err.max():.3g}"
    got = np.empty((5, n), np.float32)
    K.matmul(got, x, interleave(w, t), t.id, X16)
    err = np.abs(got - ref.matmul(w, t, x))
    assert (err <= bound).all(), f"max err {err.max():.3g}"
    one = np.empty((1, n), np.float32)  # one token alone (decode's path) gives the same bits
    K.matmul(one, x[3:4], interleave(w, t), t.id, X16)
    np.testing.assert_array_equal(one[0], got[3])


def test_x16_bad_input_is_a_clear_error():
    x, w = np.zeros((1, 64), np.float32), ref.quantize(np.zeros((16, 64), np.float32), Q4_0)
    out = np.empty((1, 16), np.float32)
    with pytest.raises(ValueError, match="layout 7"):
        K.matmul(out, x, w, Q4_0.id, 7)
    with pytest.raises(ValueError, match="layout 1 is not one llmrun reads for f32"):
        K.matmul(out, x, ref.quantize(np.zeros((16, 64), np.float32), F32), F32.id, X16)
    with pytest.raises(ValueError, match="17 rows is not a whole number of X16 groups"):
        K.matmul(np.empty((1, 17), np.float32), x, ref.quantize(np.zeros((17, 64), np.float32), Q4_0), Q4_0.id, X16)
    with pytest.raises(ValueError, match="X16 groups"):
        K.get_rows(np.empty((1, 64), np.float32), w[:8], Q4_0.id, np.zeros(1, np.int32), X16)


# --- matmul -------------------------------------------------------------------------------------

MATMUL_SHAPES = {False: [(1, 7, 33), (3, 5, 100), (4, 16, 256)],  # float weights: any K
                 True: [(1, 7, 64), (3, 5, 96), (5, 16, 256)]}    # quantised: K % 32 == 0


def matmul_cases():
    for t in ALL_TYPES:
        for shape in MATMUL_SHAPES[t.quantized]:
            if t.block_size > 32:  # super-blocks: K in whole ones (1, 3 and 8 of q4_k's)
                shape = (*shape[:2], shape[2] * t.block_size // 32)
            yield pytest.param(t, *shape, id=f"{t.name}-T{shape[0]}-N{shape[1]}-K{shape[2]}")


@pytest.mark.parametrize("t,T,N,Kd", list(matmul_cases()))
def test_matmul_matches_reference(t, T, N, Kd):
    rng = rng_for("matmul", t.name, T, N, Kd)
    x = rand(rng, T, Kd, scale=2.0)
    w = ref.quantize(rand(rng, N, Kd, scale=0.1), t)
    got = kernel_matmul(x, w, t, N).astype(np.float64)

    mag = matmul_magnitude(w, t, x)
    quant_bound = QUANT_DOT_BOUND if K.isa() == "scalar" else QUANT_DOT_SIMD_BOUND  # the path in use
    bound = (quant_bound(Kd // 32) if t.quantized else FLOAT_DOT_BOUND(Kd)) * mag
    err = np.abs(got - ref.matmul(w, t, x))
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"

    # Against exact maths on the dequantised weights, the activation quantisation adds at
    # most half a step per element, weighted by |W|.
    wd = ref.dequantize(w, t, Kd).astype(np.float64)
    exact = x.astype(np.float64) @ wd.T
    if t.quantized:
        step = np.repeat(ref.quantize_q16a(x)[0].astype(np.float64), 32, axis=-1)  # da per element
        bound = bound + ACT_QUANT_HALF_STEP * (step @ np.abs(wd).T) + U * np.abs(exact)
    err = np.abs(got - exact)
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


@pytest.mark.parametrize("n", [12, 40])
def test_matmul_weight_smaller_than_an_item_in_a_long_job(n):
    # 12 or 40 rows of 4096 met by 128 tokens on two threads: more work than an item a thread, in
    # rows fewer than an item's (16, rounded up to whole X16 groups): the job's small tail items
    # must stay within the weight's rows (the sanitizer build runs this too)
    rng = rng_for("small last weight", n)
    x, w = rand(rng, 128, 4096), ref.quantize(rand(rng, n, 4096, scale=0.1), F32)
    before = K.get_threads()
    K.set_threads(2)
    try:
        out = np.full((130, n), 7.0, np.float32)  # a row either side that no item may write
        K.matmul(out[1:-1], x, w, F32.id)
    finally:
        K.set_threads(before)
    np.testing.assert_array_equal(out[[0, -1]], 7.0)
    np.testing.assert_allclose(out[1:-1], ref.matmul(w, F32, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t", [F32, Q4_0], ids=lambda t: t.name)
def test_matmul_one_token_1d(t):
    rng = rng_for("decode", t.name)
    x = rand(rng, 64)
    w = ref.quantize(rand(rng, 9, 64), t)
    out = kernel_matmul(x, w, t, 9)
    assert out.shape == (9,)
    np.testing.assert_array_equal(out, kernel_matmul(x[None], w, t, 9)[0])


def test_matmul_accepts_any_weight_buffer():
    rng = rng_for("buffers")
    x = rand(rng, 2, 64)
    w = ref.quantize(rand(rng, 4, 64), Q8_0)
    want = kernel_matmul(x, w, Q8_0, 4)
    for buf in (w.tobytes(), memoryview(w.tobytes()), w.view(np.int8)):
        np.testing.assert_array_equal(kernel_matmul(x, buf, Q8_0, 4), want)


# --- float ops ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 64), (5, 96), (2, 3, 40)])
def test_rmsnorm(shape):
    rng = rng_for("rmsnorm", shape)
    x, w, eps = rand(rng, *shape, scale=3.0), rand(rng, shape[-1]), 1e-5
    out = np.empty_like(x)
    K.rmsnorm(out, x, w, eps)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + np.float64(np.float32(eps))) * w
    assert (np.abs(out - want) <= RMSNORM_BOUND * np.abs(want)).all()
    K.rmsnorm(x, x, w, eps)  # in place is allowed
    np.testing.assert_array_equal(x, out)


def rope_reference(x, pos, inv_freq):
    half = x.shape[-1] // 2
    angle = pos.astype(np.float32)[:, None] * inv_freq[None, :]  # f32 product, as the kernel
    c = np.cos(angle.astype(np.float64)).astype(np.float32).astype(np.float64)[:, None, :]
    s = np.sin(angle.astype(np.float64)).astype(np.float32).astype(np.float64)[:, None, :]
    a, b = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    want = np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
    scale = np.concatenate([np.abs(a * c) + np.abs(b * s), np.abs(b * c) + np.abs(a * s)], axis=-1)
    return want, scale


@pytest.mark.parametrize("T,H,hd,start", [(1, 4, 16, 0), (6, 3, 64, 0), (2, 2, 8, 4000)])
def test_rope(T, H, hd, start):
    rng = rng_for("rope", T, H, hd, start)
    x = rand(rng, T, H, hd)
    pos = (start + np.arange(T)).astype(np.int32)
    inv_freq = (10000.0 ** (-np.arange(0, hd, 2) / hd)).astype(np.float32)
    want, scale = rope_reference(x, pos, inv_freq)
    K.rope(x, pos, inv_freq)
    assert (np.abs(x - want) <= ROPE_BOUND * scale).all()


def seen(n_past, t, window):
    """The cache positions token t sees: from 0, or its last `window`."""
    end = n_past + t + 1
    return slice(max(0, end - window) if window else 0, end)


def heads_first(cache):
    """A cache [n_ctx, Hkv, hd] as the kernels take it: [Hkv, n_ctx, hd], each kv head's rows in a run."""
    return np.ascontiguousarray(cache.transpose(1, 0, 2))


def attention_reference(q, kc, vc, n_past, window=0, scale=None):
    T, Hq, hd = q.shape
    group = Hq // kc.shape[1]
    out = np.empty(q.shape, np.float64)
    for t in range(T):
        rows = seen(n_past, t, window)
        for h in range(Hq):
            k, v = kc[rows, h // group].astype(np.float64), vc[rows, h // group].astype(np.float64)
            s = k @ q[t, h].astype(np.float64) * (scale or 1 / np.sqrt(hd))
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v
    return out


@pytest.mark.parametrize("T,Hq,Hkv,hd,n_past,n_ctx", [
    (1, 4, 4, 16, 0, 1),     # first token
    (5, 4, 4, 16, 0, 8),     # prefill, Hq/Hkv = 1
    (1, 6, 2, 32, 9, 16),    # decode after a prompt, Hq/Hkv = 3
    (4, 6, 2, 8, 3, 7),      # chunked prefill filling the cache exactly
])
def test_attention(T, Hq, Hkv, hd, n_past, n_ctx):
    rng = rng_for("attention", T, Hq, Hkv, hd, n_past)
    q = rand(rng, T, Hq, hd, scale=2.0)
    kc, vc = rand(rng, n_ctx, Hkv, hd), rand(rng, n_ctx, Hkv, hd)
    out = np.empty_like(q)
    K.attention(out, q, heads_first(kc), heads_first(vc), n_past)
    check_attention(out, q, kc, vc, n_past, attention_bound_for(K.isa()))


def check_attention(out, q, kc, vc, n_past, bound_fn, window=0):
    want = attention_reference(q, kc, vc, n_past, window)
    T, Hq, hd = q.shape
    group = Hq // kc.shape[1]
    for t in range(T):
        rows = seen(n_past, t, window)
        for h in range(Hq):
            k = kc[rows, h // group]
            bound = bound_fn(q[t, h][None], k, hd, len(k)) * np.abs(vc[rows, h // group]).max()
            err = np.abs(out[t, h] - want[t, h]).max()
            assert err <= bound, f"token {t} head {h}: err {err:.3g} > bound {bound:.3g}"


def test_attention_is_causal():
    """Cache entries past n_past + t must not change token t's output."""
    rng = rng_for("causal")
    q, kc, vc = rand(rng, 3, 2, 8), rand(rng, 6, 2, 8), rand(rng, 6, 2, 8)
    a, b = np.empty_like(q), np.empty_like(q)
    K.attention(a, q, heads_first(kc), heads_first(vc), 2)
    kc[5], vc[5] = 100.0, -100.0  # beyond n_past + T - 1 = 4
    kc[4:, :], vc[4:, :] = kc[4:] * 7, vc[4:] * 7  # position 4 is seen only by the last token
    K.attention(b, q, heads_first(kc), heads_first(vc), 2)
    np.testing.assert_array_equal(a[:2], b[:2])
    assert not np.array_equal(a[2], b[2])


# Every path this CPU runs, each forced in a subprocess (the ISA is chosen at import): shapes
# around the blocks (n_past + t of 1, 2, 38, 40, 317), runs of tokens that fill the kernels'
# 4-token tiles and leave 1, 2 or 3 over (t of 3, 17, 70), head dims with and without a vector
# tail, GQA groups of 3, 1, 8, 4 (LLaMA-3.2-1B's 32 / 8) and 2 (each group size the kernels compile).
ATTENTION_N_PAST = [0, 1, 37, 300]
ATTENTION_TOKENS = [1, 3, 17, 70]
ATTENTION_HEADS = [(9, 3), (4, 4), (8, 1), (32, 8), (6, 3)]
ATTENTION_HD = [8, 24, 64, 80, 128]


# Sliding windows (Mistral v0.1, Gemma 3): shorter than a block, a block, across blocks, longer
# than every prompt here.
ATTENTION_WINDOWS = [5, 16, 23, 400]


def attention_cases():
    for n_past in ATTENTION_N_PAST:
        for t in ATTENTION_TOKENS:
            for hq, hkv in ATTENTION_HEADS:
                for hd in ATTENTION_HD:
                    yield n_past, t, hq, hkv, hd, 0
    for n_past in ATTENTION_N_PAST[1:]:
        for t in ATTENTION_TOKENS:
            for window in ATTENTION_WINDOWS:
                yield n_past, t, 9, 3, 24, window


def attention_inputs(n_past, t, hq, hkv, hd, window):
    """q, and caches with 5 rows beyond the last position any token sees, and with a window
    every row before the first position any token sees, all NaN."""
    rng = rng_for("attention paths", n_past, t, hq, hkv, hd, *((window,) if window else ()))
    q = rand(rng, t, hq, hd, scale=2.0)
    kc, vc = rand(rng, n_past + t + 5, hkv, hd), rand(rng, n_past + t + 5, hkv, hd)
    kc[n_past + t:], vc[n_past + t:] = np.nan, np.nan
    first = seen(n_past, 0, window).start
    kc[:first], vc[:first] = np.nan, np.nan
    return q, kc, vc


def attention_outputs(path):
    """Run in the subprocess: every case on this process's path, on 1 and 2 threads, and the
    first token alone (from a cache cut after the last position it sees); and on 1 thread with
    the caches in f16, and in f32 holding those f16 values; where hd allows, in q8_0, and in f32
    holding the values of those blocks: saved to path."""
    out = {"isa": np.array(K.isa())}
    for case in attention_cases():
        q, kc, vc = attention_inputs(*case)
        n_past, window = case[0], case[-1]
        for threads in (1, 2):
            K.set_threads(threads)
            y = np.full_like(q, np.nan)
            K.attention(y, q, heads_first(kc), heads_first(vc), n_past, window)
            out[f"{case}/{threads}"] = y
        y = np.full_like(q[:1], np.nan)
        K.attention(y, q[:1], heads_first(kc[:n_past + 1]), heads_first(vc[:n_past + 1]), n_past, window)
        out[f"{case}/first"] = y
        K.set_threads(1)
        kc16, vc16 = kc.astype(np.float16), vc.astype(np.float16)
        caches = {"f16": (heads_first(kc16), heads_first(vc16)),
                  "widened": (heads_first(kc16.astype(np.float32)), heads_first(vc16.astype(np.float32)))}
        if case[4] % 32 == 0:  # a q8_0 cache's rows are whole blocks
            k8, v8 = q8_0_rows(heads_first(kc)), q8_0_rows(heads_first(vc))
            caches |= {"q8_0": (k8, v8), "q8_0 values": (q8_0_values(k8), q8_0_values(v8))}
        for key, (k, v) in caches.items():
            y = np.full_like(q, np.nan)
            K.attention(y, q, k, v, n_past, window)
            out[f"{case}/{key}"] = y
    np.savez(path, **out)


def q8_0_rows(x):
    """x [.., hd] as a q8_0 KV cache's rows (uint8, hd / 32 blocks each), by the C quantiser."""
    out = np.empty(x.shape[:-1] + (x.shape[-1] // 32 * 34,), np.uint8)
    K.quantize(out, np.ascontiguousarray(x), Q8_0.id)
    return out


def q8_0_values(rows):
    """The floats a q8_0 cache's rows stand for, d * q, in numpy (each product exact in float32)."""
    blocks = rows.reshape(rows.shape[:-1] + (-1, 34))
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16).astype(np.float32)
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).astype(np.float32)
    return (d * q).reshape(rows.shape[:-1] + (-1,))


@pytest.fixture(scope="module")
def attention_paths(tmp_path_factory):
    """isa -> attention_outputs of that path, for every path this CPU runs (run at once)."""
    tmp = tmp_path_factory.mktemp("attention")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_kernels; "
            "test_kernels.attention_outputs(sys.argv[2])")
    procs = {isa: subprocess.Popen([sys.executable, "-c", code, os.path.dirname(__file__), str(tmp / f"{isa}.npz")],
                                   env={**os.environ, "LLMRUN_ISA": isa}, stderr=subprocess.PIPE, text=True)
             for isa in K.isas()}
    out = {}
    for isa, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"LLMRUN_ISA={isa}: {err}"
        with np.load(tmp / f"{isa}.npz") as f:
            out[isa] = dict(f)
    return out


@pytest.mark.parametrize("isa", ["scalar", *sorted(ATTENTION_SIMD_ISAS)])
def test_attention_every_path(attention_paths, isa):
    """Within the path's bound of float64 for every case; bit-identical on 1 and 2 threads;
    causal: no NaN from the positions no token sees, and the first token's output the same
    from a cache that ends at its own position. An f16 cache (--kv-type f16) gives what an f32
    cache of the same values gives, bit for bit (its rows are widened exactly as loaded), and so
    does a q8_0 cache (its d * q, made exactly as loaded; the NaN rows no token sees quantise to
    blocks that read as NaN)."""
    if isa not in attention_paths:
        pytest.skip(f"this CPU cannot run {isa}")
    got = attention_paths[isa]
    assert str(got["isa"]) == isa
    for case in attention_cases():
        q, kc, vc = attention_inputs(*case)
        one, two = got[f"{case}/1"], got[f"{case}/2"]
        assert one.tobytes() == two.tobytes(), f"{case}: 2 threads differ from 1"
        np.testing.assert_array_equal(got[f"{case}/first"], one[:1], err_msg=f"{case}: first token")
        assert got[f"{case}/f16"].tobytes() == got[f"{case}/widened"].tobytes(), f"{case}: f16 cache"
        assert not np.isnan(got[f"{case}/f16"]).any(), f"{case}: f16 cache read an unseen position"
        if case[4] % 32 == 0:
            assert got[f"{case}/q8_0"].tobytes() == got[f"{case}/q8_0 values"].tobytes(), f"{case}: q8_0 cache"
            assert not np.isnan(got[f"{case}/q8_0"]).any(), f"{case}: q8_0 cache read an unseen position"
        check_attention(one, q, kc, vc, case[0], attention_bound_for(isa), case[-1])


@pytest.mark.parametrize("window", [1, 3, 8])
def test_attention_window_and_scale(window):
    """A sliding window and a scale other than hd^-0.5 (Gemma 3, Granite) on this CPU's path, a
    prefill and the decode steps after it, against float64; a window of 1 is the value row."""
    rng = rng_for("window", window)
    q, kc, vc = rand(rng, 12, 4, 16, scale=2.0), rand(rng, 12, 2, 16), rand(rng, 12, 2, 16)
    for n_past, t in ((0, 9), (9, 1), (10, 2)):
        out = np.empty_like(q[:t])
        K.attention(out, q[n_past:n_past + t], heads_first(kc), heads_first(vc), n_past, window, 0.0625)
        want = attention_reference(q[n_past:n_past + t], kc, vc, n_past, window, 0.0625)
        np.testing.assert_allclose(out, want, atol=2e-6 * np.abs(vc).max())
        if window == 1:
            np.testing.assert_array_equal(out, vc[n_past:n_past + t].repeat(2, axis=1))


def test_rope_turns_only_the_first_rotary_dims():
    """A partial rotary (Phi-4-mini: 3/4 of each head): inv_freq's length says how many elements
    turn, in rotate-half pairs among themselves; the rest pass unchanged."""
    rng = rng_for("partial rope")
    x = rand(rng, 3, 2, 16)
    pos = np.arange(5, 8, dtype=np.int32)
    inv_freq = (10000.0 ** (-np.arange(0, 12, 2) / 12)).astype(np.float32)  # 12 of 16 dims
    want, scale = rope_reference(x[..., :12], pos, inv_freq)
    y = x.copy()
    K.rope(y, pos, inv_freq)
    assert (np.abs(y[..., :12] - want) <= ROPE_BOUND * scale).all()
    np.testing.assert_array_equal(y[..., 12:], x[..., 12:])


def test_gelu_mul():
    """GELU's tanh form (PyTorch's approximate="tanh", Gemma's gate) times up, against float64."""
    rng = rng_for("gelu")
    g, up = rand(rng, 3, 50, scale=4.0), rand(rng, 3, 50)
    g.flat[:3] = [0.0, -30.0, 30.0]
    out = np.empty_like(g)
    K.gelu_mul(out, g, up)
    x = g.astype(np.float64)
    want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))) * up
    # for negative x, 1 + tanh cancels: the error is bounded by x * up's size, not the result's
    assert (np.abs(out - want) <= 1e-6 * np.abs(x * up)).all()


@pytest.mark.parametrize("shape", [(7,), (3, 50), (2, 2, 33)])
def test_silu_mul(shape):
    rng = rng_for("silu", shape)
    g, up = rand(rng, *shape, scale=4.0), rand(rng, *shape)
    g.flat[:3] = [0.0, -80.0, 100.0]  # zero, exp(80) large but finite, exp(-100) below f32
    out = np.empty_like(g)
    K.silu_mul(out, g, up)
    g64 = g.astype(np.float64)
    want = g64 / (1 + np.exp(-g64)) * up
    assert (np.abs(out - want) <= SILU_BOUND * np.abs(want)).all()


# --- argument checking --------------------------------------------------------------------------

def read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def q8_weights(rows=4, k=64):
    return ref.quantize(rand(rng_for("w", rows, k), rows, k), Q8_0)


@pytest.mark.parametrize("call,match", [
    # dtype
    (lambda: K.matmul(np.empty((2, 4), np.float32), np.zeros((2, 64)), q8_weights(), Q8_0.id), "float32"),
    (lambda: K.matmul(np.empty((2, 4), np.int32), np.zeros((2, 64), np.float32), q8_weights(), Q8_0.id),
     "float32"),
    (lambda: K.get_rows(np.empty((1, 64), np.float32), q8_weights(), Q8_0.id, np.zeros(1, np.int64)), "int32"),
    # shapes
    (lambda: K.matmul(np.empty((3, 4), np.float32), np.zeros((2, 64), np.float32), q8_weights(), Q8_0.id),
     "shape"),
    (lambda: K.matmul(np.empty((2, 5), np.float32), np.zeros((2, 64), np.float32), q8_weights(), Q8_0.id),
     "bytes"),
    (lambda: K.matmul(np.empty((2, 4), np.float32), np.zeros((2, 48), np.float32), np.zeros(4 * 51, np.uint8),
                      Q8_0.id), "multiple of 32"),
    (lambda: K.rmsnorm(np.empty((2, 8), np.float32), np.zeros((2, 8), np.float32), np.ones(9, np.float32),
                       1e-5), "shape"),
    (lambda: K.rope(np.zeros((2, 1, 8), np.float32), np.zeros(2, np.int32), np.ones(5, np.float32)), "inv_freq"),
    (lambda: K.rope(np.zeros((2, 1, 7), np.float32), np.zeros(2, np.int32), np.ones(3, np.float32)), "even"),
    (lambda: K.silu_mul(np.empty(4, np.float32), np.zeros(4, np.float32), np.zeros(5, np.float32)), "shape"),
    # weight buffers
    (lambda: K.matmul(np.empty((2, 4), np.float32), np.zeros((2, 64), np.float32), q8_weights().ravel()[:-1],
                      Q8_0.id), "bytes"),
    (lambda: K.get_rows(np.empty((1, 64), np.float32), q8_weights().ravel()[:-2], Q8_0.id,
                        np.zeros(1, np.int32)), "whole number"),
    (lambda: K.matmul(np.empty((2, 4), np.float32), np.zeros((2, 64), np.float32), q8_weights(), 9), "type"),
    (lambda: K.matmul(np.empty((1, 2), np.float32), np.zeros((1, 4), np.float32),
                      np.zeros(33, np.uint8)[1:], F32.id), "aligned"),
    # ids
    (lambda: K.get_rows(np.empty((2, 64), np.float32), q8_weights(), Q8_0.id, np.array([0, 4], np.int32)),
     "out of range"),
    (lambda: K.get_rows(np.empty((1, 64), np.float32), q8_weights(), Q8_0.id, np.array([-1], np.int32)),
     "out of range"),
    # attention
    (lambda: K.attention(np.empty((3, 2, 8), np.float32), np.zeros((3, 2, 8), np.float32),
                         np.zeros((2, 4, 8), np.float32), np.zeros((2, 4, 8), np.float32), 2), "n_ctx"),
    (lambda: K.attention(np.empty((1, 2, 8), np.float32), np.zeros((1, 2, 8), np.float32),
                         np.zeros((2, 4, 8), np.float32), np.zeros((2, 4, 8), np.float32), -1), "n_ctx"),
    (lambda: K.attention(np.empty((1, 4, 8), np.float32), np.zeros((1, 4, 8), np.float32),
                         np.zeros((3, 4, 8), np.float32), np.zeros((3, 4, 8), np.float32), 0), "multiple"),
    (lambda: K.attention(np.empty((1, 2, 8), np.float32), np.zeros((1, 2, 8), np.float32),
                         np.zeros((2, 4, 8), np.float32), np.zeros((2, 5, 8), np.float32), 0), "shape"),
    (lambda: K.attention(np.empty((1, 2, 8), np.float32), np.zeros((1, 2, 8), np.float32),
                         np.zeros((2, 4, 8), np.float32), np.zeros((2, 4, 8), np.float16), 0), "one element type"),
    # layout and writability
    (lambda: K.matmul(np.empty((2, 4), np.float32), np.zeros((2, 128), np.float32)[:, ::2], q8_weights(),
                      Q8_0.id), "contiguous"),
    (lambda: K.silu_mul(np.empty((4, 4), np.float32).T, np.zeros((4, 4), np.float32),
                        np.zeros((4, 4), np.float32)), "contiguous"),
    (lambda: K.rope(read_only(np.zeros((2, 1, 8), np.float32)), np.zeros(2, np.int32), np.ones(4, np.float32)),
     "writable"),
    (lambda: K.silu_mul(np.broadcast_to(np.empty(4, np.float32), (4,)), np.zeros(4, np.float32),
                        np.zeros(4, np.float32)), "writable"),
    (lambda: K.quantize(bytes(68), np.zeros((1, 64), np.float32), Q8_0.id), "writable"),
    (lambda: K.quantize(np.empty(67, np.uint8), np.zeros((1, 64), np.float32), Q8_0.id), "bytes"),
    (lambda: K.quantize_q16a(np.empty(80, np.uint8), np.zeros((1, 48), np.float32)), "multiple of 32"),
    (lambda: K.row_bytes(Q4_0.id, 48), "multiple of 32"),
    (lambda: K.row_bytes(99, 32), "type"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_overlapping_output_is_rejected():
    buf = np.zeros(2 * 64 + 2 * 4, np.float32)
    x, out = buf[:128].reshape(2, 64), buf[126:134].reshape(2, 4)
    with pytest.raises(ValueError, match="overlap"):
        K.matmul(out, x, q8_weights(), Q8_0.id)


# --- dispatch -----------------------------------------------------------------------------------

def import_with_isa(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMRUN_ISA": value}
    return subprocess.run([sys.executable, "-c", "import llmrun._kernels as K; print(K.isa())"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_isa_is_one_this_cpu_runs():
    assert K.isa() in K.isas()
    assert "scalar" in K.isas()


def test_forced_isa():
    r = import_with_isa("scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"


def test_unknown_isa_fails_at_import_with_a_clear_message():
    r = import_with_isa("vax")
    assert r.returncode != 0
    assert "LLMRUN_ISA=vax" in r.stderr and "unknown" in r.stderr and "scalar" in r.stderr


# --- the type table -----------------------------------------------------------------------------

def test_c_traits_match_the_python_table():
    """kernels/cpu/types.c's TRAITS holds the same facts as quant/types.py's table, for the same
    types: a type added to one and not the other, or a field that differs, fails here."""
    python = {t.id: {"name": t.name, "block_size": t.block_size, "type_size": t.type_size,
                     "n_scales": t.n_scales, "scales_at": t.scales_at, "act": t.act, "x16": t.x16}
              for t in TABLE if t.stored}
    assert K.type_traits() == python


def test_unknown_type_id_names_the_known_ones():
    known = ", ".join(f"{t.name}={t.id}" for t in sorted(ALL_TYPES, key=lambda t: t.id))
    with pytest.raises(ValueError, match=rf"^unknown tensor type id 15 \(known: {known}\)$"):
        K.row_bytes(15, 256)  # q8_k: import-only, no kernels


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_a_missing_kernel_is_named_by_the_import_check(t):
    """At import, llmr_dispatch runs llmr_kernels_check on every ISA table the build has (not only
    the ones this CPU runs): a vec_dot for every type, a gemm_x16 for every X16 type. Here the
    same check runs on a copy of the table in use with one entry removed: it names the ISA and
    the type. The token-tile and gemm kernels are optional (NULL: vec_dot per token)."""
    assert K._check_kernels("none", t.id) is None
    assert K._check_kernels("vec_dot", t.id) == \
        f"kernel table {K.isa()} has no vec_dot for {t.name} weights (kernels/cpu/dispatch.c)"
    assert K._check_kernels("gemm_x16", t.id) == \
        (f"kernel table {K.isa()} has no gemm_x16 for {t.name} weights (kernels/cpu/dispatch.c)" if t.x16 else None)
    assert K._check_kernels("vec_dot_tile", t.id) is None
    assert K._check_kernels("gemm", t.id) is None
    with pytest.raises(ValueError, match="vec_dot, vec_dot_tile, gemm, gemm_x16 or none"):
        K._check_kernels("rope", t.id)


@pytest.mark.parametrize("t", [Q3_K, Q2_K], ids=lambda t: t.name)
def test_c_q3_k_q2_k_quantisers_are_llama_cpps(t):
    """The C quantisers (what conversion runs) give llama.cpp's bytes for test_kquants' 4,096
    super-blocks, as the numpy ones do."""
    import hashlib
    sys.path.insert(0, os.path.dirname(__file__))
    from test_kquants import Q23_K_LLAMA_CPP, _q23_k_inputs
    seed, digest = Q23_K_LLAMA_CPP[t.name]
    assert hashlib.sha256(kernel_quantize(_q23_k_inputs(seed), t).tobytes()).hexdigest() == digest


@pytest.mark.parametrize("t", [Q3_K, Q2_K], ids=lambda t: t.name)
def test_q3_k_q2_k_read_every_bit(t):
    """Random bytes (every scale, min, hmask and quant bit pattern; finite f16 scales) against the
    reference: the kernels read each field where quant/kquants.py does."""
    rng = rng_for("every bit", t.name)
    nb = 3
    w = rng.integers(0, 256, (9, nb * t.type_size), dtype=np.uint8).reshape(9, nb, t.type_size)
    for at in range(t.scales_at, t.scales_at + 2 * t.n_scales, 2):
        w[..., at:at + 2] = (rng.standard_normal((9, nb, 1)) * 0.01).astype(np.float16).view(np.uint8)
    w = w.reshape(9, -1)
    x = rand(rng, 5, nb * 256, scale=2.0)
    got = kernel_matmul(x, w, t, 9).astype(np.float64)
    bound = (QUANT_DOT_BOUND if K.isa() == "scalar" else QUANT_DOT_SIMD_BOUND)(nb * 8) * matmul_magnitude(w, t, x)
    assert (np.abs(got - ref.matmul(w, t, x)) <= bound).all()
