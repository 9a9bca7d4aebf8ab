"""The model's hyper-parameters, as stored in a .llmr file's metadata, and the RoPE frequencies.

Besides LLaMA's sizes, a config holds the switches by which the families differ (llmrun/families.py
reads them from each family's checkpoints): every one has the value that leaves a LLaMA block as
it is, so a LLaMA config names none of them."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

ROPE_SCALINGS = ("linear", "llama3", "factors")
ACTIVATIONS = ("silu", "gelu_tanh")  # the feed-forward gate's: SwiGLU, or GeGLU with GELU's tanh form (Gemma)


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
    if kind == "factors" and "attention_factor" in s and not _positive(s["attention_factor"]):
        raise ValueError(f"RoPE scaling factors: bad attention_factor {s['attention_factor']!r}")
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
    # {"type": "factors", "factors": [rotary dims / 2 divisors]} (what Llama 3.1 GGUFs store; with
    # LongRoPE's short factors, also "attention_factor", which scales cos and sin)
    rope_scaling: dict | None = None
    arch: str = "llama"  # the family (llmrun/families.py)
    # --- the family switches ---
    qk_norm: bool = False  # RMSNorm over each head of q and of k before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False  # each sublayer's output normed before the residual add (Gemma 3)
    act: str = "silu"  # the feed-forward gate's activation, one of ACTIVATIONS
    embed_scale: float = 1.0  # the embeddings times this on the way in (Gemma 3: sqrt(dim); Granite)
    residual_scale: float = 1.0  # each sublayer's output times this before the add (Granite)
    attn_scale: float | None = None  # q.k times this; None: head_dim ** -0.5
    logit_scale: float = 1.0  # the logits times this (Granite: 1 / logits_scaling)
    rope_dims: int | None = None  # RoPE turns the first rope_dims of each head; None: all (Phi-4-mini: 3/4)
    no_rope_layers: tuple = ()  # layers without RoPE (SmolLM3: every fourth)
    sliding_window: int = 0  # windowed layers see the last sliding_window positions (Mistral v0.1, Gemma 3)
    window_layers: tuple = ()  # which layers are windowed
    rope_local_theta: float | None = None  # the windowed layers' own RoPE base, unscaled (Gemma 3)

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
        for name in ("qk_norm", "post_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act = {self.act!r}; supported: {', '.join(ACTIVATIONS)}")
        for name in ("embed_scale", "residual_scale", "logit_scale") + (("attn_scale",) if self.attn_scale is not None else ()) \
                + (("rope_local_theta",) if self.rope_local_theta is not None else ()):
            if not _positive(getattr(self, name)):
                raise ValueError(f"{name} = {getattr(self, name)!r} is not a positive number")
        if self.rope_dims is not None and (isinstance(self.rope_dims, bool) or not isinstance(self.rope_dims, int)
                                           or not 2 <= self.rope_dims <= self.head_dim or self.rope_dims % 2):
            raise ValueError(f"rope_dims = {self.rope_dims!r} is not an even number in [2, head_dim {self.head_dim}]")
        if isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) or not 0 <= self.sliding_window <= 1 << 24:
            raise ValueError(f"sliding_window = {self.sliding_window!r} is not a whole number in [0, {1 << 24}]")
        for name in ("no_rope_layers", "window_layers"):
            layers = getattr(self, name)
            if not isinstance(layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int)
                                                            or not 0 <= i < self.n_layers for i in layers):
                raise ValueError(f"{name} = {layers!r} is not a list of layer numbers below {self.n_layers}")
            object.__setattr__(self, name, tuple(sorted(set(layers))))
        if bool(self.window_layers) != bool(self.sliding_window):
            raise ValueError("sliding_window and window_layers go together")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling, self.rotary_dims)

    @property
    def rope_mscale(self) -> float:
        """cos and sin times this: LongRoPE's attention factor (Phi-3.5, Phi-4-mini), else 1."""
        return float((self.rope_scaling or {}).get("attention_factor", 1.0))

    @property
    def rotary_dims(self) -> int:
        """The elements of each head RoPE turns."""
        return self.rope_dims or self.head_dim

    def layer_rope(self, layer: int) -> str:
        """"none", "global" (rope_theta and its scaling) or "local" (a windowed layer's own base)."""
        if layer in self.no_rope_layers:
            return "none"
        return "local" if self.rope_local_theta is not None and layer in self.window_layers else "global"

    def layer_window(self, layer: int) -> int:
        """The positions a token of this layer sees back (itself included); 0: all."""
        return self.sliding_window if layer in self.window_layers else 0

    def to_dict(self) -> dict:
        """The metadata form: the family switches only where they differ from LLaMA's."""
        d = asdict(self)
        defaults = {f.name: f.default for f in fields(self) if f.name in SWITCHES}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                if k not in defaults or v != defaults[k]}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)


SWITCHES = ("qk_norm", "post_norms", "act", "embed_scale", "residual_scale", "attn_scale", "logit_scale",
            "rope_dims", "no_rope_layers", "sliding_window", "window_layers", "rope_local_theta")


def rope_frequencies(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The RoPE frequencies by kind: "global", and "local" where windowed layers have their own base."""
    return {"global": rope_inv_freq(cfg)} | ({"local": rope_inv_freq(cfg, local=True)}
                                             if cfg.rope_local_theta is not None else {})


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse frequencies theta^(-2i/d) for i < d/2 (d: the rotated dims), with the config's
    scaling applied; `local`: the windowed layers' own base (rope_local_theta), unscaled."""
    d = cfg.rotary_dims
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)  # [d/2]
    s = None if local else cfg.rope_scaling
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


def _same(a, b) -> bool:
    """Equal, floats to float32's precision (GGUF and some configs store them so)."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def differences(cfg: ModelConfig, back: ModelConfig, arch: str | None = None) -> list[str]:
    """The settings in which `back` (a config read back from an export) differs from `cfg`:
    floats to float32's precision, RoPE by the frequencies it gives; `arch` the family name
    the export is read back as (None: cfg's own)."""
    a, b = asdict(cfg), asdict(back)
    a["arch"] = arch or a["arch"]
    bad = [k for k in sorted(set(a) | set(b)) if k != "rope_scaling" and not _same(a.get(k), b.get(k))]
    fa, fb = rope_frequencies(cfg), rope_frequencies(back)
    if fa.keys() != fb.keys() or any(not np.allclose(fa[k], fb[k], rtol=1e-6, atol=0) for k in fa) \
            or not _same(cfg.rope_mscale, back.rope_mscale):
        bad.append("rope_scaling")
    return [f"{k} {a.get(k)!r} would read back as {b.get(k)!r}" for k in bad]
