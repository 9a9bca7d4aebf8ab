"""The model families: everything a family *is*, one entry each, for the importers (models/hf.py,
models/gguf.py), `llmrun info` and the docs to read.

A family is the LLaMA block with some of the switches in llmrun/config.py set. Its entry says
how Hugging Face names it (`architectures` in config.json) and how llama.cpp's GGUF files do
(`general.architecture`), which of its tensors go where in our graph (both sources' names; a
fused tensor maps to the parts it is split into, in row order), how its config keys and GGUF
metadata become the switches, and whether llama.cpp's converter permuted its q/k rows for
adjacent-pair RoPE (ours is rotate-half, so those are put back at import).

Reference for each: transformers' modelling code (../shared/reference/families.*), and for
the GGUF side llama.cpp's converter (conversion/*.py) and loader (src/llama-model.cpp), whose
conventions tests/family_gguf.py records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

# Hugging Face tensor names after "model.layers.{i}." -> ours after "layers.{i}.": LLaMA's.
HF_LAYER = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv", "self_attn.o_proj.weight": "wo",
    "self_attn.q_proj.bias": "bq", "self_attn.k_proj.bias": "bk", "self_attn.v_proj.bias": "bv",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "w_gate", "mlp.up_proj.weight": "w_up", "mlp.down_proj.weight": "w_down",
}
HF_TOP = {"model.embed_tokens.weight": "tok_embeddings", "model.norm.weight": "norm", "lm_head.weight": "output"}
# GGUF tensor names after "blk.{i}." -> ours: LLaMA's.
GGUF_LAYER = {
    "attn_norm.weight": "attn_norm", "ffn_norm.weight": "ffn_norm",
    "attn_q.weight": "wq", "attn_k.weight": "wk", "attn_v.weight": "wv", "attn_output.weight": "wo",
    "attn_q.bias": "bq", "attn_k.bias": "bk", "attn_v.bias": "bv",
    "ffn_gate.weight": "w_gate", "ffn_up.weight": "w_up", "ffn_down.weight": "w_down",
}
GGUF_TOP = {"token_embd.weight": "tok_embeddings", "output_norm.weight": "norm", "output.weight": "output"}

HF_QK_NORMS = {"self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm"}
GGUF_QK_NORMS = {"attn_q_norm.weight": "q_norm", "attn_k_norm.weight": "k_norm"}


class Unsupported(ValueError):
    """A checkpoint of the family that uses something the graph does not run."""


def _none(*_) -> dict:
    return {}


@dataclass(frozen=True)
class Family:
    name: str  # ours: config.arch in a .llmr file
    summary: str  # what the family adds to the LLaMA block, for `llmrun info` and the docs
    hf_architectures: tuple[str, ...] = ()
    gguf_arch: str | None = None
    hf_layer: dict = field(default_factory=lambda: HF_LAYER)
    gguf_layer: dict = field(default_factory=lambda: GGUF_LAYER)
    gguf_permuted: bool = True  # llama.cpp's converter permuted q/k rows for adjacent-pair RoPE
    # Hugging Face stores norm weights as offsets from 1 (Gemma's (1 + w)): added at import, as
    # llama.cpp's converter adds it into its GGUFs
    hf_norm_offset: float = 0.0
    # config.json (a dict) -> switches (ModelConfig fields); raises Unsupported
    hf_switches: Callable[[dict, int], dict] = _none
    # GGUF metadata, its arch's key prefix and the layer count -> switches
    gguf_switches: Callable[[dict, str, int], dict] = _none
    # the inverses, for the exporters (models/gguf_export.py, models/hf_export.py): a config
    # (ModelConfig) -> the GGUF keys (after "{arch}.") and the config.json keys its switches
    # are read from; the exporters read them back through the functions above and refuse a
    # config they do not give back (what the format cannot say)
    gguf_keys: Callable[[object], dict] = _none
    hf_keys: Callable[[object], dict] = _none
    hf_model_type: str = "llama"  # config.json's model_type


# --- the switches each family reads -------------------------------------------------------------

def _window_from_hf(c: dict, n_layers: int, default_on: bool) -> dict:
    """A sliding window over every layer (Mistral v0.1, Phi-3), or from Qwen2/3's
    max_window_layers on (when use_sliding_window is set): transformers' layer types."""
    window = c.get("sliding_window")
    if not window or not c.get("use_sliding_window", default_on):
        return {}
    if isinstance(c.get("layer_types"), list) and len(c["layer_types"]) == n_layers:
        layers = [i for i, t in enumerate(c["layer_types"]) if t == "sliding_attention"]
    else:
        first = c.get("max_window_layers", 0) if "use_sliding_window" in c else 0
        layers = list(range(int(first or 0), n_layers))
    return {"sliding_window": int(window), "window_layers": layers} if layers else {}


def _qwen(c: dict, n_layers: int) -> dict:
    return _window_from_hf(c, n_layers, default_on=False)


def _qwen3(c: dict, n_layers: int) -> dict:
    return {"qk_norm": True, **_qwen(c, n_layers)}


def _mistral(c: dict, n_layers: int) -> dict:
    return _window_from_hf(c, n_layers, default_on=True)


def _smollm3_layers(n_layers: int, interval: int = 4) -> list[int]:
    """The layers without RoPE when a config does not list them: every `interval`-th (transformers'
    no_rope_layer_interval, 4 by default, and what llama.cpp assumes, GGUFs recording none)."""
    return [i for i in range(n_layers) if (i + 1) % interval == 0]


def _smollm3(c: dict, n_layers: int) -> dict:
    flags = c.get("no_rope_layers")
    if isinstance(flags, list) and len(flags) == n_layers:
        no_rope = [i for i, use_rope in enumerate(flags) if not use_rope]
    else:
        no_rope = _smollm3_layers(n_layers, int(c.get("no_rope_layer_interval") or 4))
    return {"no_rope_layers": no_rope, **_window_from_hf(c, n_layers, default_on=False)}


def _phi3(c: dict, n_layers: int) -> dict:
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    fraction = float(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)))
    head_dim = int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
    rope_dims = int(head_dim * fraction)
    return ({"rope_dims": rope_dims} if rope_dims != head_dim else {}) | _window_from_hf(c, n_layers, default_on=True)


def _gemma3(c: dict, n_layers: int) -> dict:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if c.get(key) is not None:
            raise Unsupported(f"{key} (Gemma 2's soft-capping) is not supported")
    if c.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise Unsupported(f"hidden_activation {c['hidden_activation']!r} is not supported")
    types = c.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        windowed = [i for i, t in enumerate(types) if t == "sliding_attention"]
    else:  # older configs: every sliding_window_pattern-th layer global
        pattern = int(c.get("sliding_window_pattern") or 6)
        windowed = [i for i in range(n_layers) if (i + 1) % pattern]
    params = c.get("rope_parameters") or {}
    local = (params.get("sliding_attention") or {}).get("rope_theta", c.get("rope_local_base_freq", 10000.0))
    hidden = int(c["hidden_size"])
    return {"qk_norm": True, "post_norms": True, "act": "gelu_tanh",
            "embed_scale": float(math.sqrt(hidden)),
            "attn_scale": float(c.get("query_pre_attn_scalar") or c.get("head_dim") or 256) ** -0.5,
            "sliding_window": int(c["sliding_window"]), "window_layers": windowed, "rope_local_theta": float(local)}


def _granite(c: dict, n_layers: int) -> dict:
    return {"embed_scale": float(c.get("embedding_multiplier", 1.0)),
            "residual_scale": float(c.get("residual_multiplier", 1.0)),
            "attn_scale": float(c.get("attention_multiplier", 1.0)),  # GraniteConfig's default: 1, not hd^-0.5
            "logit_scale": 1.0 / float(c.get("logits_scaling", 1.0))}


def _gguf_qwen3(m: dict, arch: str, n_layers: int) -> dict:
    return {"qk_norm": True}


def _gguf_smollm3(m: dict, arch: str, n_layers: int) -> dict:
    return {"no_rope_layers": _smollm3_layers(n_layers)}


def _gguf_phi3(m: dict, arch: str, n_layers: int) -> dict:
    out = {}
    dims, heads = m.get(f"{arch}.rope.dimension_count"), m.get(f"{arch}.attention.head_count")
    head_dim = m.get(f"{arch}.attention.key_length") or m[f"{arch}.embedding_length"] // heads
    if dims and int(dims) != head_dim:
        out["rope_dims"] = int(dims)
    window = int(m.get(f"{arch}.attention.sliding_window") or 0)
    if window:
        out |= {"sliding_window": window, "window_layers": list(range(n_layers))}
    return out


def _gguf_gemma3(m: dict, arch: str, n_layers: int) -> dict:
    dim, heads = int(m[f"{arch}.embedding_length"]), int(m[f"{arch}.attention.head_count"])
    head_dim = int(m.get(f"{arch}.attention.key_length") or dim // heads)
    # What the GGUF does not record, as llama.cpp's loader assumes it: every sixth layer global,
    # the 27B (62 layers) scaling attention by (dim / heads)^-0.5, the others by head_dim^-0.5.
    scale = (dim / heads if n_layers == 62 else head_dim) ** -0.5
    return {"qk_norm": True, "post_norms": True, "act": "gelu_tanh", "embed_scale": float(math.sqrt(dim)),
            "attn_scale": scale, "sliding_window": int(m[f"{arch}.attention.sliding_window"]),
            "window_layers": [i for i in range(n_layers) if (i + 1) % 6],
            "rope_local_theta": float(m.get(f"{arch}.rope.freq_base_swa", 10000.0))}


def _gguf_granite(m: dict, arch: str, n_layers: int) -> dict:
    scale = m.get(f"{arch}.attention.scale")
    return {"embed_scale": float(m.get(f"{arch}.embedding_scale", 1.0)),
            "residual_scale": float(m.get(f"{arch}.residual_scale", 1.0)),
            "attn_scale": float(scale) if scale else None,
            "logit_scale": 1.0 / float(m.get(f"{arch}.logit_scale", 1.0))}


# --- the inverses: a config's switches as the keys the readers above take ------------------------

def _hf_window(cfg, default_on: bool) -> dict:
    """A window as transformers' layer types (with use_sliding_window where the family needs it)."""
    if not cfg.sliding_window:
        return {"use_sliding_window": False} if not default_on else {"sliding_window": None}
    types = ["sliding_attention" if i in cfg.window_layers else "full_attention" for i in range(cfg.n_layers)]
    return ({} if default_on else {"use_sliding_window": True}) | {"sliding_window": cfg.sliding_window,
                                                                     "layer_types": types}


def _hf_qwen(cfg) -> dict:
    return _hf_window(cfg, default_on=False)


def _hf_mistral(cfg) -> dict:
    return _hf_window(cfg, default_on=True)


def _hf_smollm3(cfg) -> dict:
    return {"no_rope_layers": [int(i not in cfg.no_rope_layers) for i in range(cfg.n_layers)]} | _hf_window(cfg, False)


def _hf_phi3(cfg) -> dict:
    return {"partial_rotary_factor": cfg.rotary_dims / cfg.head_dim} | _hf_window(cfg, default_on=True)


def _near_int(x: float) -> float | int:
    return round(x) if abs(x - round(x)) < 1e-6 * abs(x) else x


def _hf_gemma3(cfg) -> dict:
    window = _hf_window(cfg, default_on=True)
    return {"hidden_activation": "gelu_pytorch_tanh", "head_dim": cfg.head_dim,
            "query_pre_attn_scalar": _near_int((cfg.attn_scale or cfg.head_dim ** -0.5) ** -2),
            "rope_local_base_freq": cfg.rope_local_theta or 10000.0,
            "final_logit_softcapping": None, "attn_logit_softcapping": None} | window


def _hf_granite(cfg) -> dict:
    return {"embedding_multiplier": cfg.embed_scale, "residual_multiplier": cfg.residual_scale,
            "attention_multiplier": cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5,
            "logits_scaling": 1.0 / cfg.logit_scale}


def _gguf_keys_phi3(cfg) -> dict:
    return {"attention.sliding_window": cfg.sliding_window}  # 0: none (all layers or none, as read)


def _gguf_keys_gemma3(cfg) -> dict:
    return {"attention.sliding_window": cfg.sliding_window, "rope.freq_base_swa": cfg.rope_local_theta or 10000.0}


def _gguf_keys_granite(cfg) -> dict:
    return {"embedding_scale": cfg.embed_scale, "residual_scale": cfg.residual_scale,
            "logit_scale": 1.0 / cfg.logit_scale} | ({"attention.scale": cfg.attn_scale} if cfg.attn_scale else {})


# --- the registry ---------------------------------------------------------------------------------

FAMILIES = {f.name: f for f in (
    Family("llama", "the LLaMA block itself (LLaMA 1-3)", ("LlamaForCausalLM",), "llama"),
    Family("mistral", "LLaMA with a sliding-window mask when the config sets sliding_window (v0.1); "
                      "llama.cpp's GGUFs drop the window", ("MistralForCausalLM",), None, hf_switches=_mistral,
           hf_keys=_hf_mistral, hf_model_type="mistral"),
    Family("qwen2", "q/k/v biases; RoPE in rotate-half order in GGUFs", ("Qwen2ForCausalLM",), "qwen2",
           gguf_permuted=False, hf_switches=_qwen, hf_keys=_hf_qwen, hf_model_type="qwen2"),
    Family("qwen3", "RMSNorm over each head of q and of k before RoPE; head_dim x heads may differ from hidden",
           ("Qwen3ForCausalLM",), "qwen3", HF_LAYER | HF_QK_NORMS, GGUF_LAYER | GGUF_QK_NORMS, gguf_permuted=False,
           hf_switches=_qwen3, gguf_switches=_gguf_qwen3, hf_keys=_hf_qwen, hf_model_type="qwen3"),
    Family("smollm3", "no RoPE in every fourth layer (no_rope_layers)", ("SmolLM3ForCausalLM",), "smollm3",
           hf_switches=_smollm3, gguf_switches=_gguf_smollm3, hf_keys=_hf_smollm3, hf_model_type="smollm3"),
    Family("phi3", "fused qkv_proj and gate_up_proj, split at import; RoPE on the first partial_rotary_factor "
                   "of each head (Phi-4-mini: 3/4); a sliding window where the config sets one",
           ("Phi3ForCausalLM",), "phi3",
           {k: v for k, v in HF_LAYER.items() if not k.startswith(("self_attn.q_proj", "self_attn.k_proj",
                                                                    "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"))}
           | {"self_attn.qkv_proj.weight": ("wq", "wk", "wv"), "mlp.gate_up_proj.weight": ("w_gate", "w_up")},
           {k: v for k, v in GGUF_LAYER.items() if not k.startswith(("attn_q.", "attn_k.", "attn_v.", "ffn_gate."))}
           | {"attn_qkv.weight": ("wq", "wk", "wv"), "ffn_up.weight": ("w_gate", "w_up")},
           gguf_permuted=False, hf_switches=_phi3, gguf_switches=_gguf_phi3, gguf_keys=_gguf_keys_phi3,
           hf_keys=_hf_phi3, hf_model_type="phi3"),
    Family("gemma3", "embeddings x sqrt(hidden); RMSNorm (1 + w); post-attention and post-FFN norms; q/k norms; "
                     "GELU-tanh gate; attention scale query_pre_attn_scalar^-0.5; five sliding-window layers "
                     "(their own RoPE base) to one global", ("Gemma3ForCausalLM",), "gemma3",
           HF_LAYER | HF_QK_NORMS | {"post_attention_layernorm.weight": "attn_post_norm",
                                      "pre_feedforward_layernorm.weight": "ffn_norm",
                                      "post_feedforward_layernorm.weight": "ffn_post_norm"},
           GGUF_LAYER | GGUF_QK_NORMS | {"post_attention_norm.weight": "attn_post_norm",
                                          "post_ffw_norm.weight": "ffn_post_norm"},
           gguf_permuted=False, hf_norm_offset=1.0, hf_switches=_gemma3, gguf_switches=_gguf_gemma3,
           gguf_keys=_gguf_keys_gemma3, hf_keys=_hf_gemma3, hf_model_type="gemma3_text"),
    Family("granite", "four scalars: embedding, residual, attention and logit multipliers",
           ("GraniteForCausalLM",), "granite", hf_switches=_granite, gguf_switches=_gguf_granite,
           gguf_keys=_gguf_keys_granite, hf_keys=_hf_granite, hf_model_type="granite"),
)}

BY_HF_ARCHITECTURE = {a: f for f in FAMILIES.values() for a in f.hf_architectures}
BY_GGUF_ARCH = {f.gguf_arch: f for f in FAMILIES.values() if f.gguf_arch}
# A family llama.cpp has no architecture of its own for is written as LLaMA (its converter's
# choice for Mistral v0.1, whose window it drops)
GGUF_FALLBACK = "llama"


def family(name: str) -> Family:
    """The family of a .llmr config's arch (llama for files from before families)."""
    return FAMILIES.get(name, FAMILIES["llama"])


def switches_of(cfg) -> dict:
    """The switches a config sets (llmrun.config.SWITCHES whose value is not LLaMA's)."""
    from .config import SWITCHES
    return {k: v for k, v in cfg.to_dict().items() if k in SWITCHES}
