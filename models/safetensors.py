"""Lazy safetensors reading: rows of one tensor at a time, bf16 included.

Rows are read with pread rather than through a map, so memory holds only the rows being
converted (a map would keep every page read so far in the process's resident set).
(The `safetensors` package's numpy API cannot return bf16, the dtype most checkpoints use.)
Format: u64 header length | JSON {name: {dtype, shape, data_offsets: [begin, end]}} | data.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from ..errors import ConvertError

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # bf16 kept as raw bits
MAX_HEADER = 100 << 20


class SafetensorsFile:
    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            raw = f.read(8)
            if len(raw) < 8:
                raise ConvertError(f"{path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER):
                raise ConvertError(f"{path}: corrupt safetensors header (length {n})")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise ConvertError(f"{path}: corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise ConvertError(f"{path}: corrupt safetensors header")
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries = header
        for name, e in header.items():
            self._check(name, e, size - self.data_start)

    def _check(self, name, e, data_size):
        try:
            dtype = e["dtype"]
            shape = [int(d) for d in e["shape"]]
            begin, end = (int(o) for o in e["data_offsets"])
            if len(shape) > 4 or min(shape, default=1) < 1:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{self.path}: corrupt safetensors entry for {name}") from None
        if dtype not in DTYPES:
            raise ConvertError(f"{self.path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16")
        count = math.prod(shape)  # Python ints: no overflow to wrap a huge shape into a small size
        if not 0 <= begin <= end <= data_size or end - begin != count * np.dtype(DTYPES[dtype]).itemsize:
            raise ConvertError(f"{self.path}: tensor {name} has bad data offsets (truncated or corrupt file)")

    def names(self) -> list[str]:
        return list(self.entries)

    def dtype(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def shape(self, name: str) -> tuple:
        return tuple(self.entries[name]["shape"])

    def nbytes(self, name: str) -> int:
        begin, end = self.entries[name]["data_offsets"]
        return end - begin

    def rows(self, name: str) -> int:
        """Rows of a tensor: its first axis, or 1 for a vector."""
        shape = self.shape(name)
        return shape[0] if len(shape) > 1 else 1

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as stored: float32, float16, or bf16 bits as uint16."""
        e = self.entries[name]
        dt = np.dtype(DTYPES[e["dtype"]])
        begin = e["data_offsets"][0]
        row_bytes = self.nbytes(name) // self.rows(name)
        out = np.empty((stop - start) * row_bytes // dt.itemsize, dtype=dt)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            n = os.preadv(fd, [memoryview(out).cast("B")], self.data_start + begin + start * row_bytes)
        finally:
            os.close(fd)
        if n != out.nbytes:
            raise ConvertError(f"{self.path}: tensor {name} is cut short (did the file change while reading?)")
        shape = e["shape"]
        return out.reshape(stop - start, *shape[1:]) if len(shape) > 1 else out


# --- writing (models/hf_export.py) ------------------------------------------------------------------

DTYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def write_safetensors(path: str, tensors: list, progress=None) -> None:
    """Write `tensors`, (name, dtype "f32"|"f16"|"bf16", shape, chunks) each, chunks() yielding
    the tensor's bytes in order, as one safetensors file at `path` (opened here: the caller makes
    it atomic). The header is padded with spaces so that the data starts 8-byte aligned, as the
    safetensors library writes it. `progress(bytes)` follows each chunk."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, _ in tensors:
        size = math.prod(shape) * (4 if dtype == "f32" else 2)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "xb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, _, _, chunks in tensors:
            written = 0
            for chunk in chunks():
                f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                written += chunk.nbytes
                if progress:
                    progress(chunk.nbytes)
            begin, end = header[name]["data_offsets"]
            if written != end - begin:
                raise AssertionError(f"{name}: {written} bytes written, {end - begin} planned")
