"""Tensor types: every fact about a weight type, in one table.

Ids are GGML's numbering, so a GGUF tensor keeps its type id when imported and the
block formats below are byte-for-byte the GGUF ones:

    q8_0  { f16 d; int8 qs[32]; }            x = d * q
    q4_0  { f16 d; uint8 qs[16]; }           x = d * (q - 8)
    q4_1  { f16 d; f16 m; uint8 qs[16]; }    x = d * q + m
    q5_0  { f16 d; u8 qh[4]; u8 qs[16]; }    x = d * (q - 16)
    q5_1  { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }   x = d * q + m
    q2_k  { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }   256 values in 16 sub-blocks of 16:
          x = d * (sc & 15) * q - dmin * (sc >> 4), q 2-bit (bit layout: quant/kquants.py)
    q3_k  { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }   16 sub-blocks of 16:
          x = d * (sc - 32) * (q - 4 if the hmask bit is clear), sc 6-bit, q 2-bit + hmask bit
    q4_k  { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }   256 values in 8 sub-blocks of 32:
          x = d * sc * q - dmin * m, sc and m 6-bit per sub-block (llama.cpp's get_scale_min_k4);
          sub-block s's quants are the low (s even) or high nibbles of qs[32 (s / 2) .. + 32]
    q5_k  { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }   q4_k's, 5-bit q:
          the fifth bit of element 32s + l is bit s of qh[l]
    q6_k  { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }   256 values in 16 sub-blocks of 16:
          x = d * sc * (q - 32), sc int8 per sub-block, q 6-bit (bit layout: quant/kquants.py)
    iq4_nl { f16 d; u8 qs[16]; }             x = d * IQ4_NL_VALUES[q]: q4_0's nibbles, mapped
          through GGML's 16-entry non-linear int8 table (kvalues_iq4nl, in quant/reference.py)
    (4-bit: element j is the low nibble of qs[j], element j+16 the high nibble; 5-bit: the
    same, plus bit j of the little-endian u32 qh as the fifth bit, << 4)

`TABLE` is the one place a type's facts live; everything else reads them from here: the
names `--type` accepts and the command line's help, the X16 layout's scale fields
(quant/layout.py), the test parametrisations. The C kernels keep their own table (TRAITS in
kernels/cpu/types.c: C needs it at compile time), and tests/test_kernels.py holds it to this one
field by field through `_kernels.type_traits()`, so the two cannot drift.

Types with `act` set are stored in .llmr files and run by the CPU kernels: `TYPES`,
`TYPES_BY_ID` and `qtype()`. The others are import-only: GGUF files may carry q8_k
(super-blocks of QK_K = 256), which the importer dequantises exactly (quant/kquants.py) and
re-quantises into a type we run, and iq4_xs, whose blocks it turns into iq4_nl ones
(`restored_as`); `GGML_TYPES_BY_ID` and `ggml_type()` name them all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

QK_K = 256  # elements per k-quant super-block: a block size like any other, 8 q16_a blocks wide


@dataclass(frozen=True)
class QType:
    name: str
    id: int  # GGML's
    block_size: int  # elements per block
    type_size: int  # bytes per block
    # the block's f16 scale fields (d; or d and m) and the byte at which they start (0: they lead
    # the block; q6_k's d comes last): the X16 layout moves them to the front of a 16-row group
    # and keeps the block's other bytes, in order, as 4-byte words
    n_scales: int = 0
    scales_at: int = 0
    # what the CPU kernels multiply it against: "f32" (float weights) or "q16_a" (activations
    # quantised in blocks of 32); None: the CPU has no kernels for it, so it is import-only
    act: Optional[str] = None
    x16: bool = False  # written in the X16 layout where a matrix has whole 16-row groups
    # the type a quantiser gives way to where a row is not a whole number of this type's blocks
    # (llama-quantize's choice, so mixes match its files); None: f16
    fallback: Optional[str] = None
    # import-only types: the stored type the importer turns each block into directly (iq4_xs:
    # iq4_nl, its sub-blocks' scales multiplied out); None: re-quantised to q8_0 from the floats
    restored_as: Optional[str] = None

    @property
    def stored(self) -> bool:
        """Written into .llmr files and run on the CPU (the C traits table lists exactly these)."""
        return self.act is not None

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    def row_bytes(self, n: int) -> int:
        """Bytes taken by a row of `n` elements (n must be a multiple of block_size)."""
        if n % self.block_size:
            raise ValueError(f"{self.name} needs rows of a multiple of {self.block_size} elements, got {n}")
        return n // self.block_size * self.type_size

    def nbytes(self, shape) -> int:
        """Bytes of a tensor of `shape`, quantised along its last axis."""
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return rows * self.row_bytes(shape[-1] if shape else 1)


# QType(name, GGML id, elements per block, bytes per block, ...); sizes as gguf's GGML_QUANT_SIZES.
F32 = QType("f32", 0, 1, 4, act="f32")
F16 = QType("f16", 1, 1, 2, act="f32")
BF16 = QType("bf16", 30, 1, 2, act="f32")
Q8_0 = QType("q8_0", 8, 32, 34, n_scales=1, act="q16_a", x16=True)
Q4_0 = QType("q4_0", 2, 32, 18, n_scales=1, act="q16_a", x16=True)
Q4_1 = QType("q4_1", 3, 32, 20, n_scales=2, act="q16_a", x16=True)
Q5_0 = QType("q5_0", 6, 32, 22, n_scales=1, act="q16_a", x16=True)  # { f16 d; u8 qh[4]; u8 qs[16]; }
Q5_1 = QType("q5_1", 7, 32, 24, n_scales=2, act="q16_a", x16=True)  # { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }
IQ4_NL = QType("iq4_nl", 20, 32, 18, n_scales=1, act="q16_a", x16=True)  # { f16 d; u8 qs[16]; }: q4_0's layout
# k-quants, in GGML's order: q2_k .. q6_k are stored and run (q4_k's sub-blocks of 32 line
# up with q16_a blocks, X16: its d and dmin, then 3 words of packed scales and 32 of quants; q5_k
# the same with 8 words of qh between them; q6_k's sub-blocks of 16 are halves of them, X16: its
# d, then 32 words of ql, 16 of qh, 4 of scales; q3_k's and q2_k's, run by q6_k's kernels, X16: q3_k
# its d, then 8 words of hmask, 16 of qs, 3 of packed scales; q2_k its d and dmin, then 4 words of
# scales and mins, 16 of qs); q8_k is import-only. q2_k's and q3_k's f16 fields come last (q2_k's d
# and dmin at byte 80, q3_k's d at 108)
Q2_K = QType("q2_k", 10, QK_K, 84, n_scales=2, act="q16_a", x16=True, fallback="q4_0", scales_at=80)  # { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }
Q3_K = QType("q3_k", 11, QK_K, 110, n_scales=1, act="q16_a", x16=True, fallback="q4_0", scales_at=108)  # { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }
Q4_K = QType("q4_k", 12, QK_K, 144, n_scales=2, act="q16_a", x16=True, fallback="q5_0")  # { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }
Q5_K = QType("q5_k", 13, QK_K, 176, n_scales=2, act="q16_a", x16=True, fallback="q5_1")  # { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
# q6_k's f16 d comes last, after its quants and scales (byte 208)
Q6_K = QType("q6_k", 14, QK_K, 210, n_scales=1, act="q16_a", x16=True, fallback="q8_0", scales_at=208)  # { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }
Q8_K = QType("q8_k", 15, QK_K, 292)  # { f32 d; i8 qs[256]; i16 bsums[16]; }
# iq4_xs: iq4_nl's levels in super-blocks, 8 sub-blocks of 32 with a 6-bit scale each (x = d (ls -
# 32) level); import-only: each sub-block becomes an iq4_nl block (quant/kquants.py)
IQ4_XS = QType("iq4_xs", 23, QK_K, 136, restored_as="iq4_nl")  # { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }

# Every type, in the order the command line lists them.
TABLE = (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_XS)

TYPES = {t.name: t for t in TABLE if t.stored}
TYPES_BY_ID = {t.id: t for t in TYPES.values()}
GGML_TYPES_BY_ID = {t.id: t for t in TABLE}

# GGML ids we cannot read, named only so the error says what the file holds.
_UNSUPPORTED_GGML_NAMES = {
    4: "q4_2", 5: "q4_3", 9: "q8_1", 16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs", 19: "iq1_s",
    21: "iq3_s", 22: "iq2_s", 24: "i8", 25: "i16", 26: "i32",
    27: "i64", 28: "f64", 29: "iq1_m", 31: "q4_0_4_4", 32: "q4_0_4_8", 33: "q4_0_8_8",
    34: "tq1_0", 35: "tq2_0", 36: "iq4_nl_4_4", 37: "iq4_nl_4_8", 38: "iq4_nl_8_8",
    39: "mxfp4", 40: "nvfp4", 41: "q1_0",
}


def names() -> str:
    """'f32, f16, ... or q4_1': the stored types, for the command line's help."""
    n = list(TYPES)
    return f"{', '.join(n[:-1])} or {n[-1]}"


def qtype(name_or_id) -> QType:
    """Look a type up by name ("q4_0") or id (2)."""
    table = TYPES_BY_ID if isinstance(name_or_id, int) else TYPES
    try:
        return table[name_or_id]
    except KeyError:
        raise ValueError(f"unknown tensor type {name_or_id!r}; known: {', '.join(TYPES)}") from None


def ggml_type(type_id: int) -> QType:
    """Look up a GGUF tensor's GGML type id: the runnable types plus the import-only ones."""
    try:
        return GGML_TYPES_BY_ID[type_id]
    except KeyError:
        name = _UNSUPPORTED_GGML_NAMES.get(type_id, "unknown")
        known = ", ".join(t.name for t in GGML_TYPES_BY_ID.values())
        raise ValueError(f"GGML type id {type_id} ({name}) is not supported; "
                         f"llmrun reads {known}") from None
