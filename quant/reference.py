"""Numpy reference for every tensor type: the ground truth the C, SIMD and GPU kernels are held to.

`quantize(x, t)` turns float32 rows into the bytes of type `t`; `dequantize(data, t, n)` turns
them back. The rounding rules are the GGUF reference quantisers' (float32 arithmetic, scales
stored as f16), so a tensor quantised here is what llama.cpp would write for it.

Activations for the integer dot products are quantised on the fly into `q16_a` blocks:
`{ f32 d; f32 s; int16 qs[32]; }` with d = max|x| / 32767, q = round(x / d), s = d * sum(q).
They never reach a file, so their scales stay f32; `s` lets q4_0 / q4_1 fold the weight's
offset (-8 or m) into one multiply per block.
A q16_a block is 32 elements whatever the weight type: that is the activation format, not a
weight fact (a weight's block size is its table entry's; a QK_K super-block spans 8 of them).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConvertError
from .types import BF16, F16, F32, IQ4_NL, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, QType, qtype

Q16A_BLOCK = 32  # elements per q16_a activation block (kernels/include/llmrun.h's QK_Q16_A)
F16_MAX = 65504.0  # the largest finite float16: bounds f16 values, and the scales of the block types
Q16A_BYTES = 72  # bytes per q16_a activation block
Q16B_BYTES = 80  # bytes per q16_b block: q16_a's integers as byte planes (kernels/include/llmrun.h)


def _round_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves round away from zero (numpy's round is half-to-even). Exact: the
    fraction a - floor(a) is computed without rounding, unlike floor(a + 0.5), which rounds
    0.49999997 up to 1."""
    a = np.abs(v)
    whole = np.floor(a)
    return np.sign(v) * (whole + (a - whole >= np.float32(0.5)))


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d is 0 (an all-zero block)."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """[..., n] float32 -> [..., n/size, size]: blocks of `size` elements."""
    if x.shape[-1] % size:
        raise ValueError(f"rows must be a multiple of {size} elements to quantise, got {x.shape[-1]}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[..., 32] ints in 0..15 -> [..., 16] bytes: element j low nibble, element j+16 high."""
    q = q.astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] ints in 0..15."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _pack_q5(q: np.ndarray):
    """[..., 32] ints in 0..31 -> (qh [..., 4] bytes, qs [..., 16] bytes): the low four bits as
    q4's nibbles, bit 4 of element j as bit j of the little-endian u32 qh."""
    q = q.astype(np.uint8)
    qh = np.packbits(q >> 4, axis=-1, bitorder="little")
    return qh, _pack_nibbles(q & 0x0F)


def _unpack_q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """(qh [..., 4], qs [..., 16]) bytes -> [..., 32] ints in 0..31."""
    return _unpack_nibbles(qs) | np.unpackbits(qh, axis=-1, bitorder="little") << 4


def _to_bytes(fields, lead_shape) -> np.ndarray:
    """Concatenate per-block fields (each [..., nb, k] of any dtype) into [..., nb * block bytes]."""
    parts = [np.ascontiguousarray(f).view(np.uint8).reshape(*f.shape[:-1], -1) for f in fields]
    blocks = np.concatenate(parts, axis=-1)
    return blocks.reshape(*lead_shape, -1)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (bits >> 16) | 0x0040, rounded).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


# --- q4_k: llama.cpp's quantize_row_q4_K_ref, vectorised over sub-blocks -----------------------
# Every float32 operation of the C (kernels/cpu/quants_ref.c) in the same order, the sums taken
# element by element as the C loops take them, so the bytes match it (and llama.cpp) exactly.

def _sum(a: np.ndarray) -> np.ndarray:
    """a [..., n] summed over its last axis in order, a[..., 0] first (keepdims), in a's dtype:
    as the C adds (a sum from -0.0, which adds to any first term exactly), so that the C twins
    of the calibrated searches give these bytes (numpy's own sums go pairwise)."""
    s = a[..., 0:1]
    for i in range(1, a.shape[-1]):
        s = s + a[..., i:i + 1]
    return s


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: the low mantissa bits of v + 1.5 * 2^23 (round half to even for
    |v| < 2^22; the same bits as the C beyond that)."""
    with np.errstate(over="ignore", invalid="ignore"):
        val = (v.astype(np.float32) + np.float32(12582912.0)).astype(np.float32)
    return (val.view(np.int32) & 0x007FFFFF) - 0x00400000


def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                      use_mad: bool = False):
    """make_qkx2_quants(use_mad) on each row of x [M, n] with weights w [M, n] -> (scale [M],
    the_min [M], L [M, n] uint8). Errors are weighted squares, or with use_mad (q2_k's)
    weighted absolute values."""
    f = np.float32
    n = x.shape[1]
    lo, hi = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        lo = np.where(x[:, i] < lo, x[:, i], lo)
        hi = np.where(x[:, i] > hi, x[:, i], hi)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    lo = np.where(lo > 0, f(0), lo)
    flat = hi == lo
    start_min = lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = hi - lo
        iscale = f(nmax) / span
        scale = f(1) / iscale
        L = np.clip(_nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax).astype(f)
        best = np.zeros_like(lo)
        err = np.abs if use_mad else np.square
        for i in range(n):
            best = best + w[:, i] * err(scale * L[:, i] + lo - x[:, i])
        for step in range(nstep + 1):
            # as the C: min (lo) is the best fit's so far, so later steps scale from it
            iscale = (f(rmin) + f(rdelta) * f(step) + f(nmax)) / (hi - lo)
            La = np.clip(_nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax).astype(f)
            sum_l = np.zeros_like(lo)
            sum_l2 = np.zeros_like(lo)
            sum_xl = np.zeros_like(lo)
            for i in range(n):
                wl = w[:, i] * La[:, i]
                sum_l = sum_l + wl
                sum_l2 = sum_l2 + wl * La[:, i]
                sum_xl = sum_xl + wl * x[:, i]
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, f(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            mad = np.zeros_like(lo)
            for i in range(n):
                mad = mad + w[:, i] * err(this_scale * La[:, i] + this_min - x[:, i])
            better = (D > 0) & (mad < best)
            L = np.where(better[:, None], La, L)
            best = np.where(better, mad, best)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
    scale = np.where(flat, f(0), scale).astype(f)
    the_min = -np.where(flat, start_min, lo).astype(f)
    L = np.where(flat[:, None], f(0), L)
    return scale, the_min, L.astype(np.uint8)


def _quantize_k_scales(b: np.ndarray, nmax: int, rmin: float, nstep: int, importance: np.ndarray | None = None,
                       rdelta: float = 0.1, grid: float = 0.0):
    """What quantize_row_q4_K_ref and quantize_row_q5_K_ref share: b float32 [..., nb, 256] ->
    (d, dmin float16 [S], the 12 packed scale bytes [S, 12], the quants L uint8 [S, 8, 32] in
    0..nmax) for the S super-blocks: make_qkx2_quants(nmax, rmin, rdelta 0.1, nstep) per
    sub-block, 6-bit scales and mins, then every value quantised again with them.
    The calibrated quantiser (quant/calibrate.py) varies it: `importance` (float32, b's shape)
    multiplies each value's weight in the sub-block fit, `rdelta` and `nstep` widen the search,
    and `grid` puts the largest 6-bit scale and min at 63 + grid (clipped to 63) rather than 63."""
    f = np.float32
    sb = b.reshape(-1, 8, 32)  # [S, 8 sub-blocks, 32]
    S = sb.shape[0]
    xs = sb.reshape(-1, 32)  # [S * 8, 32]
    sum_x2 = np.zeros(xs.shape[0], f)
    for i in range(32):
        sum_x2 = sum_x2 + xs[:, i] * xs[:, i]
    av_x = np.sqrt(sum_x2 / f(32))
    weights = av_x[:, None] + np.abs(xs)
    if importance is not None:
        weights = weights * importance.reshape(-1, 32).astype(f)
    scales, mins, L = _make_qkx2_quants(xs, weights, nmax, rmin, rdelta, nstep)
    scales, mins, L = scales.reshape(S, 8), mins.reshape(S, 8), L.reshape(S, 8, 32)
    max_scale = np.zeros(S, f)  # [S]; `if (v > max) max = v` from +0: a -0.0 min never gets in
    max_min = np.zeros(S, f)
    for j in range(8):
        max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
        max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
    top = f(63 + grid)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, top / max_scale, f(0)).astype(f)
        inv_min = np.where(max_min > 0, top / max_min, f(0)).astype(f)
    ls = np.minimum(63, _nearest_int(inv_scale[:, None] * scales) & 0xFF).astype(np.uint8)  # [S, 8]
    lm = np.minimum(63, _nearest_int(inv_min[:, None] * mins) & 0xFF).astype(np.uint8)
    packed = np.zeros((S, 12), np.uint8)
    packed[:, 0:4] = ls[:, :4] | (ls[:, 4:] >> 4) << 6
    packed[:, 4:8] = lm[:, :4] | (lm[:, 4:] >> 4) << 6
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | (lm[:, 4:] & 0xF) << 4
    d = (max_scale / top).astype(np.float16)
    dmin = (max_min / top).astype(np.float16)
    d1 = d.astype(f)[:, None] * ls.astype(f)  # [S, 8]
    dm = dmin.astype(f)[:, None] * lm.astype(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest_int((sb + dm[..., None]) / d1[..., None]), 0, nmax).astype(np.uint8)
    L = np.where((d1 != 0)[..., None], requant, L)  # d = 0: the sub-block keeps make_qkx2_quants' L
    return d, dmin, packed, L


def _quantize_q4_k(b: np.ndarray, lead, **fit) -> np.ndarray:
    """b float32 [..., nb, 256] -> the q4_k bytes [..., nb * 144] (`fit`: _quantize_k_scales's
    calibrated variations)."""
    d, dmin, packed, L = _quantize_k_scales(b, 15, **{"rmin": -1.0, "nstep": 20, **fit})
    L = L.reshape(-1, 4, 2, 32)
    qs = (L[:, :, 0] | L[:, :, 1] << 4).reshape(-1, 128)
    out = np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), packed, qs], axis=-1)
    return out.reshape(*lead, -1)


def _quantize_q5_k(b: np.ndarray, lead, **fit) -> np.ndarray:
    """b float32 [..., nb, 256] -> the q5_k bytes [..., nb * 176]: q4_k's nibbles, and the fifth
    bit of element 32s + l as bit s of qh[l]."""
    d, dmin, packed, L = _quantize_k_scales(b, 31, **{"rmin": -0.5, "nstep": 15, **fit})  # L [S, 8, 32] in 0..31
    low = (L & 0x0F).reshape(-1, 4, 2, 32)
    qs = (low[:, :, 0] | low[:, :, 1] << 4).reshape(-1, 128)
    qh = ((L >> 4) << np.arange(8, dtype=np.uint8)[:, None]).sum(axis=1, dtype=np.uint8)  # [S, 32]
    out = np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), packed, qh, qs], axis=-1)
    return out.reshape(*lead, -1)


def q4_k_fields(blocks: np.ndarray):
    """q4_k (or q5_k) blocks [..., nb, 144 (176)] -> (d * sc, dmin * m) float64 [..., nb, 8] and
    the quants uint8 [..., nb, 8, 32]: sub-block j is x = (d sc_j) q - (dmin m_j), lined up with
    q16_a block j; a q5_k quant has its fifth bit (bit j of qh[l]) added."""
    from .kquants import _k_scales, _planes
    lead = blocks.shape[:-1]
    d = _f16_field(blocks, 0).astype(np.float64)  # [..., nb, 1]
    dmin = _f16_field(blocks, 2).astype(np.float64)
    sc, m = _k_scales(blocks[..., 4:16])
    five = blocks.shape[-1] == Q5_K.type_size
    qs = blocks[..., 48 if five else 16:].reshape(*lead, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]
    q = (qs & 0x0F).reshape(*lead, 8, 32)
    if five:
        q = q | _planes(blocks[..., 16:48], 1, 8) << 4  # [..., nb, 8, 32]: bit j of qh[l]
    return d * sc, dmin * m, q


# --- q6_k: llama.cpp's quantize_row_q6_K_ref, vectorised over sub-blocks -----------------------
# As q4_k's above: kernels/cpu/quants_ref.c's float32 operations in its order (the sums element by
# element), so the bytes are the C's and llama.cpp's (tests/test_kquants.py pins them).

GROUP_MAX_EPS = np.float32(1e-15)  # ggml's: a sub-block (or super-block) of smaller values counts as zero


def _make_qx_quants(x: np.ndarray, nmax: int, importance: np.ndarray | None = None, weights: np.ndarray | None = None):
    """make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL) on each row of x [M, n]: the
    signed scale of the best of 19 trial grids, each scored by the least-squares fit of x to
    scale * l (l in -nmax .. nmax - 1) weighted by x^2 -> (scale [M], L [M, n] uint8, l + nmax).
    `importance` (float32 [M, n]; the calibrated quantiser's) multiplies the weights; `weights`
    (float32 [M, n]) replaces them."""
    f = np.float32
    n = x.shape[1]
    amax = np.zeros(x.shape[0], f)
    top = np.zeros(x.shape[0], f)  # the value of largest magnitude, the first of equals
    for i in range(n):
        bigger = np.abs(x[:, i]) > amax
        amax = np.where(bigger, np.abs(x[:, i]), amax)
        top = np.where(bigger, x[:, i], top)
    zero = amax < GROUP_MAX_EPS

    def trial(iscale):
        """The grid of 1 / iscale: its quants l and the weighted sums sum(w x l), sum(w l^2)."""
        l = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1).astype(f)
        sumlx = np.zeros_like(iscale)
        suml2 = np.zeros_like(iscale)
        for i in range(n):
            w = (weights[:, i] if weights is not None else x[:, i] * x[:, i] if importance is None
                 else x[:, i] * x[:, i] * importance[:, i])
            sumlx = sumlx + w * x[:, i] * l[:, i]
            suml2 = suml2 + w * l[:, i] * l[:, i]
        return l, sumlx, suml2

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # all-zero rows: masked below
        L, sumlx, suml2 = trial(f(-nmax) / top)
        scale = np.where(suml2 != 0, sumlx / suml2, f(0)).astype(f)
        best = scale * sumlx
        for step in [*range(-9, 0), *range(1, 10)]:
            la, sumlx, suml2 = trial(-(f(nmax) + f(0.1) * f(step)) / top)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], la, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, f(0), scale).astype(f)
    L = np.where(zero[:, None], f(0), L + f(nmax))
    return scale, L.astype(np.uint8)


def _quantize_q6_k(b: np.ndarray, lead, importance: np.ndarray | None = None, grid: float = 0.0) -> np.ndarray:
    """b float32 [..., nb, 256] -> the q6_k bytes [..., nb * 210]. The calibrated quantiser
    (quant/calibrate.py) varies it: `importance` (float32, b's shape) multiplies each value's
    weight in the sub-block fit; `grid` puts the largest int8 scale at -(128 + grid)."""
    f = np.float32
    sb = b.reshape(-1, 16, 16)  # [S, 16 sub-blocks, 16]
    S = sb.shape[0]
    scales, L = _make_qx_quants(sb.reshape(-1, 16), 32, None if importance is None else importance.reshape(-1, 16))
    scales, L = scales.reshape(S, 16), L.reshape(S, 16, 16)
    max_abs = np.zeros(S, f)  # `if (|v| > max_abs)` from 0: the first of equal magnitudes
    max_scale = np.zeros(S, f)
    for j in range(16):
        bigger = np.abs(scales[:, j]) > max_abs
        max_abs = np.where(bigger, np.abs(scales[:, j]), max_abs)
        max_scale = np.where(bigger, scales[:, j], max_scale)
    zero = max_abs < GROUP_MAX_EPS  # the whole block is stored as zero bytes
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f(-128 - grid) / max_scale
        d = (f(1) / iscale).astype(np.float16)
        sc = np.clip(_nearest_int(iscale[:, None] * scales), -128, 127).astype(np.int8)  # [S, 16]
        dq = d.astype(f)[:, None] * sc.astype(f)  # [S, 16]
        requant = np.clip(_nearest_int(sb / dq[..., None]), -32, 31) + 32
    L = np.where((dq != 0)[..., None], requant, L).astype(np.uint8)  # dq = 0: make_qx_quants' L stays
    # element 128h + 32k + l: low nibble in ql[64h + 32(k % 2) + l] (nibble k // 2), high two
    # bits in qh[32h + l] (bits 2k); quant/kquants.py reads them back
    q = L.reshape(S, 2, 4, 32)  # [S, half, k, l]
    ql = ((q[:, :, 0:2] & 0xF) | (q[:, :, 2:4] & 0xF) << 4).reshape(S, 128)
    qh = (q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6).reshape(S, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d[:, None].view(np.uint8)], axis=-1)
    out[zero] = 0
    return out.reshape(*lead, -1)


def q6_k_fields(blocks: np.ndarray):
    """q6_k blocks [..., nb, 210] -> d float64 [..., nb, 8] (the super-block's scale, once per
    q16_a block it spans) and the integer weights sc * (q - 32) int32 [..., nb, 8, 32]: q16_a
    block j meets sub-blocks 2j and 2j + 1, each with its own scale sc."""
    from .kquants import _q6_k_fields
    lead = blocks.shape[:-1]
    d, sc, q = _q6_k_fields(blocks)  # [..., nb, 1, 1], [..., nb, 16], [..., nb, 16, 16]
    wq = sc.astype(np.int32)[..., None] * q.astype(np.int32)
    return np.broadcast_to(d.reshape(*lead, 1).astype(np.float64), (*lead, 8)), wq.reshape(*lead, 8, 32)


# --- q3_k and q2_k: llama.cpp's quantize_row_q3_K_ref and quantize_row_q2_K_ref, vectorised over
# sub-blocks of 16 as q6_k's above (kernels/cpu/quants_ref.c does the same operations in order).

def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """L uint8 [S, 256] in 0..3 -> qs [S, 64]: element 128h + 32k + l at bits 2k of qs[32h + l]."""
    q = L.reshape(-1, 2, 4, 32)  # [S, half, k, l]
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(-1, 64)


def _make_q3_quants(x: np.ndarray, nmax: int, importance: np.ndarray | None = None):
    """make_q3_quants(n, nmax, x, L, do_rmse = true) on each row of x [M, n]: the grid of
    -nmax / max (max the value of largest magnitude), then up to five passes that move one quant
    at a time where that improves the x^2-weighted least-squares fit -> (scale [M], L [M, n]
    uint8, l + nmax). A pass that changes nothing ends the C's loop; further passes would change
    nothing either, so all rows take five. `importance` (float32 [M, n]; the calibrated
    quantiser's) multiplies the weights."""
    f = np.float32
    n = x.shape[1]
    amax = np.zeros(x.shape[0], f)
    top = np.zeros(x.shape[0], f)  # the value of largest magnitude, the first of equals
    for i in range(n):
        bigger = np.abs(x[:, i]) > amax
        amax = np.where(bigger, np.abs(x[:, i]), amax)
        top = np.where(bigger, x[:, i], top)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # zero rows: masked below
        iscale = f(-nmax) / top
        L = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1).astype(f)
        w = x * x if importance is None else x * x * importance
        sumlx = np.zeros_like(iscale)
        suml2 = np.zeros_like(iscale)
        for i in range(n):
            sumlx = sumlx + w[:, i] * x[:, i] * L[:, i]
            suml2 = suml2 + w[:, i] * L[:, i] * L[:, i]
        for _ in range(5):
            for i in range(n):
                slx = sumlx - w[:, i] * x[:, i] * L[:, i]
                sl2 = suml2 - w[:, i] * L[:, i] * L[:, i]
                new_l = np.clip(_nearest_int(x[:, i] * sl2 / slx), -nmax, nmax - 1).astype(f)
                slx2 = slx + w[:, i] * x[:, i] * new_l
                sl22 = sl2 + w[:, i] * new_l * new_l
                take = (slx > 0) & (new_l != L[:, i]) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[:, i] = np.where(take, new_l, L[:, i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, f(0)).astype(f)
    scale = np.where(zero, f(0), scale)
    L = np.where(zero[:, None], f(0), L + f(nmax))
    return scale, L.astype(np.uint8)


def _quantize_q3_k(b: np.ndarray, lead, importance: np.ndarray | None = None, grid: float = 0.0,
                   search: bool = False) -> np.ndarray:
    """b float32 [..., nb, 256] -> the q3_k bytes [..., nb * 110]. The calibrated quantiser
    (quant/calibrate.py) varies it: `importance` (float32, b's shape) multiplies each value's
    weight in the sub-block fits, and `grid` puts the largest 6-bit scale at -(32 + grid)
    (clipped to -32) rather than -32. With `search` (and `importance`) each sub-block's scale is
    instead the best of make_qx_quants' 19 grids, each value weighted by its importance times
    sqrt(sigma^2 + x^2) (sigma^2: twice the super-block's mean square, as imatrix quantisers
    weigh), and the 16 scales are put on the 6-bit grid by the same search, each weighted by
    its sub-block's summed weight."""
    f = np.float32
    sb = b.reshape(-1, 16, 16)  # [S, 16 sub-blocks, 16]
    S = sb.shape[0]
    sw = None
    if search and importance is not None:
        sigma2 = f(2) * (_sum(sb.reshape(S, 256) ** 2)[:, 0] / f(256))
        w = importance.reshape(S, 16, 16).astype(f) * np.sqrt(sigma2[:, None, None] + sb * sb)
        scales, L = _make_qx_quants(sb.reshape(-1, 16), 4, weights=w.reshape(-1, 16))
        sw = _sum(w)[..., 0]  # [S, 16]
    else:
        scales, L = _make_q3_quants(sb.reshape(-1, 16), 4, None if importance is None else importance.reshape(-1, 16))
    scales, L = scales.reshape(S, 16), L.reshape(S, 16, 16)
    amax = np.zeros(S, f)  # `if (|v| > amax)` from 0: the first of equal magnitudes
    max_scale = np.zeros(S, f)
    for j in range(16):
        bigger = np.abs(scales[:, j]) > amax
        amax = np.where(bigger, np.abs(scales[:, j]), amax)
        max_scale = np.where(bigger, scales[:, j], max_scale)
    live = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if sw is not None:
            d, l = _make_qx_quants(scales, 32, weights=sw)
            l, d = np.where(live[:, None], l, 0).astype(np.uint8), np.where(live, d, f(0)).astype(np.float16)
        else:
            iscale = f(-32 - grid) / max_scale
            l = np.where(live[:, None], np.clip(_nearest_int(iscale[:, None] * scales), -32, 31) + 32, 0).astype(np.uint8)
            d = np.where(live, f(1) / iscale, f(0)).astype(np.float16)
    # 6-bit scale j: low nibble in byte j % 8 (nibble j // 8), high two bits in byte 8 + j % 4
    # (bits 2 (j // 4)); a dead block's bytes are all zero
    packed = np.zeros((S, 12), np.uint8)
    packed[:, 0:8] = (l[:, 0:8] & 0xF) | (l[:, 8:16] & 0xF) << 4
    hi = (l >> 4).reshape(S, 4, 4)  # [S, j // 4, j % 4]
    packed[:, 8:12] = hi[:, 0] | hi[:, 1] << 2 | hi[:, 2] << 4 | hi[:, 3] << 6
    packed = np.where(live[:, None], packed, np.uint8(0))
    from .kquants import _planes
    sc = (_planes(packed[:, 0:8], 4, 2).reshape(S, 16) | _planes(packed[:, 8:12], 2, 4).reshape(S, 16) << 4)
    dq = d.astype(f)[:, None] * (sc.astype(f) - f(32))  # [S, 16]
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest_int(sb / dq[..., None]), -4, 3) + 4
    L = np.where((dq != 0)[..., None], requant, L).astype(np.uint8).reshape(S, 256)  # 0..7
    # the high bit of element e at bit e // 32 of hmask[e % 32], the low two bits as q2_k's
    hmask = ((L >> 2).reshape(S, 8, 32) << np.arange(8, dtype=np.uint8)[:, None]).sum(axis=1, dtype=np.uint8)
    out = np.concatenate([hmask, _pack_2bit(L & 3), packed, d[:, None].view(np.uint8)], axis=-1)
    return out.reshape(*lead, -1)


def _fit_codes(v: np.ndarray, w: np.ndarray, nmax: int):
    """Non-negative values v [M, n] on a grid d * l, l in 0 .. nmax, least weighted squared error
    (weights w [M, n]): for the grid nmax / max and 18 around it (steps of a tenth), the values'
    codes and then d by weighted least squares; the best kept -> (d float16 [M], l uint8 [M, n])."""
    f = np.float32
    vmax = v.max(axis=-1)
    best_err = np.full(v.shape[0], np.inf, f)
    d, l = np.zeros(v.shape[0], np.float16), np.zeros(v.shape, np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(-9, 10):
            lc = np.clip(_nearest_int(((f(nmax) + f(0.1) * f(step)) / vmax)[:, None] * v), 0, nmax).astype(f)
            den = _sum(w * lc * lc)[:, 0]
            dc = np.where(den > 0, _sum(w * v * lc)[:, 0] / den, f(0)).astype(np.float16)
            err = _sum(w * (v - dc.astype(f)[:, None] * lc) ** 2)[:, 0]
            better = (vmax > 0) & (err < best_err)
            best_err = np.where(better, err, best_err)
            d, l = np.where(better, dc, d), np.where(better[:, None], lc, l).astype(np.uint8)
    return d, l


def _quantize_q2_k(b: np.ndarray, lead, importance: np.ndarray | None = None, rmin: float = -0.5,
                   rdelta: float = 0.1, nstep: int = 15) -> np.ndarray:
    """b float32 [..., nb, 256] -> the q2_k bytes [..., nb * 84]. The calibrated quantiser
    (quant/calibrate.py) varies it: with `importance` (float32, b's shape) each value weighs its
    importance times sqrt(sigma^2 + x^2) (sigma^2: the super-block's mean square), the sub-block
    fits (`rmin`, `rdelta` and `nstep` move their search) score squared errors, and the 16
    scales and 16 mins are put on their 4-bit grids by _fit_codes, each weighted by its
    sub-block's summed weight."""
    f = np.float32
    sb = b.reshape(-1, 16, 16)  # [S, 16 sub-blocks, 16]
    S = sb.shape[0]
    xs = sb.reshape(-1, 16)
    if importance is None:
        weights = np.abs(xs)
    else:
        sigma2 = _sum(sb.reshape(S, 256) ** 2)[:, 0] / f(256)
        weights = (importance.reshape(S, 16, 16).astype(f) * np.sqrt(sigma2[:, None, None] + sb * sb)).reshape(-1, 16)
    scales, mins, L = _make_qkx2_quants(xs, weights, 3, rmin, rdelta, nstep, use_mad=importance is None)
    scales, mins, L = scales.reshape(S, 16), mins.reshape(S, 16), L.reshape(S, 16, 16)
    if importance is not None:
        sw = _sum(weights.reshape(S, 16, 16))[..., 0]
        d, ls = _fit_codes(scales, sw, 15)
        dmin, lm = _fit_codes(mins, sw, 15)
    else:
        max_scale = np.zeros(S, f)  # `if (v > max)` from +0
        max_min = np.zeros(S, f)
        for j in range(16):
            max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
            max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # 4-bit codes of each scale and min (the C stores the int unclamped: & 0xFF as a byte)
            ls = np.where((max_scale > 0)[:, None], _nearest_int((f(15) / max_scale)[:, None] * scales), 0)
            lm = np.where((max_min > 0)[:, None], _nearest_int((f(15) / max_min)[:, None] * mins), 0)
            d = np.where(max_scale > 0, max_scale / f(15), f(0)).astype(np.float16)
            dmin = np.where(max_min > 0, max_min / f(15), f(0)).astype(np.float16)
    codes = ((ls & 0xFF) | (lm << 4) & 0xFF).astype(np.uint8)  # [S, 16]
    dq = d.astype(f)[:, None] * (codes & 0xF).astype(f)
    dm = dmin.astype(f)[:, None] * (codes >> 4).astype(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest_int((sb + dm[..., None]) / dq[..., None]), 0, 3)
    L = np.where((dq != 0)[..., None], requant, L).astype(np.uint8).reshape(S, 256)
    out = np.concatenate([codes, _pack_2bit(L), d[:, None].view(np.uint8), dmin[:, None].view(np.uint8)], axis=-1)
    return out.reshape(*lead, -1)


def q3_k_fields(blocks: np.ndarray):
    """q3_k blocks [..., nb, 110] -> d float64 [..., nb, 8] (the super-block's scale, once per
    q16_a block it spans) and the integer weights sc * q int32 [..., nb, 8, 32] (sc -32..31, q
    -4..3): q16_a block j meets sub-blocks 2j and 2j + 1, as q6_k's."""
    from .kquants import _q3_k_fields
    lead = blocks.shape[:-1]
    d, sc, q = _q3_k_fields(blocks)
    wq = sc.astype(np.int32)[..., None] * q.astype(np.int32)
    return np.broadcast_to(d.reshape(*lead, 1).astype(np.float64), (*lead, 8)), wq.reshape(*lead, 8, 32)


def q2_k_fields(blocks: np.ndarray):
    """q2_k blocks [..., nb, 84] -> (d, dmin float64 [..., nb, 8], once per q16_a block, and int32
    [..., nb, 8, 32] integer weights sc * q and mins m per element): x = d * (sc q) - dmin * m."""
    from .kquants import _q2_k_fields
    lead = blocks.shape[:-1]
    d, dmin, sc, m, q = _q2_k_fields(blocks)
    wq = (sc.astype(np.int32)[..., None] * q.astype(np.int32)).reshape(*lead, 8, 32)
    wm = np.repeat(m.astype(np.int32), 16, axis=-1).reshape(*lead, 8, 32)
    wide = (lambda v: np.broadcast_to(v.reshape(*lead, 1).astype(np.float64), (*lead, 8)))
    return wide(d), wide(dmin), wq, wm


# --- iq4_nl: llama.cpp's quantize_iq4_nl without an importance matrix -----------------------------
# The same float32 operations in the same order as its quantize_row_iq4_nl_impl for one block of
# 32 with ntry = 7 (what llama-quantize runs; quantize_row_iq4_nl_ref's ntry = -1 skips the search
# and the final pass), the sums element by element; kernels/cpu/quants_ref.c does the same in C.
# tests/test_kquants.py pins the bytes against llama.cpp's own code.

# GGML's kvalues_iq4nl: the 16 levels a 4-bit iq4_nl quant stands for, denser near zero, where
# most weights are (kernels/include/llmrun.h holds the same table: test_kernels compares them).
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_IQ4_NL_F32 = IQ4_NL_VALUES.astype(np.float32)


def _iq4_nl_index(v: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 over IQ4_NL_VALUES, elementwise on float32 v: the index of the
    nearest level, the upper one unless v - lower < upper - v (float32 differences, as the C);
    v at or past an end level takes it; NaN takes 15, as the C's search ends there."""
    upper = np.clip(np.searchsorted(_IQ4_NL_F32, v, side="right"), 1, 15)  # levels[upper - 1] <= v < levels[upper]
    with np.errstate(invalid="ignore"):
        nearer_lower = (v - _IQ4_NL_F32[upper - 1]) < (_IQ4_NL_F32[upper] - v)
    i = np.where(nearer_lower, upper - 1, upper)
    return np.where(v <= _IQ4_NL_F32[0], 0, np.where(v >= _IQ4_NL_F32[15], 15, i)).astype(np.uint8)


def _iq4_nl_fit(b: np.ndarray, w: np.ndarray, iscale: np.ndarray):
    """The grid of 1 / iscale over blocks b [M, 32] weighted by w: (sum w q x, sum w q^2) [M]."""
    q = _IQ4_NL_F32[_iq4_nl_index(iscale[:, None] * b)]  # [M, 32]
    sumqx = np.zeros(b.shape[0], np.float32)
    sumq2 = np.zeros(b.shape[0], np.float32)
    for j in range(b.shape[1]):
        wq = w[:, j] * q[:, j]
        sumqx = sumqx + wq * b[:, j]
        sumq2 = sumq2 + wq * q[:, j]
    return sumqx, sumq2


def _quantize_iq4_nl(b: np.ndarray, lead, importance: np.ndarray | None = None, square: bool = True) -> np.ndarray:
    """b float32 [..., nb, 32] -> the iq4_nl bytes [..., nb * 18]. The calibrated quantiser
    (quant/calibrate.py) varies it: `importance` (float32, b's shape) multiplies each value's
    weight in the fits, its square, or (not `square`) stands for it."""
    f = np.float32
    x = b.reshape(-1, 32)
    amax = np.zeros(x.shape[0], f)
    top = np.zeros(x.shape[0], f)  # the value of largest magnitude, the first of equals
    for j in range(32):
        bigger = np.abs(x[:, j]) > amax
        amax = np.where(bigger, np.abs(x[:, j]), amax)
        top = np.where(bigger, x[:, j], top)
    zero = amax < GROUP_MAX_EPS  # scale 0
    w = x * x  # without an importance matrix each value weighs its square
    if importance is not None:
        w = w * importance.reshape(-1, 32) if square else np.ascontiguousarray(importance.reshape(-1, 32), dtype=f)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        # the largest magnitude on the end level -127, then 15 grids around it, the best kept
        sumqx, sumq2 = _iq4_nl_fit(x, w, f(1) / (-top / f(-127)))
        d = np.where(sumq2 > 0, sumqx / sumq2, f(0)).astype(f)
        best = d * sumqx
        for step in range(-7, 8):
            sumqx, sumq2 = _iq4_nl_fit(x, w, f(step - 127) / top)
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d).astype(f)
            best = np.where(better, d * sumqx, best)
        d = np.where(zero, f(0), d)
        # every value again on the chosen (f32, not yet f16) scale
        L = _iq4_nl_index(np.where(d != 0, f(1) / d, f(0))[:, None] * x)
    out = np.concatenate([d.astype(np.float16)[:, None].view(np.uint8), _pack_nibbles(L)], axis=-1)
    return out.reshape(*lead, -1)


def check_weights(x: np.ndarray, t) -> None:
    """Refuse model weights that `t` would store as garbage: NaN or infinity anywhere, or
    magnitudes past what float16 values and scales hold (a block's scale is its largest value
    over 127, 8 or 15: well inside f16 for any weight that fits in f16 itself). The converters
    call this; `quantize` itself takes anything, as the kernels do."""
    t = qtype(t) if not isinstance(t, QType) else t
    if not np.isfinite(x).all():
        raise ConvertError("the weights hold NaN or infinite values")
    if t not in (F32, BF16) and x.size and np.abs(x).max() > F16_MAX:
        raise ConvertError(f"weights of magnitude {np.abs(x).max():.4g} do not fit in {t.name} (float16 tops out "
                           f"at {F16_MAX:g}): convert to f32 or bf16")


def quantize(x: np.ndarray, t) -> np.ndarray:
    """float32 [..., n] -> uint8 [..., row_bytes(n)] in the layout of type `t`."""
    t = qtype(t) if not isinstance(t, QType) else t
    x = np.ascontiguousarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    if t is F32:
        return x.view(np.uint8).reshape(*lead, -1)
    if t is F16:
        return x.astype(np.float16).view(np.uint8).reshape(*lead, -1)
    if t is BF16:
        return f32_to_bf16(x).view(np.uint8).reshape(*lead, -1)
    b = _blocks(x, t.block_size)  # [..., nb, 32]
    if t is Q8_0:  # as quantize_row_q8_0_ref: a block with a NaN (an infinity) gets d NaN (inf), q 0
        amax = np.abs(b).max(axis=-1, keepdims=True)  # NaN wins
        d = amax / np.float32(127)
        inv = _inverse(d)
        inv = np.where(np.isfinite(inv), inv, np.float32(0))  # d NaN, inf, or too small to invert
        with np.errstate(invalid="ignore"):
            v = b * inv
        q = _round_away(np.where(np.isnan(v), np.float32(0), v)).astype(np.int8)
        return _to_bytes([d.astype(np.float16), q], lead)
    if t is Q4_0:
        idx = np.abs(b).argmax(axis=-1)[..., None]
        signed_max = np.take_along_axis(b, idx, axis=-1)  # the value of largest magnitude
        d = signed_max / np.float32(-8)
        q = np.minimum(15, np.trunc(b * _inverse(d) + np.float32(8.5)))
        return _to_bytes([d.astype(np.float16), _pack_nibbles(q)], lead)
    if t is Q4_1:
        lo = b.min(axis=-1, keepdims=True)
        hi = b.max(axis=-1, keepdims=True)
        d = (hi - lo) / np.float32(15)
        q = np.minimum(15, np.trunc((b - lo) * _inverse(d) + np.float32(0.5)))
        return _to_bytes([d.astype(np.float16), lo.astype(np.float16), _pack_nibbles(q)], lead)
    if t is Q5_0:  # llama.cpp's quantize_row_q5_0_ref: as q4_0, the largest magnitude maps to -16
        idx = np.abs(b).argmax(axis=-1)[..., None]
        d = np.take_along_axis(b, idx, axis=-1) / np.float32(-16)
        q = np.minimum(31, np.trunc(b * _inverse(d) + np.float32(16.5)))
        return _to_bytes([d.astype(np.float16), *_pack_q5(q)], lead)
    if t is Q5_1:  # quantize_row_q5_1_ref: as q4_1 with 31 steps
        lo = b.min(axis=-1, keepdims=True)
        hi = b.max(axis=-1, keepdims=True)
        d = (hi - lo) / np.float32(31)
        q = np.minimum(31, np.trunc((b - lo) * _inverse(d) + np.float32(0.5)))
        return _to_bytes([d.astype(np.float16), lo.astype(np.float16), *_pack_q5(q)], lead)
    if t is Q2_K:  # llama.cpp's quantize_row_q2_K_ref (make_qkx2_quants per sub-block of 16, 4-bit scales)
        return _quantize_q2_k(b, lead)
    if t is Q3_K:  # llama.cpp's quantize_row_q3_K_ref (make_q3_quants per sub-block of 16, 6-bit scales)
        return _quantize_q3_k(b, lead)
    if t is IQ4_NL:  # llama.cpp's quantize_iq4_nl without an importance matrix
        return _quantize_iq4_nl(b, lead)
    if t is Q4_K:  # llama.cpp's quantize_row_q4_K_ref (make_qkx2_quants per sub-block, 6-bit scales)
        return _quantize_q4_k(b, lead)
    if t is Q5_K:  # llama.cpp's quantize_row_q5_K_ref (q4_k's with 5-bit quants)
        return _quantize_q5_k(b, lead)
    if t is Q6_K:  # llama.cpp's quantize_row_q6_K_ref (make_qx_quants per sub-block, int8 scales)
        return _quantize_q6_k(b, lead)
    raise ValueError(f"no quantiser for {t.name}")


def _split_blocks(data: np.ndarray, t: QType, n: int) -> np.ndarray:
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.shape[-1] != t.row_bytes(n):
        raise ValueError(f"{t.name} row of {n} elements takes {t.row_bytes(n)} bytes, got {data.shape[-1]}")
    return data.reshape(*data.shape[:-1], n // t.block_size, t.type_size)


def _f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f16 at byte `offset` of each block, as float32 [..., nb, 1]."""
    return np.ascontiguousarray(blocks[..., offset:offset + 2]).view(np.float16).astype(np.float32)


def dequantize(data: np.ndarray, t, n: int) -> np.ndarray:
    """uint8 [..., row_bytes(n)] of type `t` -> float32 [..., n]."""
    t = qtype(t) if not isinstance(t, QType) else t
    blocks = _split_blocks(data, t, n)
    lead = blocks.shape[:-2]
    if t is F32:
        return np.ascontiguousarray(blocks).view(np.float32).reshape(*lead, n)
    if t is F16:
        return np.ascontiguousarray(blocks).view(np.float16).astype(np.float32).reshape(*lead, n)
    if t is BF16:
        return bf16_to_f32(np.ascontiguousarray(blocks).view(np.uint16)).reshape(*lead, n)
    if t is Q8_0:
        q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).astype(np.float32)
        return (_f16_field(blocks, 0) * q).reshape(*lead, n)
    if t is Q4_0:
        q = _unpack_nibbles(blocks[..., 2:]).astype(np.float32)
        return (_f16_field(blocks, 0) * (q - 8)).reshape(*lead, n)
    if t is Q4_1:
        q = _unpack_nibbles(blocks[..., 4:]).astype(np.float32)
        return (_f16_field(blocks, 0) * q + _f16_field(blocks, 2)).reshape(*lead, n)
    if t is Q5_0:  # gguf-py's and ggml's order: (q - 16) exact, then one rounding of d * it
        q = _unpack_q5(blocks[..., 2:6], blocks[..., 6:]).astype(np.float32) - np.float32(16)
        return (_f16_field(blocks, 0) * q).reshape(*lead, n)
    if t is Q5_1:  # d * q exact (11 x 5 bits), so the one rounding is + m
        q = _unpack_q5(blocks[..., 4:8], blocks[..., 8:]).astype(np.float32)
        return (_f16_field(blocks, 0) * q + _f16_field(blocks, 2)).reshape(*lead, n)
    if t is IQ4_NL:  # gguf-py's and ggml's: d * level, one rounding
        q = _IQ4_NL_F32[_unpack_nibbles(blocks[..., 2:])]
        return (_f16_field(blocks, 0) * q).reshape(*lead, n)
    if t is Q2_K:  # gguf-py's arithmetic (quant/kquants.py, tested bit-identical against it)
        from .kquants import _q2_k
        return _q2_k(blocks).reshape(*lead, n)
    if t is Q3_K:  # the same, for q3_k
        from .kquants import _q3_k
        return _q3_k(blocks).reshape(*lead, n)
    if t is Q4_K:  # the same, for q4_k
        from .kquants import _q4_k
        return _q4_k(blocks).reshape(*lead, n)
    if t is Q5_K:  # the same, for q5_k
        from .kquants import _q5_k
        return _q5_k(blocks).reshape(*lead, n)
    if t is Q6_K:  # the same, for q6_k
        from .kquants import _q6_k
        return _q6_k(blocks).reshape(*lead, n)
    raise ValueError(f"no dequantiser for {t.name}")


# --- activations -------------------------------------------------------------------------------

def quantize_q16a(x: np.ndarray):
    """float32 [..., n] -> (d [..., nb], s [..., nb], q int16 [..., nb, 32]) as the kernels make them."""
    b = _blocks(np.ascontiguousarray(x, dtype=np.float32), Q16A_BLOCK)
    a = np.abs(b)
    d = np.where(np.isnan(a), np.float32(0), a).max(axis=-1) / np.float32(32767)  # NaN left out of the max
    # 1/d only where it is finite (llmr_q16_a_inverse), and NaN products to 0, as the kernels do;
    # inf and NaN in the input are expected here, so numpy need not warn of them
    with np.errstate(over="ignore", invalid="ignore"):
        id = np.where((d >= np.float32(2.0 ** -126)) & (d <= np.finfo(np.float32).max), _inverse(d), np.float32(0))
        v = b * id.astype(np.float32)[..., None]
        q = _round_away(np.where(np.isnan(v), np.float32(0), v)).astype(np.int16)
        s = d * q.astype(np.int32).sum(axis=-1).astype(np.float32)
    return d, s, q


def q16a_to_bytes(d, s, q) -> np.ndarray:
    """The q16_a blocks as bytes [..., nb * 72], for comparing with a kernel's output."""
    return _to_bytes([d[..., None].astype(np.float32), s[..., None].astype(np.float32), q], d.shape[:-1])


def q16b_to_bytes(d, s, q) -> np.ndarray:
    """q16_a blocks (quantize_q16a's d, s, q) as the q16_b blocks made from them, bytes [..., nb * 80]:
    d, s, s16 (d times the sums of each 16 elements), q's low bytes (unsigned), q's high bytes
    (signed, q = lo + 256 hi)."""
    halves = q.astype(np.int32).reshape(*q.shape[:-1], 2, 16).sum(axis=-1).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # inf d (inputs gone to overflow), as quantize_q16a
        s16 = d[..., None].astype(np.float32) * halves
    lo, hi = (q & 0xFF).astype(np.uint8), (q >> 8).astype(np.int8)
    return _to_bytes([d[..., None].astype(np.float32), s[..., None].astype(np.float32), s16, lo, hi], d.shape[:-1])


def matmul(w: np.ndarray, t, x: np.ndarray) -> np.ndarray:
    """Reference y = x @ W^T with the kernels' arithmetic, in float64.

    w: uint8 [N, row_bytes(K)] of type t; x: float32 [T, K]  ->  float32 [T, N].
    Float weights multiply the float32 activations directly. Quantised weights multiply
    q16_a activations block by block, with the integer sums exact:
        q8_0:  sum_b dw * da * sum(qw * qa)
        q4_0:  sum_b dw * (da * sum(qw * qa) - 8 * sa)
        q4_1:  sum_b dw * da * sum(qw * qa) + mw * sa
        q5_0:  sum_b dw * da * sum((qw - 16) * qa)    (signed weights, no offset term)
        q5_1:  sum_b dw * da * sum(qw * qa) + mw * sa
        iq4_nl: sum_b dw * da * sum(IQ4_NL_VALUES[qw] * qa)    (signed levels, no offset term)
        q4_k:  sum over sub-blocks j (32 each, q16_a block j): (d sc_j) * da * sum(qw * qa) - (dmin m_j) * sa
        q5_k:  as q4_k, qw with its fifth bit
        q6_k:  sum over q16_a blocks j: d * da * sum(sc * (qw - 32) * qa), sc that of each
               element's sub-block of 16 (two per q16_a block); signed weights, no offset
        q3_k:  as q6_k, the integer weights sc * q (sc -32..31, q -4..3)
        q2_k:  sum over q16_a blocks j: d * da * sum(sc * qw * qa) - dmin * da * sum(m * qa),
               sc and m those of each element's sub-block of 16 (the min's sum per sub-block, not
               q16_a's s, which spans two)
    """
    t = qtype(t) if not isinstance(t, QType) else t
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = x.shape[-1]
    # below, weight block b meets activation block b: true of these types, whose blocks are q16_a's size
    if t.quantized and t not in (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
        raise ValueError(f"no reference matmul for {t.name}")
    if not t.quantized:
        return (x.astype(np.float64) @ dequantize(w, t, k).astype(np.float64).T).astype(np.float32)
    blocks = _split_blocks(w, t, k)  # [N, nb, type_size]
    if t in (Q4_K, Q5_K):
        dsc, dmm, qw = q4_k_fields(blocks)  # [N, nb, 8], [N, nb, 8], [N, nb, 8, 32]
        n_rows = blocks.shape[0]
        da, sa, qa = quantize_q16a(x)  # [T, nb * 8], ...
        isum = np.einsum("nbj,tbj->tnb", qw.reshape(n_rows, -1, 32).astype(np.int64),
                         qa.astype(np.int64)).astype(np.float64)
        da, sa = da.astype(np.float64)[:, None, :], sa.astype(np.float64)[:, None, :]
        y = (dsc.reshape(n_rows, -1) * da * isum - dmm.reshape(n_rows, -1) * sa).sum(-1)
        return y.astype(np.float32)
    if t is Q2_K:
        d, dmin, wq, wm = q2_k_fields(blocks)  # [N, nb, 8] x 2, [N, nb, 8, 32] x 2
        n_rows = blocks.shape[0]
        da, _, qa = quantize_q16a(x)
        qa = qa.astype(np.int64)
        isum = np.einsum("nbj,tbj->tnb", wq.reshape(n_rows, -1, 32).astype(np.int64), qa).astype(np.float64)
        msum = np.einsum("nbj,tbj->tnb", wm.reshape(n_rows, -1, 32).astype(np.int64), qa).astype(np.float64)
        da = da.astype(np.float64)[:, None, :]
        y = (da * (d.reshape(n_rows, -1) * isum - dmin.reshape(n_rows, -1) * msum)).sum(-1)
        return y.astype(np.float32)
    if t in (Q3_K, Q6_K):
        d, wq = (q3_k_fields if t is Q3_K else q6_k_fields)(blocks)  # [N, nb, 8], [N, nb, 8, 32]
        n_rows = blocks.shape[0]
        da, _, qa = quantize_q16a(x)  # [T, nb * 8], ..., [T, nb * 8, 32]
        isum = np.einsum("nbj,tbj->tnb", wq.reshape(n_rows, -1, 32).astype(np.int64),
                         qa.astype(np.int64)).astype(np.float64)
        y = (d.reshape(n_rows, -1) * da.astype(np.float64)[:, None, :] * isum).sum(-1)
        return y.astype(np.float32)
    dw = _f16_field(blocks, 0)[..., 0].astype(np.float64)  # [N, nb]
    da, sa, qa = quantize_q16a(x)  # [T, nb], [T, nb], [T, nb, 32]
    if t is Q8_0:
        qw = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    elif t is Q5_0:
        qw = _unpack_q5(blocks[..., 2:6], blocks[..., 6:]).astype(np.int64) - 16
    elif t is Q5_1:
        qw = _unpack_q5(blocks[..., 4:8], blocks[..., 8:])
    elif t is IQ4_NL:
        qw = IQ4_NL_VALUES[_unpack_nibbles(blocks[..., 2:])]
    else:
        qw = _unpack_nibbles(blocks[..., 4:] if t is Q4_1 else blocks[..., 2:])
    isum = np.einsum("nbj,tbj->tnb", qw.astype(np.int64), qa.astype(np.int64)).astype(np.float64)
    da, sa = da.astype(np.float64)[:, None, :], sa.astype(np.float64)[:, None, :]  # [T, 1, nb]
    if t in (Q8_0, Q5_0, IQ4_NL):
        y = (dw * da * isum).sum(-1)
    elif t is Q4_0:
        y = (dw * (da * isum - 8 * sa)).sum(-1)
    else:
        mw = _f16_field(blocks, 2)[..., 0].astype(np.float64)
        y = (dw * da * isum + mw * sa).sum(-1)
    return y.astype(np.float32)
