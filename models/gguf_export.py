""".llmr -> GGUF v3, in llama.cpp's conventions: the inverse of models/gguf.py.

Every tensor is written in the type it is stored in, its blocks exactly (Tensor.rows() undoes
the X16 layout), so importing the export gives the same bytes back. What the family's entry in
llmrun/families.py says about GGUF is read from there, never restated: the architecture, the
tensor names (a tuple of ours is a fused tensor, its parts' rows concatenated, as Phi-3's
attn_qkv and ffn_up), the q/k row order (llama.cpp's `llama`-style architectures rotate adjacent
pairs: the rows are permuted back into that order, the inverse of the importer's), and the keys
the switches come from (Family.gguf_keys, read back by Family.gguf_switches).

Before anything is written, the planned metadata is read back by the importer's own reader
(models/gguf.read_config, tokenizer_from_gguf): a config it does not give back (a window that
GGUF cannot say, Gemma 3 with another layer pattern, SmolLM3 with other no-RoPE layers) or a
tokenizer it reads differently is refused in one line, instead of a file that runs another model.
"""
from __future__ import annotations

import errno
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..config import ModelConfig, differences, rope_frequencies
from ..errors import ConvertError
from ..families import BY_GGUF_ARCH, GGUF_FALLBACK, GGUF_TOP, family as family_of
from ..format import LlmrFile
from ..quant import F32
from ..atomic import atomic_path
from .gguf import ROPE_FREQS, ROPE_SHORT, read_config
from .gguf_file import GGUFTensor
from .gguf_tokenizer import tokenizer_from_gguf, tokenizer_to_gguf

QUANTIZATION_VERSION = 2  # GGML's block formats as of 2023 (general.quantization_version), ours


def permute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate-half rows of each head (0, 1, 2, ...) -> llama.cpp's order (0, 2, 4, ..., 1, 3, ...):
    the inverse of models/gguf._unpermute_rows; whole rows of any type."""
    n = rows.shape[0]
    return rows.reshape(n_heads, 2, n // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@dataclass
class _Planned:
    """A GGUF tensor to write: its type, numpy-order shape and a function giving its bytes
    as uint8 [rows, row bytes] in GGUF's order."""
    name: str
    type: object
    shape: tuple
    data: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return self.type.nbytes(self.shape)


def _rope(cfg: ModelConfig) -> tuple[dict, list[_Planned]]:
    """RoPE scaling as GGUF says it: keys, or the per-dimension divisors as a tensor (Llama 3.1's
    rope_freqs; LongRoPE's short factors with their attention factor)."""
    s = cfg.rope_scaling
    if s is None:
        return {}, []
    if s["type"] == "linear":
        return {"rope.scaling.type": "linear", "rope.scaling.factor": float(s["factor"])}, []
    # llama3's rule and explicit factors alike: the divisors of the unscaled frequencies
    unscaled = rope_frequencies(ModelConfig.from_dict(cfg.to_dict() | {"rope_scaling": None}))["global"]
    factors = (unscaled.astype(np.float64) / rope_frequencies(cfg)["global"]).astype(np.float32) \
        if s["type"] == "llama3" else np.asarray(s["factors"], np.float32)
    planned = lambda name: _Planned(name, F32, factors.shape, lambda: factors.view(np.uint8).reshape(1, -1))
    if "attention_factor" not in s:
        return {}, [planned(ROPE_FREQS)]
    return ({"rope.scaling.attn_factor": float(s["attention_factor"]),
             "rope.scaling.original_context_length": cfg.max_seq_len}, [planned(ROPE_SHORT)])


def _file_type(types: Counter, provenance: dict) -> int | None:
    """general.file_type: llama.cpp's name for the mix or the type most weights are in."""
    import gguf
    names = [str(provenance.get("type", ""))] + [t for t, _ in types.most_common()]
    for name in names:
        for candidate in ("ALL_F32" if name == "f32" else f"MOSTLY_{name.upper()}", f"MOSTLY_{name.upper()}_M"):
            if candidate in gguf.LlamaFileType.__members__:
                return int(gguf.LlamaFileType[candidate])
    return None


def plan(src: str) -> tuple[str, dict, list[_Planned], LlmrFile]:
    """(architecture, metadata key -> value, tensors) of the GGUF that `src` (.llmr) becomes,
    checked to read back as the same model; raises ConvertError for what GGUF cannot hold."""
    f = LlmrFile(src)
    meta = f.metadata
    cfg = ModelConfig.from_dict(meta["config"])
    family = family_of(cfg.arch)
    arch = family.gguf_arch or GGUF_FALLBACK
    target = BY_GGUF_ARCH[arch]  # whose names, row order and keys the file follows
    rope_keys, tensors = _rope(cfg)

    heads = {"wq": cfg.n_heads, "bq": cfg.n_heads, "wk": cfg.n_kv_heads, "bk": cfg.n_kv_heads}

    def rows_of(name: str) -> np.ndarray:
        t = f.tensor(name)
        rows = t.rows()
        n_heads = heads.get(name.rsplit(".", 1)[-1]) if target.gguf_permuted else None
        if n_heads:  # as [out features, bytes of each]: a matrix's rows, a bias's elements
            rows = permute_rows(rows.reshape(t.shape[0], -1), n_heads).reshape(rows.shape)
        return rows

    def add(gguf_name: str, ours: tuple[str, ...]):
        infos = [f.tensors[o] for o in ours]
        if len({i.type for i in infos}) > 1:
            raise ConvertError(f"{src}: {gguf_name} fuses {', '.join(o.rsplit('.', 1)[-1] for o in ours)}, stored "
                               f"as {', '.join(i.type.name for i in infos)}: llama.cpp needs one type for the fused "
                               "tensor; quantize them alike first (`llmrun quantize --pure`)")
        shape = (sum(i.shape[0] for i in infos), *infos[0].shape[1:]) if len(ours) > 1 else infos[0].shape
        data = (lambda: np.concatenate([rows_of(o) for o in ours])) if len(ours) > 1 else (lambda: rows_of(ours[0]))
        tensors.append(_Planned(gguf_name, infos[0].type, tuple(shape), data))
        left.difference_update(ours)

    left = set(f.tensors)
    top = {ours: name for name, ours in GGUF_TOP.items()}
    add(top["tok_embeddings"], ("tok_embeddings",))
    for i in range(cfg.n_layers):
        for suffix, ours in target.gguf_layer.items():
            parts = tuple(f"layers.{i}.{o}" for o in (ours if isinstance(ours, tuple) else (ours,)))
            present = [p in f.tensors for p in parts]
            if all(present):
                add(f"blk.{i}.{suffix}", parts)
            elif any(present):
                raise ConvertError(f"{src}: {', '.join(p for p, h in zip(parts, present) if not h)} missing "
                                   f"for blk.{i}.{suffix}")
    for ours in ("norm", "output"):
        if ours in f.tensors:
            add(top[ours], (ours,))
    if left:
        raise ConvertError(f"{src}: tensors {sorted(left)[:3]} have no place in llama.cpp's {arch} architecture")

    prov = meta.get("provenance") or {}
    types = Counter(t.type.name for t in tensors if len(t.shape) > 1)
    kv = {"general.type": "model", "general.name": prov.get("source_name") or Path(src).stem}
    if (file_type := _file_type(types, prov)) is not None:
        kv["general.file_type"] = file_type
    kv["general.quantization_version"] = QUANTIZATION_VERSION
    hyper = {"vocab_size": cfg.vocab_size, "context_length": cfg.max_seq_len, "embedding_length": cfg.dim,
             "block_count": cfg.n_layers, "feed_forward_length": cfg.ffn_dim, "attention.head_count": cfg.n_heads,
             "attention.head_count_kv": cfg.n_kv_heads, "rope.freq_base": float(cfg.rope_theta),
             "attention.layer_norm_rms_epsilon": float(cfg.norm_eps), "rope.dimension_count": cfg.rotary_dims,
             # llama.cpp's default is dim / heads; said always, so no reader need assume it
             "attention.key_length": cfg.head_dim, "attention.value_length": cfg.head_dim}
    hyper |= rope_keys | target.gguf_keys(cfg)
    kv |= {f"{arch}.{k}": v for k, v in hyper.items()}
    tok = tokenizer_to_gguf(meta["tokenizer"], f.tokenizer_blob, cfg.vocab_size)
    kv |= {f"tokenizer.ggml.{k}": v for k, v in tok.items()}
    if meta.get("chat_template"):
        kv["tokenizer.chat_template"] = meta["chat_template"]
    # where the weights came from and how they were quantised (llmrun's own keys; readers skip them)
    kv["llmrun.provenance"] = json.dumps({**prov, "exported_by": f"llmrun {__version__}"}, ensure_ascii=False)
    _check_reads_back(src, arch, kv, tensors, cfg, meta["tokenizer"])
    return arch, kv, tensors, f


class _PlannedFile:
    """The planned GGUF as models/gguf.py's reader sees one (metadata, tensors, data)."""

    def __init__(self, path, kv, tensors):
        self.path, self.metadata = path, kv
        self.tensors = {t.name: GGUFTensor(t.name, t.type, t.shape, 0, t.nbytes) for t in tensors}
        self._data = {t.name: t.data for t in tensors}

    def data(self, name):
        return self._data[name]()


def _check_reads_back(src, arch, kv, tensors, cfg, tok_info) -> None:
    planned = _PlannedFile(src, {"general.architecture": arch, **kv}, tensors)
    back = read_config(planned)
    bad = differences(cfg, back, BY_GGUF_ARCH[arch].name)
    if bad:
        raise ConvertError(f"{src}: a GGUF cannot hold this {cfg.arch} model as llama.cpp reads it: {bad[0]}")
    info, _ = tokenizer_from_gguf(planned.metadata)
    for key, norm in (("kind", str), ("bos_id", lambda i: i), ("eos_ids", list), ("add_bos", bool), ("add_eos", bool)):
        if norm(info.get(key)) != norm(tok_info.get(key)):
            raise ConvertError(f"{src}: the tokenizer's {key} {tok_info.get(key)!r} would read back from a GGUF "
                               f"as {info.get(key)!r}")


def _add_key(w, key: str, value) -> None:
    from gguf import GGUFValueType as V
    if isinstance(value, bool):
        w.add_key_value(key, value, V.BOOL)
    elif isinstance(value, int):
        w.add_key_value(key, value, V.UINT32)
    elif isinstance(value, float):
        w.add_key_value(key, value, V.FLOAT32)
    elif isinstance(value, str):
        w.add_key_value(key, value, V.STRING)
    else:  # a list: token types are int32, as llama.cpp's converter writes them
        sub = {str: V.STRING, float: V.FLOAT32}.get(type(value[0]), V.INT32)
        w.add_key_value(key, value, V.ARRAY, sub_type=sub)


def export(src: str, out: str, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the .llmr file `src` as the GGUF file `out` (atomically). Returns a summary:
    architecture, tensor types, bytes."""
    import gguf
    arch, kv, tensors, _ = plan(src)
    total, done = sum(t.nbytes for t in tensors), 0
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(path=None, arch=arch)
        try:
            for key, value in kv.items():
                _add_key(w, key, value)
            for t in tensors:
                w.add_tensor_info(t.name, (*t.shape[:-1], t.type.row_bytes(t.shape[-1])), np.dtype(np.uint8),
                                  t.nbytes, raw_dtype=gguf.GGMLQuantizationType(t.type.id))
            w.write_header_to_file(path=Path(tmp))
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for t in tensors:
                data = np.ascontiguousarray(t.data())
                if data.nbytes != t.nbytes:
                    raise AssertionError(f"{t.name}: {data.nbytes} bytes, {t.type.name} {list(t.shape)} takes {t.nbytes}")
                try:
                    w.write_tensor_data(data)
                except OSError as e:
                    if e.errno is None:  # numpy's tofile says "N requested and M written", no errno: on a
                        # regular file a short write means the disk (or the quota) is full
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out) from None
                    raise
                done += t.nbytes
                if progress:
                    progress(done, total)
        finally:
            w.close()
    return {"arch": arch, "tensor_types": dict(sorted(Counter(t.type.name for t in tensors).items())),
            "tensors": len(tensors), "bytes": os.path.getsize(out)}
