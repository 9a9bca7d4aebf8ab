"""Which type each tensor gets when a model is quantised to a target type."""
from __future__ import annotations

from .types import F16, F32, Q8_0, QType, qtype

EMBEDDINGS = ("tok_embeddings", "output")
# Measured on SmolLM2-135M (benchmarks/quality.py, and ablations quantising one kind of
# tensor at a time to q4_0, mean KL over the three reference prompts): w_down 0.17, wv 0.08,
# wk 0.013 (and the only other kind to flip an argmax); wq, wo, w_gate, w_up 0.006-0.019.
# Keeping these three at 8 bits takes q4_0's KL on "The capital of France is" from 3.2 to 0.09
# for 1% more file.
SENSITIVE_AT_4_BITS = ("wk", "wv", "w_down")


def choose_type(name: str, shape, target) -> QType:
    """The type for tensor `name` of `shape` when the user asks for `target`.

    - 1-D tensors (norm weights, biases) stay f32: they are tiny and precision-critical.
    - The embedding table and output head (one table when tied) get one step more than the
      target: f16 for q8_0, q8_0 for 4-bit types. They set every logit directly.
    - At 4 bits, `wk`, `wv` and `w_down` get q8_0 (see SENSITIVE_AT_4_BITS).
    - Rows that are not a whole number of blocks fall back to f16.
    """
    target = qtype(target) if not isinstance(target, QType) else target
    if len(shape) < 2:
        return F32
    if not target.quantized:
        return target
    if shape[-1] % target.block_size:
        return F16
    four_bit = target.bits_per_weight < 6
    if name in EMBEDDINGS:
        return Q8_0 if four_bit else F16
    if four_bit and name.rsplit(".", 1)[-1] in SENSITIVE_AT_4_BITS:
        return Q8_0
    return target
