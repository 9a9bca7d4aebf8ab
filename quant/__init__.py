"""Block formats: the numpy reference quantisers and the per-tensor type policy."""
from .types import BF16, F16, F32, Q4_0, Q4_1, Q8_0, TYPES, QType, qtype
from .reference import dequantize, quantize
from .policy import choose_type

__all__ = ["QType", "TYPES", "qtype", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1",
           "quantize", "dequantize", "choose_type"]
