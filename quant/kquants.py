"""Exact dequantisers for the k-quants (GGUF types we import; of them we run q2_k .. q6_k, whose
dequantisers here are also reference.dequantize's).

The GGUF importer turns these tensors into float32 here and re-quantises them into a runnable
type. "Exact" means the same float32 operations in the same order as ggml's
`dequantize_row_*` (ggml-quants.c) and gguf-py's numpy `quants.py`, so the output is
bit-identical to `gguf.quants.dequantize`: f16 scales widen to float32, a block's scale is
multiplied out first (d * sc), then applied to the integer quant, then the min is subtracted.

Order barely matters, and that is why this is robust: every product is exact in float32 (an f16
has 11 significant bits, a sub-block scale at most 7, a quant at most 6: under float32's 24),
so the one rounding is the final `+ m` / `- dmin * m`. A C build that fuses it into an FMA
gives the same bits. q8_k's f32 scale times an int8 rounds once, as in ggml.

q2_k .. q6_k are stored and run too: reference.py uses _q2_k .. _q6_k below (bit-identical
to gguf-py's, tests/test_kquants.py) and dequantize_ggml sends them there. q5_0 and q5_1 are runnable, stored types now: their exact dequantisers are in reference.py
(bit-identical to gguf-py's, tests/test_kquants.py), which dequantize_ggml calls for them.

Layouts (little-endian; "element e" counts within the block):

k-quants: super-blocks of 256 in sub-blocks of 16 or 32, each with a small integer scale that
multiplies the f16 super-block scale d (and a min that multiplies dmin):

    q2_k  { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }
          16 groups of 16: x = (d * (sc & 15)) * q - dmin * (sc >> 4)
          q (2 bits): byte qs[32h + l], bits 2j, for element 128h + 32j + l
    q3_k  { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }
          16 groups of 16: x = (d * (sc - 32)) * (q - (4 if hmask bit is clear else 0))
          q low 2 bits as q2_k; the high bit is bit e // 32 of hmask[e % 32];
          sc (6 bits): low 4 bits from scales[s % 8] (nibble s // 8),
                       high 2 bits from scales[8 + s % 4] (bits 2 * (s // 4))
    q4_k  { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }
          8 groups of 32: x = (d * sc) * q - dmin * m
          q: byte qs[32 * (s // 2) + l], nibble s % 2, for element 32s + l
          sc, m (6 bits each) from scales = a[4] b[4] c[4]:
              s < 4:  sc = a & 63,                  m = b & 63
              s >= 4: sc = (c & 15) | (a >> 6) << 4, m = (c >> 4) | (b >> 6) << 4
    q5_k  { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
          as q4_k, plus the fifth bit: bit s of qh[l] for element 32s + l
    q6_k  { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }
          16 groups of 16: x = (d * sc) * (q - 32)
          for element 128h + 32k + l: low 4 bits from ql[64h + 32(k % 2) + l] (nibble k // 2),
          high 2 bits from qh[32h + l] (bits 2k)
    q8_k  { f32 d; i8 qs[256]; i16 bsums[16]; }    x = d * q  (bsums only serve dot products)

iq4_xs (import-only, turned into iq4_nl blocks by restore_blocks): iq4_nl's levels in super-blocks

    iq4_xs { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }
          8 groups of 32: x = (d * (ls - 32)) * IQ4_NL_VALUES[q], ls 6 bits: its low 4 bits the
          nibble s % 2 of scales_l[s // 2], its high 2 bits bits 2s, 2s + 1 of scales_h;
          q: group s's 16 bytes qs[16s ..], element j the low nibble of byte j, j + 16 the high
"""
from __future__ import annotations

import numpy as np

from .reference import _IQ4_NL_F32, _f16_field, _split_blocks, dequantize
from .types import IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, TYPES_BY_ID, QType, ggml_type, qtype


def _planes(b: np.ndarray, width: int, count: int) -> np.ndarray:
    """[..., k] bytes -> [..., count, k]: plane i holds bits [width*i, width*(i+1)) of every byte.

    Every k-quant packs its fields this way: a run of consecutive elements shares one bit
    position across consecutive bytes, so planes laid end to end are the elements in order."""
    shifts = np.arange(0, width * count, width, dtype=np.uint8)[:, None]  # [count, 1]
    return (b[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _k_scales(scales: np.ndarray):
    """q4_k / q5_k: 12 bytes [..., 12] -> (sc, m), each uint8 [..., 8] of 6-bit values."""
    a, b, c = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]  # [..., 4] each
    sc = np.concatenate([a & 63, (c & 15) | (a >> 6) << 4], axis=-1)
    m = np.concatenate([b & 63, (c >> 4) | (b >> 6) << 4], axis=-1)
    return sc, m


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def _q2_k_fields(blk: np.ndarray):
    """[..., nb, 84] -> (d, dmin float32 [..., nb, 1, 1], sc, m uint8 [..., nb, 16] (0..15), q uint8
    [..., nb, 16, 16] (0..3)): sub-block s is x = (d * sc_s) * q - dmin * m_s. Shared by the
    dequantiser below and the reference dot product (reference.q2_k_fields)."""
    lead = blk.shape[:-1]
    scales = blk[..., 0:16]  # [..., nb, 16]
    qs = blk[..., 16:80].reshape(*lead, 2, 32)  # [..., nb, half, 32]
    d, dmin = _f16_field(blk, 80)[..., None], _f16_field(blk, 82)[..., None]  # [..., nb, 1, 1]
    q = _planes(qs, 2, 4).reshape(*lead, 16, 16)  # [..., nb, half, shift, 32] -> groups of 16
    return d, dmin, scales & 15, scales >> 4, q


def _q2_k(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 84] -> [..., nb, 16, 16]: 16 groups of 16."""
    d, dmin, sc, m, q = _q2_k_fields(blk)
    dl = d * _f32(sc)[..., None]  # [..., nb, 16, 1]
    ml = dmin * _f32(m)[..., None]  # [..., nb, 16, 1]
    return dl * _f32(q) - ml


def _q3_k_fields(blk: np.ndarray):
    """[..., nb, 110] -> (d float32 [..., nb, 1, 1], sc int8 [..., nb, 16] (-32..31), q int8
    [..., nb, 16, 16] (-4..3)): sub-block s is x = (d * sc_s) * q. Shared by the dequantiser
    below and the reference dot product (reference.q3_k_fields)."""
    lead = blk.shape[:-1]
    hmask = blk[..., 0:32]  # [..., nb, 32]
    qs = blk[..., 32:96].reshape(*lead, 2, 32)  # [..., nb, half, 32]
    scales = blk[..., 96:108]  # [..., nb, 12]
    d = _f16_field(blk, 108)[..., None]  # [..., nb, 1, 1]
    lo = _planes(scales[..., 0:8], 4, 2).reshape(*lead, 16)  # group s: nibble s // 8 of byte s % 8
    hi = _planes(scales[..., 8:12], 2, 4).reshape(*lead, 16)  # group s: bits 2(s // 4) of byte 8 + s % 4
    sc = (lo | hi << 4).astype(np.int8) - np.int8(32)  # [..., nb, 16], -32..31
    ql = _planes(qs, 2, 4).reshape(*lead, 16, 16)  # low 2 bits, as q2_k
    hbit = _planes(hmask, 1, 8).reshape(*lead, 16, 16)  # bit e // 32 of hmask[e % 32]
    q = ql.astype(np.int8) - np.where(hbit == 1, np.int8(0), np.int8(4))  # clear high bit: -4; -4..3
    return d, sc, q


def _q3_k(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 110] -> [..., nb, 16, 16]: 16 groups of 16."""
    d, sc, q = _q3_k_fields(blk)
    return (d * _f32(sc)[..., None]) * _f32(q)


def _q45_k(blk: np.ndarray, ql: np.ndarray, qh: np.ndarray | None) -> np.ndarray:
    """Shared q4_k / q5_k arithmetic: 8 groups of 32 -> [..., nb, 8, 32]."""
    lead = blk.shape[:-1]
    d, dmin = _f16_field(blk, 0)[..., None], _f16_field(blk, 2)[..., None]  # [..., nb, 1, 1]
    sc, m = _k_scales(blk[..., 4:16])  # [..., nb, 8] each
    q = _planes(ql.reshape(*lead, 4, 32), 4, 2).reshape(*lead, 8, 32)  # group s: nibble s % 2
    if qh is not None:
        q = q | _planes(qh, 1, 8) << 4  # [..., nb, 8, 32]: bit s of qh[l]
    return (d * _f32(sc)[..., None]) * _f32(q) - dmin * _f32(m)[..., None]


def _q4_k(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 144] -> [..., nb, 8, 32]"""
    return _q45_k(blk, blk[..., 16:144], None)


def _q5_k(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 176] -> [..., nb, 8, 32]"""
    return _q45_k(blk, blk[..., 48:176], blk[..., 16:48])


def _q6_k_fields(blk: np.ndarray):
    """[..., nb, 210] -> (d float32 [..., nb, 1, 1], sc int8 [..., nb, 16], q - 32 int8
    [..., nb, 16, 16] in -32..31): sub-block s is x = (d * sc_s) * (q - 32). Shared by the
    dequantiser below and the reference dot product (reference.q6_k_fields)."""
    lead = blk.shape[:-1]
    ql = blk[..., 0:128].reshape(*lead, 2, 64)  # [..., nb, half, 64]
    qh = blk[..., 128:192].reshape(*lead, 2, 32)  # [..., nb, half, 32]
    sc = np.ascontiguousarray(blk[..., 192:208]).view(np.int8)  # [..., nb, 16]
    d = _f16_field(blk, 208)[..., None]  # [..., nb, 1, 1]
    lo = _planes(ql, 4, 2).reshape(*lead, 256)  # [half, nibble, 64]: element 128h + 64 nibble + byte
    hi = _planes(qh, 2, 4).reshape(*lead, 256)  # [half, shift, 32]: element 128h + 32k + l
    q = (lo | hi << 4).astype(np.int8) - np.int8(32)  # -32..31
    return d, sc, q.reshape(*lead, 16, 16)


def _q6_k(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 210] -> [..., nb, 16, 16]: 16 groups of 16."""
    d, sc, q = _q6_k_fields(blk)
    return (d * _f32(sc)[..., None]) * _f32(q)


def _q8_k(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 292] -> [..., nb, 256]"""
    d = np.ascontiguousarray(blk[..., 0:4]).view(np.float32)  # [..., nb, 1]: f32, not f16
    q = np.ascontiguousarray(blk[..., 4:260]).view(np.int8)  # [..., nb, 256]
    return d * _f32(q)


def _iq4_xs_fields(blk: np.ndarray):
    """[..., nb, 136] -> (dl float32 [..., nb, 8, 1]: each group's scale d * (ls - 32), exact in
    float32 (11 significant bits times 6); q uint8 [..., nb, 8, 16]: the groups' quant bytes)."""
    d = _f16_field(blk, 0)[..., None]  # [..., nb, 1, 1]
    low = _planes(blk[..., 4:8], 4, 2).swapaxes(-1, -2).reshape(*blk.shape[:-1], 8)  # group 2j + i: nibble i of byte j
    ls = (low | _scales_h(blk) << 4).astype(np.int8) - np.int8(32)  # -32 .. 31
    return d * _f32(ls)[..., None], blk[..., 8:].reshape(*blk.shape[:-1], 8, 16)


def _scales_h(blk: np.ndarray) -> np.ndarray:
    """iq4_xs's scales_h: the high 2 bits of each group's ls, uint8 [..., nb, 8]."""
    h = blk[..., 2].astype(np.uint16) | blk[..., 3].astype(np.uint16) << 8  # [..., nb]
    return ((h[..., None] >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)


def _iq4_xs(blk: np.ndarray) -> np.ndarray:
    """[..., nb, 136] -> [..., nb, 8, 32]"""
    dl, q = _iq4_xs_fields(blk)
    return dl * _IQ4_NL_F32[np.concatenate([q & 15, q >> 4], axis=-1)]


_DEQUANTIZERS = {Q2_K: _q2_k, Q3_K: _q3_k, Q4_K: _q4_k,
                 Q5_K: _q5_k, Q6_K: _q6_k, Q8_K: _q8_k, IQ4_XS: _iq4_xs}


def restore_blocks(data: np.ndarray, t: QType, n: int) -> np.ndarray:
    """uint8 [..., row_bytes(n)] of import-only type t -> the same rows in t.restored_as's blocks.

    iq4_xs -> iq4_nl: each group of 32 becomes an iq4_nl block with the same quant bytes and the
    scale d * (ls - 32) rounded to f16 (iq4_nl's d): the one rounding, at most 2^-11 of the scale
    for a normal f16 (the values move by that fraction; 4-bit levels are 2^-4 .. 2^-3 apart).
    A scale past f16's range (a group of values over about 8e6: no model's weights) is refused."""
    if t is not IQ4_XS:
        raise ValueError(f"{t.name} blocks are not restored as another type's")
    blocks = _split_blocks(data, t, n)  # [..., nb, 136]
    dl, q = _iq4_xs_fields(blocks)  # [..., nb, 8, 1], [..., nb, 8, 16]
    with np.errstate(over="ignore"):
        d16 = dl.astype(np.float16)
    if not np.isfinite(d16[np.isfinite(dl)]).all():
        raise ValueError("an iq4_xs scale is past float16's range, which iq4_nl blocks cannot hold: convert with "
                         "--type q8_0 (or f16) instead")
    out = np.concatenate([d16.view(np.uint8), q], axis=-1)  # [..., nb, 8, 18]
    return out.reshape(*blocks.shape[:-2], qtype(t.restored_as).row_bytes(n))


def dequantize_ggml(data: np.ndarray, t, n: int) -> np.ndarray:
    """uint8 [..., row_bytes(n)] of any GGML type we read -> float32 [..., n].

    `t` is a QType or a GGML type id. The runnable types go to `reference.dequantize`, so the
    GGUF importer has one call for every tensor it can read."""
    t = ggml_type(t) if not isinstance(t, QType) else t
    if TYPES_BY_ID.get(t.id) is t:
        return dequantize(data, t, n)
    try:
        fn = _DEQUANTIZERS[t]
    except KeyError:
        raise ValueError(f"no dequantiser for {t.name}") from None
    blocks = _split_blocks(data, t, n)  # [..., nb, type_size]; checks the row length
    with np.errstate(over="ignore", invalid="ignore"):  # a corrupt file's inf/NaN scales: the converter refuses them
        return fn(blocks).reshape(*blocks.shape[:-2], n)
