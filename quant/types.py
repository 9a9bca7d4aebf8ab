"""Tensor types: the id stored in a .llmr index, block size, and bytes per block.

Ids are GGML's numbering, so a GGUF tensor keeps its type id when imported and the
block formats below are byte-for-byte the GGUF ones:

    q8_0  { f16 d; int8 qs[32]; }            x = d * q
    q4_0  { f16 d; uint8 qs[16]; }           x = d * (q - 8)
    q4_1  { f16 d; f16 m; uint8 qs[16]; }    x = d * q + m
    (4-bit: element j is the low nibble of qs[j], element j+16 the high nibble)
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


def qtype(name_or_id) -> QType:
    """Look a type up by name ("q4_0") or id (2)."""
    table = TYPES_BY_ID if isinstance(name_or_id, int) else TYPES
    try:
        return table[name_or_id]
    except KeyError:
        raise ValueError(f"unknown tensor type {name_or_id!r}; known: {', '.join(TYPES)}") from None
