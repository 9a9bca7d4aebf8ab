"""The .llmr file: one little-endian file that loads by mmap with no copying (docs/format.md).

    header (128 bytes) | metadata (JSON) | tokenizer blob | tensor index | pad | data

Writing streams the tensors one at a time into a temporary file beside the target, then
fsyncs and renames it (llmrun.atomic): an interrupted write never leaves a file under the
final name.
Reading validates the header, the section bounds, the header checksum and every index
entry before any tensor data is touched; tensors are then zero-copy numpy views of the map.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .atomic import atomic_file
from .errors import FormatError, LlmrunError
from .quant import QType, qtype
from .quant.layout import NAMES as LAYOUT_NAMES, ROWS as LAYOUT_ROWS, X16 as LAYOUT_X16
from .quant.layout import deinterleave, interleave, kernel_layout

MAGIC = b"\x89LLMR\r\n\x1a"  # the \r\n and \x1a catch text-mode and truncated transfers
BYTE_ORDER_MARK = 0x01020304
VERSION = (1, 1)  # 1.1: the X16 layout
HEADER = struct.Struct("<8sIHHIIQ" + "QQ" * 4 + "28xI")
HEADER_SIZE = 128
TENSOR_ALIGN = 64  # every tensor starts on a 64-byte boundary (a cache line, an AVX-512 load)
DATA_ALIGN = 16384  # the data section starts on a 16 KiB page (Apple Silicon), so a GPU can map it
MAX_RANK = 4
MAX_NAME = 256
MAX_METADATA = 64 << 20  # JSON: config, chat template, provenance; real ones are kilobytes
MAX_TOKENIZER = 512 << 20  # the largest tokenizer.json files are tens of MiB
CHECKSUM_OFFSET = HEADER_SIZE - 4
assert HEADER.size == HEADER_SIZE


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: QType
    shape: tuple
    offset: int  # from the start of the data section
    nbytes: int
    crc32: int
    layout: int = LAYOUT_ROWS


@dataclass
class Tensor:
    """A weight: its type, logical shape, layout (quant.layout) and raw bytes (a view of the
    mapped file)."""
    name: str
    type: QType
    shape: tuple
    data: np.ndarray  # uint8 [nbytes]
    layout: int = LAYOUT_ROWS

    def rows(self) -> np.ndarray:
        """The blocks as uint8 [rows, row bytes] in the ROWS layout (a view where stored so)."""
        row_bytes = self.type.row_bytes(self.shape[-1])
        if self.layout == LAYOUT_X16:
            return deinterleave(self.data, self.type, row_bytes)
        return self.data.reshape(-1, row_bytes)

    def numpy(self) -> np.ndarray:
        """The values as float32 of `shape` (a view for f32 tensors, a dequantised copy otherwise)."""
        from .quant import dequantize
        if self.type.name == "f32":
            return self.data.view(np.float32).reshape(self.shape)
        return dequantize(self.rows(), self.type, self.shape[-1]).reshape(self.shape)


@dataclass
class PendingTensor:
    """A tensor to write: `chunks()` yields its bytes in the ROWS layout, in order, when the
    writer gets to it, so that only a chunk of it need be in memory at a time. The writer
    stores it in `layout` (None: the kernels' layout for its type and shape)."""
    name: str
    type: QType
    shape: tuple
    chunks: Callable[[], Iterable[np.ndarray]]
    layout: int | None = None


def _in_layout(t: PendingTensor, layout: int) -> Iterable[np.ndarray]:
    """t's chunks as bytes in `layout`: X16 regroups them into whole groups of 16 rows."""
    chunks = (np.ascontiguousarray(c).view(np.uint8).reshape(-1) for c in t.chunks())
    if layout == LAYOUT_ROWS:
        yield from chunks
        return
    group = t.type.row_bytes(t.shape[-1]) * 16
    pending = np.empty(0, np.uint8)
    for chunk in chunks:
        pending = np.concatenate([pending, chunk]) if pending.size else chunk
        whole = pending.size - pending.size % group
        if whole:
            yield interleave(pending[:whole].reshape(-1, group // 16), t.type).reshape(-1)
            pending = pending[whole:]
    if pending.size:
        raise ValueError(f"tensor {t.name}: {pending.size} bytes past its last whole group of 16 rows")


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# --- index entries -----------------------------------------------------------------------------
# name_len u16 | name | type u32 | rank u8 | layout u8 | dims u64[rank] | offset u64 | nbytes u64 | crc32 u32

def _index_entry_size(name: str, rank: int) -> int:
    return 2 + len(name.encode()) + 6 + 8 * rank + 20


def _pack_index(infos: Iterable[TensorInfo]) -> bytes:
    out = bytearray()
    for t in infos:
        name = t.name.encode()
        out += struct.pack("<H", len(name)) + name
        out += struct.pack(f"<IBB{len(t.shape)}Q", t.type.id, len(t.shape), t.layout, *t.shape)
        out += struct.pack("<QQI", t.offset, t.nbytes, t.crc32)
    return bytes(out)


def _unpack_index(buf: bytes, data_size: int, path: str) -> dict[str, TensorInfo]:
    def fail(msg):
        raise FormatError(f"{path}: corrupt tensor index: {msg}")

    def take(fmt, pos):
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            fail("entry runs past the end of the index")
        return struct.unpack_from(fmt, buf, pos), pos + size

    tensors: dict[str, TensorInfo] = {}
    pos = 0
    while pos < len(buf):
        (name_len,), pos = take("<H", pos)
        if not 0 < name_len <= MAX_NAME or pos + name_len > len(buf):
            fail(f"bad name length {name_len}")
        try:
            name = buf[pos:pos + name_len].decode()
        except UnicodeDecodeError:
            fail("tensor name is not UTF-8")
        pos += name_len
        (type_id, rank, layout), pos = take("<IBB", pos)
        if not 1 <= rank <= MAX_RANK:
            fail(f"tensor {name!r} has rank {rank} (1..{MAX_RANK} allowed)")
        shape, pos = take(f"<{rank}Q", pos)
        (offset, nbytes, crc), pos = take("<QQI", pos)
        try:
            t = qtype(type_id)
        except ValueError:
            raise FormatError(f"{path}: tensor {name!r} has unknown type id {type_id}; "
                              "a newer llmrun may read it") from None
        if layout not in LAYOUT_NAMES:
            raise FormatError(f"{path}: tensor {name!r} has unknown layout {layout}; a newer llmrun may read it")
        if layout == LAYOUT_X16 and kernel_layout(t, shape) != LAYOUT_X16:
            fail(f"tensor {name!r} is {t.name} {list(shape)}, which cannot be stored in the x16 layout")
        if name in tensors:
            fail(f"tensor {name!r} appears twice")
        if any(d == 0 or d > 1 << 40 for d in shape):
            fail(f"tensor {name!r} has shape {list(shape)}")
        try:
            expected = t.nbytes(shape)
        except ValueError as e:
            fail(f"tensor {name!r}: {e}")
        if nbytes != expected:
            fail(f"tensor {name!r} is {nbytes} bytes but {t.name} {list(shape)} takes {expected}")
        if offset % TENSOR_ALIGN or offset > data_size or nbytes > data_size - offset:
            fail(f"tensor {name!r} at offset {offset} (+{nbytes}) lies outside the data section "
                 f"of {data_size} bytes or is not {TENSOR_ALIGN}-byte aligned")
        tensors[name] = TensorInfo(name, t, tuple(shape), offset, nbytes, crc, layout)
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values())
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            fail(f"tensors {a!r} and {b!r} overlap")
    return tensors


# --- writing -----------------------------------------------------------------------------------

def write(path: str, metadata: dict, tokenizer_blob: bytes, tensors: list[PendingTensor],
          progress: Callable[[int, int], None] | None = None) -> None:
    """Write a .llmr file atomically. `progress(bytes written, total bytes)` follows each chunk."""
    meta = json.dumps(metadata, ensure_ascii=False, indent=1).encode()
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    meta_off = HEADER_SIZE
    tok_off = meta_off + len(meta)
    index_off = tok_off + len(tokenizer_blob)
    index_size = sum(_index_entry_size(t.name, len(t.shape)) for t in tensors)
    data_off = _align(index_off + index_size, DATA_ALIGN)
    offsets, end = [], 0
    for t in tensors:
        offsets.append(end)
        end = _align(end + t.type.nbytes(t.shape), TENSOR_ALIGN)
    data_size = end
    file_size = data_off + data_size

    with atomic_file(path) as f:
        infos = []
        done, payload = 0, sum(t.type.nbytes(t.shape) for t in tensors)
        for t, offset in zip(tensors, offsets):
            f.seek(data_off + offset)
            crc, written = 0, 0
            layout = kernel_layout(t.type, t.shape) if t.layout is None else t.layout
            try:
                for data in _in_layout(t, layout):
                    f.write(data)
                    crc, written, done = zlib.crc32(data, crc), written + data.size, done + data.size
                    if progress:
                        progress(done, payload)
            except LlmrunError as e:
                raise type(e)(f"tensor {t.name}: {e}") from None
            expected = t.type.nbytes(t.shape)
            if written != expected:
                raise ValueError(f"tensor {t.name}: {written} bytes, {t.type.name} {list(t.shape)} takes {expected}")
            infos.append(TensorInfo(t.name, t.type, tuple(int(d) for d in t.shape), offset, expected, crc, layout))
        f.truncate(file_size)  # the last tensor's alignment padding
        index = _pack_index(infos)
        assert len(index) == index_size
        header = HEADER.pack(MAGIC, BYTE_ORDER_MARK, *VERSION, HEADER_SIZE, TENSOR_ALIGN, file_size,
                             meta_off, len(meta), tok_off, len(tokenizer_blob), index_off, index_size,
                             data_off, data_size, 0)
        crc = zlib.crc32(index, zlib.crc32(tokenizer_blob, zlib.crc32(meta, zlib.crc32(header[:CHECKSUM_OFFSET]))))
        f.seek(0)
        f.write(header[:CHECKSUM_OFFSET] + struct.pack("<I", crc) + meta + tokenizer_blob + index)
    drop_cached_pages(path)


def drop_cached_pages(path: str) -> None:
    """Drops a written (and fsynced, so clean) file's pages from the page cache, so that its next
    map, which asks for huge pages (LlmrFile), reads it back in 2 MiB folios. A write leaves
    mostly small ones, each a TLB entry of its own, and decode reads every weight once a token:
    on Zen 4 (Linux 6.18, ext4), a 1B q4_k_m file's cached pages read at 24.8 GB/s on one core
    as written and 32.5 once read back this way (40 -> 50 GB/s on two); its decode matmuls went
    from 39 to 33 ms a token. The price: the first load reads the file from disk. A no-op where
    the platform has no posix_fadvise."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:  # only advice: a file written in full is not to be failed by it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        pass


def advise(mm: mmap.mmap, flag: str) -> None:
    """mm.madvise(mmap.<flag>) where the platform has it; a kernel built without transparent
    huge pages refuses MADV_HUGEPAGE and MADV_NOHUGEPAGE (EINVAL), and advice it cannot take is
    no reason to fail a load."""
    if hasattr(mmap, flag):
        try:
            mm.madvise(getattr(mmap, flag))
        except OSError:
            pass


# --- reading -----------------------------------------------------------------------------------

def _read_into_huge_pages(f, size: int) -> mmap.mmap:
    """The whole file in anonymous memory that the kernel may back with transparent huge pages:
    decode reads every weight once per token, and 2 MiB pages spare it the TLB misses of 4 KiB
    ones (a 1B-parameter q4_0 model: 41.6 -> 43.8 tok/s on one thread, 50.0 -> 52.1 on two).
    The price: a copy beside the page cache's, and reading the file at load."""
    mm = mmap.mmap(-1, size)
    advise(mm, "MADV_HUGEPAGE")
    f.seek(0)
    view, done = memoryview(mm), 0
    while done < size:
        n = f.readinto(view[done:])
        if not n:
            raise FormatError(f"{f.name}: the file shrank while it was read")
        done += n
    view.release()
    return mm


class LlmrFile:
    """An open .llmr file: metadata, tokenizer blob and zero-copy tensor views of the map (or,
    with `huge_pages`, of a copy in memory backed by transparent huge pages)."""

    def __init__(self, path: str, huge_pages: bool = False):
        self.path = str(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_SIZE)
            self._check_header(head, size)
            if huge_pages:
                self.mm = _read_into_huge_pages(f, size)
            else:
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                advise(self.mm, "MADV_HUGEPAGE")  # pages read in from here on come in 2 MiB folios (drop_cached_pages)
        fields = HEADER.unpack(head)
        meta_off, meta_size, tok_off, tok_size, index_off, index_size, self.data_offset, data_size = fields[7:15]
        meta = self.mm[meta_off:meta_off + meta_size]
        self.tokenizer_blob = self.mm[tok_off:tok_off + tok_size]
        index = self.mm[index_off:index_off + index_size]
        crc = zlib.crc32(index, zlib.crc32(self.tokenizer_blob, zlib.crc32(meta, zlib.crc32(head[:CHECKSUM_OFFSET]))))
        if crc != fields[-1]:
            raise FormatError(f"{self.path}: header checksum mismatch (the file is corrupt); convert the model again")
        try:
            self.metadata = json.loads(meta)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise FormatError(f"{self.path}: metadata is not valid JSON: {e}") from None
        if not isinstance(self.metadata, dict):
            raise FormatError(f"{self.path}: metadata is not a JSON object")
        self.tensors = _unpack_index(index, data_size, self.path)

    def _check_header(self, head: bytes, size: int) -> None:
        p = self.path
        if len(head) < 8 or head[:8] != MAGIC:
            if head[:4] == b"GGUF":
                raise FormatError(f"{p}: this is a GGUF file, not .llmr; convert it with `llmrun convert`")
            raise FormatError(f"{p}: not a .llmr file (bad magic); convert a model with `llmrun convert`")
        if len(head) < HEADER_SIZE:
            raise FormatError(f"{p}: truncated: {size} bytes, shorter than the {HEADER_SIZE}-byte header")
        (_, bom, major, minor, header_size, align, file_size,
         meta_off, meta_size, tok_off, tok_size, index_off, index_size, data_off, data_size, _) = HEADER.unpack(head)
        if bom != BYTE_ORDER_MARK:
            raise FormatError(f"{p}: byte-order mark {bom:#010x} is not {BYTE_ORDER_MARK:#010x}: "
                              "written big-endian or corrupt")
        if major != VERSION[0]:
            raise FormatError(f"{p}: format version {major}.{minor}; this llmrun reads {VERSION[0]}.x: "
                              "upgrade llmrun or convert the model again")
        if header_size != HEADER_SIZE or align != TENSOR_ALIGN:
            raise FormatError(f"{p}: corrupt header (header size {header_size}, alignment {align})")
        if file_size != size:
            what = "truncated" if size < file_size else "has trailing bytes"
            raise FormatError(f"{p}: {what}: {size} bytes on disk, the header records {file_size}; "
                              "the copy or conversion did not finish")
        sections = [("metadata", meta_off, meta_size), ("tokenizer", tok_off, tok_size),
                    ("index", index_off, index_size), ("data", data_off, data_size)]
        pos = HEADER_SIZE
        for name, off, length in sections:
            if off < pos or off > size or length > size - off:
                raise FormatError(f"{p}: corrupt header: {name} section at {off} (+{length}) "
                                  f"overlaps another or lies outside the {size}-byte file")
            pos = off + length
        if meta_size > MAX_METADATA or tok_size > MAX_TOKENIZER:
            raise FormatError(f"{p}: corrupt header: {meta_size} bytes of metadata, {tok_size} of tokenizer "
                              f"(at most {MAX_METADATA} and {MAX_TOKENIZER})")
        if data_off % DATA_ALIGN:
            raise FormatError(f"{p}: corrupt header: data section at {data_off} is not {DATA_ALIGN}-aligned")

    def tensor(self, name: str) -> Tensor:
        info = self.tensors[name]
        data = np.frombuffer(self.mm, dtype=np.uint8, count=info.nbytes, offset=self.data_offset + info.offset)
        data.flags.writeable = False
        return Tensor(info.name, info.type, info.shape, data, info.layout)

    def verify(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Check every tensor's CRC32; return the names of those that do not match.
        `progress(bytes checked, total bytes)` follows each tensor."""
        bad, done, total = [], 0, sum(t.nbytes for t in self.tensors.values())
        for name, info in self.tensors.items():
            if zlib.crc32(self.tensor(name).data) != info.crc32:
                bad.append(name)
            done += info.nbytes
            if progress:
                progress(done, total)
        return bad
