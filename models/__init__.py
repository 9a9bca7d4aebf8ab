"""Importers: checkpoints in other formats → one .llmr file."""
from __future__ import annotations

import os
from typing import Callable

from ..errors import ConvertError


def convert(src: str, out: str, type: str = "f16", progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert `src` (a Hugging Face checkpoint directory) into the .llmr file `out`."""
    if not os.path.exists(src):
        raise ConvertError(f"{src} does not exist")
    if os.path.isdir(src):
        from .hf import convert as convert_hf
        return convert_hf(src, out, type, progress)
    with open(src, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        raise ConvertError(f"{src}: GGUF import is not supported yet; convert the Hugging Face checkpoint instead")
    raise ConvertError(f"{src}: not a Hugging Face checkpoint directory")
