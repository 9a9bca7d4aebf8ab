"""Lazy safetensors reading by mmap: one tensor at a time, bf16 included.

(The `safetensors` package's numpy API cannot return bf16, the dtype most checkpoints use.)
Format: u64 header length | JSON {name: {dtype, shape, data_offsets: [begin, end]}} | data.
"""
from __future__ import annotations

import json
import mmap
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
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConvertError(f"{path}: corrupt safetensors header: {e}") from None
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
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
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{self.path}: corrupt safetensors entry for {name}") from None
        if dtype not in DTYPES:
            raise ConvertError(f"{self.path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16")
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= data_size or end - begin != count * np.dtype(DTYPES[dtype]).itemsize:
            raise ConvertError(f"{self.path}: tensor {name} has bad data offsets (truncated or corrupt file)")

    def names(self) -> list[str]:
        return list(self.entries)

    def dtype(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def shape(self, name: str) -> tuple:
        return tuple(self.entries[name]["shape"])

    def raw(self, name: str) -> np.ndarray:
        """The stored values, zero-copy: float32, float16, or bf16 bits as uint16."""
        e = self.entries[name]
        begin, end = e["data_offsets"]
        dt = np.dtype(DTYPES[e["dtype"]])
        return np.frombuffer(self.mm, dtype=dt, count=(end - begin) // dt.itemsize,
                             offset=self.data_start + begin).reshape(e["shape"])
