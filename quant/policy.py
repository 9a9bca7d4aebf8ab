"""Which type each tensor gets when a model is quantised to a target type."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .mixes import MIXES, Mix, fit, missing_types, mix_type
from .types import F16, F32, Q4_0, Q4_1, Q8_0, QType, qtype

EMBEDDINGS = ("tok_embeddings", "output")
DEFAULT_POLICY = ("quant/policy.py: norms and biases f32; embeddings and output head one step above the "
                  "type; wk, wv, w_down q8_0 at 4 bits")
# Measured on SmolLM2-135M (benchmarks/quality.py, and ablations quantising one kind of
# tensor at a time to q4_0, mean KL over the three reference prompts): w_down 0.17, wv 0.08,
# wk 0.013 (and the only other kind to flip an argmax); wq, wo, w_gate, w_up 0.006-0.019.
# Keeping these three at 8 bits takes q4_0's KL on "The capital of France is" from 3.2 to 0.09
# for 1% more file.
SENSITIVE_AT_4_BITS = ("wk", "wv", "w_down")


@dataclass(frozen=True)
class Policy:
    """A quantisation the user asked for (`llmrun quantize`): the target type and overrides.

    type_for(name, shape) decides, first match wins: 1-D tensors f32; a `tensor_types`
    (regex, type) whose regex matches the name (re.search); the embedding table
    `embedding_type`, the output head `output_type` (a tied table is the head: `output_type`,
    else `embedding_type`); with `pure`, the target for every matrix; a k-quant `mix`'s rules
    (quant/mixes.py); else choose_type's defaults. Rows that are not a whole number of the
    type's blocks get its fallback (q4_k -> q5_0, ...; f16 for the 32-element types).

    `tied`, `n_layers` and `gqa` are the model's, set by the converters (for_model)."""
    type: QType
    output_type: QType | None = None
    embedding_type: QType | None = None
    tensor_types: tuple = ()  # ((regex, QType), ...)
    pure: bool = False
    allow_requantize: bool = False
    tied: bool = False
    importance: dict | None = None  # tensor name -> column importance, for the calibrated quantisers
    calibration: str | None = None  # what the importance was measured on
    mix: Mix | None = None  # a k-quant mix (q4_k_m, ...), whose base type is `type`
    n_layers: int = 0
    gqa: int = 1  # query heads per key/value head

    def __post_init__(self):
        if self.mix and missing_types(self.mix):
            from .mixes import names
            raise ValueError(f"{self.mix.name} needs {', '.join(missing_types(self.mix))}, which llmrun "
                             f"cannot store yet (the mixes it writes: {names() or 'none yet'})")

    def for_model(self, cfg, tied: bool) -> "Policy":
        """This policy for a model of config `cfg` (the mixes' rules count layers and heads)."""
        return dataclasses.replace(self, tied=tied, n_layers=cfg.n_layers, gqa=cfg.n_heads // cfg.n_kv_heads)

    @property
    def name(self) -> str:
        return self.mix.name if self.mix else self.type.name

    def type_for(self, name: str, shape) -> QType:
        if len(shape) < 2:
            return F32
        chosen = next((t for pattern, t in self.tensor_types if re.search(pattern, name)), None)
        if chosen is None and name == "tok_embeddings":
            chosen = (self.output_type or self.embedding_type) if self.tied else self.embedding_type
        if chosen is None and name == "output":
            chosen = self.output_type
        if chosen is None and not self.pure:
            if self.mix:
                return mix_type(self.mix, name, shape, self.n_layers, self.gqa, self.tied)
            return choose_type(name, shape, self.type)
        return fit(chosen or self.type, shape[-1])

    def describe(self) -> dict:
        """For the output file's metadata."""
        return {"type": self.type.name, "mix": self.mix and self.mix.name, "output_type": self.output_type and self.output_type.name,
                "embedding_type": self.embedding_type and self.embedding_type.name,
                "tensor_types": [[p, t.name] for p, t in self.tensor_types], "pure": self.pure,
                "allow_requantize": self.allow_requantize, "calibration": self.calibration}



def quantize_weights(name: str, values, t: QType, policy: Policy | None = None):
    """What the converters call: float32 rows [rows, n] of tensor `name` -> bytes of type t,
    after refusing NaN, infinity and what f16 cannot hold (reference.check_weights);
    importance-weighted where `policy` is calibrated and the type has a calibrated quantiser
    (quant/calibrate.py), else the plain one (quantize_plain)."""
    from .calibrate import weighted_quantizer
    from .reference import check_weights
    check_weights(values, t)
    weighted = weighted_quantizer(t)
    if weighted and policy and policy.importance and name in policy.importance:
        return weighted(values, policy.importance[name])
    return quantize_plain(values, t)


def quantize_plain(values, t: QType):
    """float32 rows [..., n] -> bytes of type t by the C quantisers (kernels/cpu/quants_ref.c), rows
    among the kernels' threads: reference.quantize's bytes (tests/test_kernels.py holds them to it
    on random and edge rows), about ten times faster for the k-quants and iq4_nl, whose numpy
    searches took a 1B model's conversion to q4_k_m over 20 minutes."""
    import numpy as np

    from .. import _kernels
    values = np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty((*values.shape[:-1], t.row_bytes(values.shape[-1])), np.uint8)
    _kernels.quantize(out, values, t.id)
    return out


def choose_type(name: str, shape, target) -> QType:
    """The type for tensor `name` of `shape` when the user asks for `target`.

    - 1-D tensors (norm weights, biases) stay f32: they are tiny and precision-critical.
    - The embedding table and output head (one table when tied) get one step more than the
      target: f16 for q8_0, q8_0 for 4- and 5-bit types. They set every logit directly.
    - At 4 and 5 bits (q4_*, q5_*: under 6 bits per weight), `wk`, `wv` and `w_down` get q8_0
      (see SENSITIVE_AT_4_BITS).
    - Rows that are not a whole number of blocks get the type's fallback (types.py).
    """
    if isinstance(target, Policy):
        return target.type_for(name, shape)
    target = qtype(target) if not isinstance(target, QType) else target
    if len(shape) < 2:
        return F32
    if not target.quantized:
        return target
    if shape[-1] % target.block_size:
        return fit(target, shape[-1])
    four_bit = target.bits_per_weight < 6  # q4_0 .. q5_1
    if name in EMBEDDINGS:
        return Q8_0 if four_bit else F16
    if four_bit and name.rsplit(".", 1)[-1] in SENSITIVE_AT_4_BITS:
        return Q8_0
    return target


def target(name: str) -> Policy:
    """What `--type NAME` asks for: a k-quant mix (q4_k_m, ...; `q6_k` is the mix, as in
    llama-quantize, with the output head q6_k too) or a type under the default policy."""
    mix = MIXES.get(name)
    return Policy(mix.base_type, mix=mix) if mix else Policy(qtype(name))
