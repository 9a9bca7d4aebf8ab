"""A small deterministic mutator for the bounded fuzz run in the test suite: the byte-level
moves that find parser bugs (bit flips, boundary integers written over length and offset
fields, truncation, repeated and deleted spans, splices of two seeds). The long run uses
atheris instead, which adds coverage guidance (tests/fuzz/run.py)."""
from __future__ import annotations

import random

# Values at the edges of signed and unsigned 8/16/32/64-bit fields.
BOUNDARIES = [0, 1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 4095, 4096, 16384, 65535, 65536,
              2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**40 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _overwrite_int(rng: random.Random, data: bytearray) -> None:
    width = rng.choice((1, 2, 4, 8))
    if len(data) < width:
        return
    at = rng.randrange(len(data) - width + 1)
    # Length and offset fields sit on natural alignment in the formats we read, most of the time.
    if rng.random() < 0.7:
        at -= at % width
    data[at:at + width] = (rng.choice(BOUNDARIES) % 2 ** (8 * width)).to_bytes(width, "little")


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """`data` with one to four random edits; `others` are seeds to splice from."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        move = rng.randrange(7)
        n = len(out)
        if move == 0 and n:  # flip one bit
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif move == 1 and n:  # one byte to an edge value
            out[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif move == 2:
            _overwrite_int(rng, out)
        elif move == 3 and n:  # truncate
            del out[rng.randrange(n):]
        elif move == 4 and n:  # delete a span
            a = rng.randrange(n)
            del out[a:a + rng.randint(1, 64)]
        elif move == 5 and n:  # repeat a span
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 64))
            out[a:a] = out[a:b] * rng.randint(1, 4)
        elif move == 6 and others:  # splice: our head, another seed's tail
            other = rng.choice(others)
            if other:
                cut = rng.randrange(len(other))
                out = out[:rng.randrange(n + 1)] + bytearray(other[cut:])
    return bytes(out)
