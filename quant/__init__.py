"""Block formats: the type table, the numpy reference quantisers and the per-tensor type policy."""
import importlib

from .types import (BF16, F16, F32, GGML_TYPES_BY_ID, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1,
                    Q5_K, Q6_K, Q8_0, Q8_K, TABLE, TYPES, QType, ggml_type, qtype)

# The rest needs numpy, so it loads on first use: the command line builds its help from the type
# table above when it starts, and should not wait for numpy to do so.
_LAZY = {"quantize": "reference", "dequantize": "reference", "Policy": "policy", "choose_type": "policy",
         "quantize_weights": "policy", "dequantize_ggml": "kquants",
         "restore_blocks": "kquants"}

__all__ = ["QType", "TABLE", "TYPES", "qtype", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1",
           "quantize", "dequantize", "choose_type", "Policy", "quantize_weights",
           "GGML_TYPES_BY_ID", "ggml_type", "dequantize_ggml", "restore_blocks",
           "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_XS"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
