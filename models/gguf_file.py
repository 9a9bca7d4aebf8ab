"""A GGUF (v2, v3, little-endian) reader that trusts no length or offset in the file.

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv × (string key, u32 value type, value)
    n_tensors × (string name, u32 n_dims, u64 dims[n_dims] innermost first, u32 type, u64 offset)
    padding to general.alignment (default 32) | tensor data

Metadata values come back as plain Python (str, int, float, bool, and lists of those);
tensors as zero-copy uint8 views of the mapped file, with numpy-order shapes (outermost first).

Split files (llama.cpp's gguf-split: NAME-00001-of-00003.gguf, ...) are read as one: the first
part holds the model's metadata, every part a whole GGUF with `split.no`, `split.count` and
(in the first) `split.tensors.count`; opening the first part opens the others beside it.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import ConvertError
from ..quant.types import QType, ggml_type

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_STRING = 1 << 30
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2

# value type id -> (struct format, numpy dtype) for the scalar types
SCALARS = {0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
           4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
           10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64)}
STRING, ARRAY = 8, 9
SPLIT_NAME = re.compile(r"(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")


def split_parts(path: str) -> list[str] | None:
    """The paths of every part of the split GGUF whose first part is `path` (None: not a
    split file's name)."""
    m = SPLIT_NAME.fullmatch(os.path.basename(path))
    if not m:
        return None
    folder, count = os.path.dirname(path), int(m["count"])
    return [os.path.join(folder, f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type: QType
    shape: tuple  # numpy order: outermost first ([rows, cols] for a matrix)
    offset: int  # absolute, in the file (the part)
    nbytes: int
    part: int = 0  # which part of a split file holds it


class GGUFFile:
    def __init__(self, path: str, part: int = 0):
        self.path = str(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise self._error(f"truncated: {size} bytes" if f.read(4) == MAGIC else "not a GGUF file")
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if self.mm[:4] != MAGIC:
            raise self._error("not a GGUF file (bad magic)")
        self.pos = 4
        version = self._read("<I")
        if version not in VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            if swapped in VERSIONS:
                raise self._error("big-endian GGUF files are not supported")
            raise self._error(f"GGUF version {version} is not supported (versions 2 and 3 are)")
        self.version = version
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        # Every entry takes at least 8 bytes in the file: a cheap bound before any loop.
        if n_tensors > size // 8 or n_kv > size // 8:
            raise self._error(f"corrupt header: {n_tensors} tensors, {n_kv} metadata keys")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._read("<I"), 0)
        infos = [self._tensor_info() for _ in range(n_tensors)]
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise self._error(f"general.alignment {align!r} is not a power of two")
        self.data_start = (self.pos + align - 1) // align * align
        self.tensors: dict[str, GGUFTensor] = {}
        for name, shape, t, offset in infos:
            nbytes = t.nbytes(shape)
            start = self.data_start + offset
            if offset % align or start + nbytes > size:
                raise self._error(f"tensor {name} (offset {offset}, {nbytes} bytes) lies outside the file "
                                  "or is misaligned: the file is truncated or corrupt")
            if name in self.tensors:
                raise self._error(f"tensor {name} appears twice")
            self.tensors[name] = GGUFTensor(name, t, shape, start, nbytes, part)
        self.parts = [self.mm]
        count = self.metadata.get("split.count", 1)
        if part == 0 and count != 1:
            self._open_parts(count)

    def _open_parts(self, count) -> None:
        """Read the other parts of a split file and add their tensors."""
        paths, no = split_parts(self.path), self.metadata.get("split.no", 0)
        if not isinstance(count, int) or count < 1 or not isinstance(no, int):
            raise self._error(f"corrupt split metadata (split.count {count!r}, split.no {no!r})")
        if no != 0:
            raise self._error(f"part {no + 1} of {count} of a split GGUF: open the first part (-00001-of-{count:05d})")
        if paths is None or len(paths) != count:
            raise self._error(f"one of {count} parts of a split GGUF, but not named NAME-00001-of-"
                              f"{count:05d}.gguf: name the parts as gguf-split wrote them")
        for i, p in enumerate(paths[1:], 1):
            if not os.path.exists(p):
                raise self._error(f"part {i + 1} of {count}, {os.path.basename(p)}, is missing beside it")
            other = GGUFFile(p, part=i)
            if other.metadata.get("split.no") != i or other.metadata.get("split.count") != count:
                raise ConvertError(f"{p}: not part {i + 1} of {count} of {os.path.basename(self.path)} "
                                   f"(its split.no is {other.metadata.get('split.no')!r})")
            for name, t in other.tensors.items():
                if name in self.tensors:
                    raise self._error(f"tensor {name} appears twice (in {os.path.basename(p)} too)")
                self.tensors[name] = t
            self.parts.append(other.mm)
        expected = self.metadata.get("split.tensors.count", len(self.tensors))
        if expected != len(self.tensors):
            raise self._error(f"the {count} parts hold {len(self.tensors)} tensors; the first says {expected!r}")

    def _error(self, msg: str) -> ConvertError:
        return ConvertError(f"{self.path}: {msg}")

    def _take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.mm):
            raise self._error("truncated or corrupt: a field runs past the end of the file")
        self.pos += n
        return start

    def _read(self, fmt: str):
        start = self._take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.mm, start)[0]

    def _string(self) -> str:
        n = self._read("<Q")
        if n > MAX_STRING:
            raise self._error(f"corrupt string length {n}")
        start = self._take(n)
        try:
            return self.mm[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            # A few vocabularies hold tokens that are not valid UTF-8 on their own.
            return self.mm[start:start + n].decode("utf-8", errors="surrogateescape")

    def _value(self, vtype: int, depth: int):
        if vtype in SCALARS:
            return self._read(SCALARS[vtype][0])
        if vtype == STRING:
            return self._string()
        if vtype == ARRAY and depth < MAX_ARRAY_DEPTH:
            etype, n = self._read("<I"), self._read("<Q")
            if etype in SCALARS:
                dtype = np.dtype(SCALARS[etype][1])
                if n > len(self.mm) // dtype.itemsize:
                    raise self._error(f"corrupt array length {n}")
                start = self._take(n * dtype.itemsize)
                return np.frombuffer(self.mm, dtype=dtype, count=n, offset=start).tolist()
            if n > len(self.mm) // 8:
                raise self._error(f"corrupt array length {n}")
            return [self._value(etype, depth + 1) for _ in range(n)]
        raise self._error(f"unknown or too deeply nested metadata value type {vtype}")

    def _tensor_info(self):
        name = self._string()
        n_dims = self._read("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._error(f"tensor {name} has {n_dims} dimensions")
        dims = [self._read("<Q") for _ in range(n_dims)]
        type_id, offset = self._read("<I"), self._read("<Q")
        if any(d == 0 or d > 1 << 40 for d in dims):
            raise self._error(f"tensor {name} has shape {dims}")
        try:
            t = ggml_type(type_id)
        except ValueError as e:
            raise self._error(f"tensor {name}: {e}") from None
        shape = tuple(reversed(dims))  # GGUF lists the innermost dimension first
        if shape[-1] % t.block_size:
            raise self._error(f"tensor {name}: rows of {shape[-1]} are not whole {t.name} blocks")
        return name, shape, t, offset

    def data(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 [rows, row_bytes] (zero-copy)."""
        t = self.tensors[name]
        rows = t.nbytes // t.type.row_bytes(t.shape[-1])
        return np.frombuffer(self.parts[t.part], dtype=np.uint8, count=t.nbytes, offset=t.offset).reshape(rows, -1)
