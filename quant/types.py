"""Tensor types: the id stored in a .llmr index, block size, and bytes per block.

Ids are GGML's numbering, so a GGUF tensor keeps its type id when imported and the
block formats below are byte-for-byte the GGUF ones:

    q8_0  { f16 d; int8 qs[32]; }            x = d * q
    q4_0  { f16 d; uint8 qs[16]; }           x = d * (q - 8)
    q4_1  { f16 d; f16 m; uint8 qs[16]; }    x = d * q + m
    (4-bit: element j is the low nibble of qs[j], element j+16 the high nibble)

Only those six (with f32, f16, bf16) are stored in .llmr files and named by `--type`: `TYPES`,
`TYPES_BY_ID` and `qtype()`. GGUF files also carry q5_0, q5_1 and the k-quants (blocks of
QK_K = 256); the importer dequantises them exactly (quant/kquants.py) and re-quantises into a
type we run, so they are listed apart, in `GGML_TYPES_BY_ID` and `ggml_type()`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QType:
    name: str
    id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block

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


F32 = QType("f32", 0, 1, 4)
F16 = QType("f16", 1, 1, 2)
Q4_0 = QType("q4_0", 2, 32, 18)
Q4_1 = QType("q4_1", 3, 32, 20)
Q8_0 = QType("q8_0", 8, 32, 34)
BF16 = QType("bf16", 30, 1, 2)

TYPES = {t.name: t for t in (F32, F16, BF16, Q8_0, Q4_0, Q4_1)}
TYPES_BY_ID = {t.id: t for t in TYPES.values()}

# Import-only: readable from GGUF, never stored. Sizes are GGML's (gguf GGML_QUANT_SIZES).
QK_K = 256  # elements per k-quant super-block
Q5_0 = QType("q5_0", 6, 32, 22)  # { f16 d; u8 qh[4]; u8 qs[16]; }
Q5_1 = QType("q5_1", 7, 32, 24)  # { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }
Q2_K = QType("q2_k", 10, QK_K, 84)  # { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }
Q3_K = QType("q3_k", 11, QK_K, 110)  # { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }
Q4_K = QType("q4_k", 12, QK_K, 144)  # { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }
Q5_K = QType("q5_k", 13, QK_K, 176)  # { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
Q6_K = QType("q6_k", 14, QK_K, 210)  # { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }
Q8_K = QType("q8_k", 15, QK_K, 292)  # { f32 d; i8 qs[256]; i16 bsums[16]; }

GGML_TYPES_BY_ID = {t.id: t for t in (*TYPES.values(), Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)}

# GGML ids we cannot read, named only so the error says what the file holds.
_UNSUPPORTED_GGML_NAMES = {
    4: "q4_2", 5: "q4_3", 9: "q8_1", 16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs", 19: "iq1_s",
    20: "iq4_nl", 21: "iq3_s", 22: "iq2_s", 23: "iq4_xs", 24: "i8", 25: "i16", 26: "i32",
    27: "i64", 28: "f64", 29: "iq1_m", 31: "q4_0_4_4", 32: "q4_0_4_8", 33: "q4_0_8_8",
    34: "tq1_0", 35: "tq2_0", 36: "iq4_nl_4_4", 37: "iq4_nl_4_8", 38: "iq4_nl_8_8",
    39: "mxfp4", 40: "nvfp4", 41: "q1_0",
}


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
