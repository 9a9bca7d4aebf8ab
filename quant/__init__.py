"""Block formats: the numpy reference quantisers and the per-tensor type policy."""
from .types import (BF16, F16, F32, GGML_TYPES_BY_ID, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1,
                    Q5_K, Q6_K, Q8_0, Q8_K, TYPES, QType, ggml_type, qtype)
from .reference import dequantize, quantize
from .policy import Policy, choose_type, quantize_weights
from .kquants import dequantize_ggml

__all__ = ["QType", "TYPES", "qtype", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1",
           "quantize", "dequantize", "choose_type", "Policy", "quantize_weights",
           "GGML_TYPES_BY_ID", "ggml_type", "dequantize_ggml",
           "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
