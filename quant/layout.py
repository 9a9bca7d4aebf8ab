"""Weight layouts: how a matrix's blocks lie in a .llmr file (recorded per tensor).

ROWS is GGUF's: each row its blocks in order. X16 (the types whose table entry says x16: q8_0,
q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k .. q6_k; rows a multiple of 16) is what the SIMD kernels read:
groups of 16 consecutive rows; each group its blocks in order; each block of a group stored as the
16 rows' first f16 scale field (d), then (q4_1, q5_1, q2_k, q4_k, q5_k: n_scales = 2) their second (m;
the k-quants' dmin), then the rows' other bytes, in their order, as 4-byte words, word c of row r
at (c * 16 + r) * 4 (q5: word 0 is qh, words 1-4 qs; q4_k: words 0-2 the 12 bytes of packed
scales and mins, words 3-34 qs; q5_k: words 0-2 the scales, 3-10 qh, 11-42 qs; q6_k, whose d is
its last field (the table's scales_at): words 0-31 ql, 32-47 qh, 48-51 the 16 int8 scales). The
bytes are the row blocks' own, moved, so the file is no larger and a row comes back exactly.
A SIMD load then holds one word of 16 rows, and 16 dot products advance in lanes without
horizontal sums (kernels/cpu/gemm_x16_*.c). The converter picks X16 wherever it applies.

q3_k: its d, then words 0-7 hmask, 8-23 qs, 24-26 the 12 bytes of packed 6-bit scales; q2_k: its
d, then dmin, then words 0-3 the 16 bytes of 4-bit scale and min pairs, 4-19 qs. Files written
before their CPU X16 kernels hold q2_k and q3_k in rows: the CPU runs them so, and the GPU
backends re-lay them into X16 as they upload them (llmrun/backends/gpu.py), so every quantised
type reaches the GPU kernels alike.
"""
from __future__ import annotations

import numpy as np

from .types import QType

ROWS = 0
X16 = 1
NAMES = {ROWS: "rows", X16: "x16"}
GROUP = 16


def kernel_layout(t: QType, shape) -> int:
    """The layout a tensor of this type and shape is written in."""
    return X16 if t.x16 and len(shape) == 2 and shape[0] % GROUP == 0 else ROWS


def has_x16(t: QType) -> bool:
    """Whether type t has an X16 layout (written to files or not): a block type whose bytes
    beside its f16 fields are whole 4-byte words."""
    return t.quantized and (t.type_size - 2 * t.n_scales) % 4 == 0


def _split(t: QType):
    """(f16 fields, 4-byte words of the other bytes) of one block of type t."""
    if not has_x16(t):
        raise ValueError(f"{t.name} has no X16 layout")
    return t.n_scales, (t.type_size - 2 * t.n_scales) // 4


def interleave(rows: np.ndarray, t: QType) -> np.ndarray:
    """uint8 [R, row_bytes] in the ROWS layout (R a multiple of 16) -> the same bytes in X16."""
    R, row_bytes = rows.shape
    nb = row_bytes // t.type_size
    n_scales, words = _split(t)
    b = rows.reshape(R // GROUP, GROUP, nb, t.type_size).transpose(0, 2, 1, 3)  # [G, nb, 16, size]
    at, end = t.scales_at, t.scales_at + 2 * n_scales
    scales = b[..., at:end].reshape(R // GROUP, nb, GROUP, n_scales, 2).transpose(0, 1, 3, 2, 4)
    rest = np.concatenate([b[..., :at], b[..., end:]], axis=3)
    quants = rest.reshape(R // GROUP, nb, GROUP, words, 4).transpose(0, 1, 3, 2, 4)
    out = np.concatenate([scales.reshape(R // GROUP, nb, -1), quants.reshape(R // GROUP, nb, -1)], axis=2)
    return np.ascontiguousarray(out).reshape(R, row_bytes)


def deinterleave(data: np.ndarray, t: QType, row_bytes: int) -> np.ndarray:
    """X16 bytes of R rows -> uint8 [R, row_bytes] in the ROWS layout."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1, row_bytes)
    R = data.shape[0]
    nb = row_bytes // t.type_size
    n_scales, words = _split(t)
    g = data.reshape(R // GROUP, nb, GROUP * t.type_size)
    scales = g[..., :2 * n_scales * GROUP].reshape(R // GROUP, nb, n_scales, GROUP, 2).transpose(0, 1, 3, 2, 4)
    quants = g[..., 2 * n_scales * GROUP:].reshape(R // GROUP, nb, words, GROUP, 4).transpose(0, 1, 3, 2, 4)
    scales = scales.reshape(R // GROUP, nb, GROUP, -1)
    quants = quants.reshape(R // GROUP, nb, GROUP, -1)
    at = t.scales_at
    blocks = np.concatenate([quants[..., :at], scales, quants[..., at:]], axis=3)  # [G, nb, 16, size]
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3)).reshape(R, row_bytes)
