"""The .llmr format: layout promises, zero-copy loading, and clear errors on damaged files."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

import llmrun
from llmrun import format as fmt
from llmrun.errors import ConvertError, FormatError
from llmrun.models import convert

from conftest import make_hf_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmt") / "hf"
    make_hf_checkpoint(d)
    return d


@pytest.fixture(scope="module")
def good(hf_dir):
    path = hf_dir.parent / "good.llmr"
    convert(str(hf_dir), str(path), "q4_0")
    return path


def _header(path):
    with open(path, "rb") as f:
        return fmt.HEADER.unpack(f.read(fmt.HEADER_SIZE))


def test_layout_alignment_and_zero_copy(good):
    f = fmt.LlmrFile(good)
    data_off = _header(good)[13]
    assert data_off % fmt.DATA_ALIGN == 0
    for name, info in f.tensors.items():
        assert (data_off + info.offset) % fmt.TENSOR_ALIGN == 0
        t = f.tensor(name)
        assert t.data.nbytes == info.nbytes == info.type.nbytes(info.shape)
        assert not t.data.flags.owndata and not t.data.flags.writeable  # a view of the read-only map
    assert f.verify() == []


def test_metadata_and_provenance(good):
    f = fmt.LlmrFile(good)
    assert f.metadata["provenance"]["type"] == "q4_0"
    assert f.metadata["tokenizer"]["kind"] == "bpe"
    assert "{% for m in messages %}" in f.metadata["chat_template"]
    types = {n: t.type.name for n, t in f.tensors.items()}
    assert types["layers.0.attn_norm"] == "f32" and types["layers.0.wq"] == "q4_0"
    assert types["tok_embeddings"] == "q8_0"  # the policy keeps the tied embedding table at 8 bits


def test_quantised_matrices_are_stored_for_the_kernels(good):
    """Matrices of whole 16-row groups in q8_0 / q4_0 / q4_1 are written in the X16 layout; norms
    and float tensors in rows; and every tensor reads back as the same row blocks."""
    f = fmt.LlmrFile(good)
    for name, info in f.tensors.items():
        x16 = info.type.x16 and info.shape[0] % 16 == 0
        assert info.layout == (fmt.LAYOUT_X16 if x16 else fmt.LAYOUT_ROWS), name
    wq = f.tensor("layers.0.wq")
    assert wq.rows().tobytes() != wq.data.tobytes()  # moved ...
    assert sorted(wq.rows().tobytes()) == sorted(wq.data.tobytes())  # ... not changed


def _damaged(tmp_path, good, edit):
    raw = bytearray(good.read_bytes())
    edit(raw)
    path = tmp_path / "bad.llmr"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.__delitem__(slice(len(b) - 1000, None)), "truncated"),
    (lambda b: b.__delitem__(slice(100, None)), "truncated"),
    (lambda b: b.__setitem__(slice(0, 8), b"NOTLLMR!"), "bad magic"),
    (lambda b: b.__setitem__(slice(8, 12), struct.pack(">I", 0x01020304)), "byte-order"),
    (lambda b: b.__setitem__(slice(12, 14), struct.pack("<H", 9)), "version 9"),
    (lambda b: b.__setitem__(40, b[40] ^ 0xFF), "corrupt"),  # metadata size
    (lambda b: b.__setitem__(200, b[200] ^ 0x01), "checksum"),  # a metadata byte
    (lambda b: b.__setitem__(130, b[130] ^ 0x20), "checksum"),
    (lambda b: b.__setitem__(slice(124, 128), b"\0\0\0\0"), "checksum"),
    (lambda b: b.extend(b"junk"), "trailing"),
])
def test_damaged_files_give_clear_errors(tmp_path, good, edit, message):
    path = _damaged(tmp_path, good, edit)
    with pytest.raises(FormatError, match=message) as e:
        llmrun.load(path)
    assert str(path) in str(e.value)


def test_llmr_file_with_gguf_magic_is_read_as_a_broken_gguf(tmp_path, good):
    path = _damaged(tmp_path, good, lambda b: b.__setitem__(slice(0, 4), b"GGUF"))
    with pytest.raises(ConvertError, match="GGUF version") as e:
        llmrun.load(path)
    assert str(path) in str(e.value)
    with pytest.raises(FormatError, match="this is a GGUF file"):
        fmt.LlmrFile(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.llmr"
    path.write_bytes(b"")
    with pytest.raises(FormatError, match="not a .llmr file"):
        llmrun.load(path)


def _rewrite_index(tmp_path, good, mutate):
    """Re-write the file with a mutated index entry and a *valid* checksum, so only the
    index validation stands between the bad entry and the data."""
    f = fmt.LlmrFile(good)
    infos = [mutate(i) for i in f.tensors.values()]
    raw = bytearray(good.read_bytes())
    h = list(_header(good))
    index = fmt._pack_index(infos)
    assert len(index) == h[12]
    raw[h[11]:h[11] + h[12]] = index
    meta, tok = raw[h[7]:h[7] + h[8]], raw[h[9]:h[9] + h[10]]
    import zlib
    crc = zlib.crc32(index, zlib.crc32(tok, zlib.crc32(meta, zlib.crc32(raw[:fmt.CHECKSUM_OFFSET]))))
    raw[fmt.CHECKSUM_OFFSET:fmt.HEADER_SIZE] = struct.pack("<I", crc)
    path = tmp_path / "bad-index.llmr"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda i: i if i.name != "norm" else fmt.TensorInfo(i.name, i.type, i.shape, 1 << 40, i.nbytes, 0), "outside"),
    (lambda i: i if i.name != "norm" else fmt.TensorInfo(i.name, i.type, (i.shape[0] + 1,), i.offset, i.nbytes, 0), "takes"),
    (lambda i: i if i.name != "norm" else fmt.TensorInfo(i.name, i.type, i.shape, i.offset + 4, i.nbytes, 0), "aligned"),
    (lambda i: i if i.name != "norm" else fmt.TensorInfo(i.name, i.type, i.shape, 0, i.nbytes, 0), "overlap"),
    (lambda i: i if i.name != "norm" else fmt.TensorInfo(i.name, i.type, i.shape, i.offset, i.nbytes, 0, fmt.LAYOUT_X16),
     "cannot be stored in the x16 layout"),
    (lambda i: i if i.name != "norm" else fmt.TensorInfo(i.name, i.type, i.shape, i.offset, i.nbytes, 0, 9),
     "unknown layout 9"),
])
def test_bad_index_entries(tmp_path, good, mutate, message):
    with pytest.raises(FormatError, match=message):
        llmrun.load(_rewrite_index(tmp_path, good, mutate))


def test_verify_finds_flipped_data_byte(tmp_path, good):
    h = _header(good)
    path = _damaged(tmp_path, good, lambda b: b.__setitem__(h[13] + 5, b[h[13] + 5] ^ 0xFF))
    bad = fmt.LlmrFile(path).verify()
    assert len(bad) == 1


def test_interrupted_write_leaves_no_file(tmp_path, hf_dir):
    out = tmp_path / "never.llmr"

    def fail(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(hf_dir), str(out), "f16", progress=fail)
    assert os.listdir(tmp_path) == []


# --- converter errors ------------------------------------------------------------------------

def _copy(hf_dir, tmp_path):
    import shutil
    d = tmp_path / "hf"
    shutil.copytree(hf_dir, d)
    return d


def test_config_missing_key(tmp_path, hf_dir):
    d = _copy(hf_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="missing key 'hidden_size'"):
        convert(str(d), str(tmp_path / "x.llmr"))


def test_no_weights(tmp_path, hf_dir):
    d = _copy(hf_dir, tmp_path)
    os.remove(d / "model.safetensors")
    with pytest.raises(ConvertError, match="no model.safetensors"):
        convert(str(d), str(tmp_path / "x.llmr"))


def test_unknown_architecture(tmp_path, hf_dir):
    d = _copy(hf_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="not supported"):
        convert(str(d), str(tmp_path / "x.llmr"))


def test_missing_tokenizer(tmp_path, hf_dir):
    d = _copy(hf_dir, tmp_path)
    os.remove(d / "tokenizer.json")
    with pytest.raises(ConvertError, match="no tokenizer"):
        convert(str(d), str(tmp_path / "x.llmr"))


def test_truncated_safetensors(tmp_path, hf_dir):
    d = _copy(hf_dir, tmp_path)
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        convert(str(d), str(tmp_path / "x.llmr"))


def test_written_file_has_ordinary_permissions(good):
    umask = os.umask(0)
    os.umask(umask)
    assert good.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600


def test_huge_pages_copy_reads_the_same_tensors(good):
    """LLMRUN_HUGEPAGES=1's copy of the file in anonymous memory gives the same (read-only)
    tensors and the same logits as the map."""
    mapped, copied = llmrun.load(good, huge_pages=False), llmrun.load(good, huge_pages=True)
    for name in mapped.file.tensors:
        a, b = mapped.file.tensor(name), copied.file.tensor(name)
        assert a.data.tobytes() == b.data.tobytes() and not b.data.flags.writeable
    assert copied.file.verify() == []
    np.testing.assert_array_equal(mapped.logits([1, 2, 3]), copied.logits([1, 2, 3]))


def _pmd_mapped_kib(f: fmt.LlmrFile) -> int:
    """FilePmdMapped of f's map in /proc/self/smaps, its data touched first: KiB mapped by 2 MiB pages."""
    data = np.frombuffer(f.mm, np.uint8)
    int(data[::4096].sum())
    start, found = data.ctypes.data, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = lo <= start < hi
        elif found and head == "FilePmdMapped:":
            return int(line.split()[1])
    return 0


def _huge_folios_possible(path) -> bool:
    """Whether this kernel and filesystem read path back into 2 MiB folios when a map asks."""
    enabled = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not (os.path.exists("/proc/self/smaps") and os.path.exists(enabled)) or "[never]" in open(enabled).read():
        return False
    fmt.drop_cached_pages(str(path))
    return _pmd_mapped_kib(fmt.LlmrFile(path)) > 0


def test_written_file_is_read_back_in_huge_pages(tmp_path):
    """write() leaves the file out of the page cache, so the map reads it back in 2 MiB folios
    (decode reads every weight once a token; drop_cached_pages says what it gains); a write
    in 256 KiB pieces leaves small ones."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((1024, 4096)).astype(np.float32)  # 16 MiB

    def write(path):
        fmt.write(str(path), {"model": "x"}, b"tok",
                  [fmt.PendingTensor("w", llmrun.quant.qtype("f32"), weight.shape, lambda: (weight[i:i + 16] for i in range(0, 1024, 16)))])

    control = tmp_path / "control.llmr"
    write(control)
    if not _huge_folios_possible(control):
        pytest.skip("this kernel or filesystem keeps no huge folios of file pages")
    path = tmp_path / "w.llmr"
    write(path)
    f = fmt.LlmrFile(path)
    assert _pmd_mapped_kib(f) >= 8 * 1024
    np.testing.assert_array_equal(f.tensor("w").numpy(), weight)


def test_refused_page_advice_does_not_fail_a_load(good, monkeypatch):
    """A kernel built without transparent huge pages refuses MADV_HUGEPAGE (EINVAL): the model
    loads all the same, on the map and on the copy."""
    import mmap
    monkeypatch.setattr(mmap, "MADV_HUGEPAGE", 0x7fff, raising=False)  # no such advice: EINVAL
    for huge in (False, True):
        assert fmt.LlmrFile(good, huge_pages=huge).verify() == []
