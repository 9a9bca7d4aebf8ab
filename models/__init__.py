"""Importers: checkpoints in other formats → one .llmr file."""
from __future__ import annotations

import os
from typing import Callable

from ..errors import ConvertError

HF_MARKERS = ("config.json", "tokenizer.json", "tokenizer.model")  # a checkpoint (or a tokenizer) directory


def source_kind(src: str) -> str:
    """"hf" (a checkpoint directory), "gguf", "llmr", or "other" (any other file)."""
    if os.path.isdir(src):
        if not any(os.path.exists(os.path.join(src, f)) for f in HF_MARKERS):
            raise ConvertError(f"{src} is a directory but not a Hugging Face checkpoint (no config.json "
                               "or tokenizer files in it)")
        return "hf"
    if not os.path.exists(src):
        raise ConvertError(f"{src} does not exist")
    with open(src, "rb") as f:
        magic = f.read(8)
    from ..format import MAGIC
    return "gguf" if magic[:4] == b"GGUF" else "llmr" if magic == MAGIC else "other"


def expected_tensors(src: str, cfg, found: dict) -> dict[str, tuple]:
    """Our name -> shape of every tensor the graph needs, after checking that `found` (our
    name -> shape, as the source stores it) has each in that shape: a source that disagrees
    with its own config fails here, before any conversion."""
    from ..model import tensor_shapes
    shapes = tensor_shapes(cfg)
    missing = shapes.keys() - found.keys()
    if missing:
        raise ConvertError(f"{src}: missing tensors {sorted(missing)[:5]}")
    for name, shape in shapes.items():
        if tuple(found[name]) != shape:
            raise ConvertError(f"{src}: tensor {name} has shape {list(found[name])}; the config implies {list(shape)}")
    return shapes


def convert(src: str, out: str, type: str | None = None,
            progress: Callable[[int, int], None] | None = None, allow_requantize: bool = False) -> dict:
    """Convert `src` (a Hugging Face checkpoint directory or a GGUF file) into the .llmr file
    `out`. `type` None keeps a GGUF's types where we run them, and means f16 for a checkpoint; a
    k-quant mix's name (q4_k_m) means its rules (quant/mixes.py), which refuse to quantise a GGUF's
    quantised tensors again unless `allow_requantize`."""
    from ..quant.mixes import MIXES
    if isinstance(type, str) and type in MIXES:
        import dataclasses
        from ..quant.policy import target
        type = dataclasses.replace(target(type), allow_requantize=allow_requantize)
    kind = source_kind(src)
    if kind == "hf":
        from .hf import convert as convert_hf
        return convert_hf(src, out, type or "f16", progress)
    if kind == "gguf":
        from .gguf import convert as convert_gguf
        return convert_gguf(src, out, type, progress)
    if kind == "llmr":
        raise ConvertError(f"{src} is already a .llmr file")
    raise ConvertError(f"{src}: neither a Hugging Face checkpoint directory nor a GGUF file")


def quantize(src: str, out: str, policy, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `src` (a .llmr file, a Hugging Face checkpoint directory or a GGUF file) as the
    .llmr file `out` with each tensor in the type `policy` (llmrun.quant.Policy) gives it."""
    kind = source_kind(src)
    if kind == "llmr":
        from .llmr import requantize
        return requantize(src, out, policy, progress)
    if kind in ("hf", "gguf"):
        return convert(src, out, policy, progress)
    raise ConvertError(f"{src}: neither a .llmr file, a Hugging Face checkpoint directory nor a GGUF file")


EXPORT_FORMATS = ("gguf", "hf")
HF_DTYPES = ("bf16", "f16", "f32")


def check_export(format: str, dtype: str | None) -> None:
    """Refuse an export format or dtype we do not write (before any work)."""
    if format not in EXPORT_FORMATS:
        raise ConvertError(f"unknown export format {format!r}; known: {', '.join(EXPORT_FORMATS)}")
    if format == "gguf" and dtype is not None:
        raise ConvertError("--dtype is for --format hf: a GGUF export keeps every tensor's stored type "
                           "(change them with `llmrun quantize` first)")
    if format == "hf" and (dtype or "bf16") not in HF_DTYPES:
        raise ConvertError(f"--dtype {dtype!r} for --format hf; one of {', '.join(HF_DTYPES)}")


def export(src: str, out: str, format: str = "gguf", dtype: str | None = None,
           progress: Callable[[int, int], None] | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Write the .llmr file `src` as `format`: "gguf" (the file `out`, every tensor in its stored
    type, lossless: models/gguf_export.py) or "hf" (a Hugging Face checkpoint folder `out`,
    weights in `dtype`, bf16 by default: models/hf_export.py). Written atomically; `say` gets
    the notes a user should read (quantised weights dequantised). Returns a summary."""
    import errno
    check_export(format, dtype)
    if source_kind(src) != "llmr":
        raise ConvertError(f"{src}: not a .llmr file (convert it first with `llmrun convert`; the command line's `llmrun export` converts what it is given)")
    try:
        if format == "gguf":
            from .gguf_export import export as run
            return run(src, out, progress)
        from .hf_export import export as run
        return run(src, out, dtype or "bf16", progress, say)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConvertError(f"{out}: no space left on the device (nothing was left behind)") from None
        raise
