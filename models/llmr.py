"""A .llmr file -> another, each tensor in the type a quantisation policy gives it."""
from __future__ import annotations

import os
from collections import Counter
from typing import Callable

from .. import __version__
from ..config import ModelConfig
from ..errors import ConvertError
from ..format import LlmrFile, PendingTensor, write
from ..quant import Policy, choose_type, dequantize, quantize_weights

CHUNK_BYTES = 16 << 20  # float32 bytes converted at a time: bounds the memory


def requantize(src: str, out: str, policy: Policy, progress: Callable[[int, int], None] | None = None) -> dict:
    f = LlmrFile(src)
    meta = dict(f.metadata)
    policy = policy.for_model(ModelConfig.from_dict(meta["config"]), tied="output" not in f.tensors)
    tensors, conversions = [], Counter()
    for name, info in f.tensors.items():
        t = choose_type(name, info.shape, policy)
        if info.type.quantized and t is not info.type and not policy.allow_requantize:
            raise ConvertError(f"{src}: tensor {name} is already {info.type.name}; quantising it again to {t.name} "
                               "compounds the error: pass --allow-requantize to do it anyway")
        conversions[info.type.name if t is info.type else f"{info.type.name}->{t.name}"] += 1
        tensors.append(PendingTensor(name, t, info.shape, _chunks(f, name, t, policy)))
    meta["provenance"] = {
        "source": os.path.basename(os.path.abspath(src)), "source_format": "llmr",
        "source_provenance": f.metadata.get("provenance"), "converter": f"llmrun {__version__}",
        "type": policy.type.name, "tensor_types": dict(sorted(conversions.items())), "policy": policy.describe(),
    }
    write(out, meta, bytes(f.tokenizer_blob), tensors, progress)
    return meta


def _chunks(f: LlmrFile, name: str, t, policy: Policy):
    def chunks():
        tensor = f.tensor(name)
        rows = tensor.rows()  # [R, row bytes], GGUF block order whatever the stored layout
        if t is tensor.type:
            yield rows  # the same type: the blocks exactly
            return
        n = tensor.shape[-1]
        step = max(1, CHUNK_BYTES // (4 * n))
        for start in range(0, rows.shape[0], step):
            yield quantize_weights(name, dequantize(rows[start:start + step], tensor.type, n), t, policy)
    return chunks
