"""The model's hyper-parameters, as stored in a .llmr file's metadata, and the RoPE frequencies."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

ROPE_SCALINGS = ("linear", "llama3", "factors")


LIMITS = {"vocab_size": (1, 1 << 22), "dim": (1, 1 << 17), "n_layers": (1, 1 << 12), "n_heads": (1, 1 << 12),
          "n_kv_heads": (1, 1 << 12), "head_dim": (2, 1 << 12), "ffn_dim": (1, 1 << 20),
          "max_seq_len": (1, 1 << 24)}
ROPE_KEYS = {"linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
             "factors": ("factors",)}


def _positive(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < math.inf


def _check_rope_scaling(s, head_dim: int) -> None:
    kind = s.get("type") if isinstance(s, dict) else None
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"unsupported RoPE scaling {kind!r}; supported: {', '.join(ROPE_SCALINGS)}")
    for key in ROPE_KEYS[kind]:
        v = s.get(key)
        ok = (isinstance(v, list) and len(v) == head_dim // 2 and all(map(_positive, v))) if key == "factors" \
            else _positive(v)
        if not ok:
            raise ValueError(f"RoPE scaling {kind}: bad {key} {v!r}")
    if kind == "llama3" and not s["high_freq_factor"] > s["low_freq_factor"]:
        raise ValueError("RoPE scaling llama3: high_freq_factor must exceed low_freq_factor")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int  # residual stream width
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (grouped-query attention when fewer than n_heads)
    head_dim: int
    ffn_dim: int  # SwiGLU hidden width
    norm_eps: float
    rope_theta: float
    max_seq_len: int  # the context the model was trained for
    tie_embeddings: bool  # the output head is the embedding table
    attn_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    # {"type": "linear", "factor"}, {"type": "llama3", "factor", ...} or
    # {"type": "factors", "factors": [hd/2 divisors]} (what Llama 3.1 GGUFs store)
    rope_scaling: dict | None = None
    arch: str = "llama"

    def __post_init__(self):
        # Bounds well past any released model, so a corrupt or hostile config fails here, in
        # one line, not in an allocation or a division.
        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} = {v!r} is not a whole number in [{lo}, {hi}]")
        for name in ("norm_eps", "rope_theta"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"{name} = {getattr(self, name)!r} is not a positive number")
        if not isinstance(self.tie_embeddings, bool) or not isinstance(self.attn_bias, bool):
            raise ValueError("tie_embeddings and attn_bias must be true or false")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling, self.head_dim)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies theta^(-2i/d) for i < head_dim/2, with the config's scaling applied."""
    d = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)  # [hd/2]
    s = cfg.rope_scaling
    if s is None:
        pass
    elif s["type"] == "linear":
        inv_freq = inv_freq / s["factor"]
    elif s["type"] == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
        # interpolated smoothly.
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_ctx = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        scaled = np.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
        inv_freq = np.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    elif s["type"] == "factors":
        inv_freq = inv_freq / np.asarray(s["factors"], dtype=np.float64)
    return inv_freq.astype(np.float32)
