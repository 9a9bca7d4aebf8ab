"""Write a tiny Hugging Face checkpoint (from ../shared/tools/make_family_checkpoint.py) as the GGUF
that llama.cpp's converter makes of it with `convert_hf_to_gguf.py --outtype f32`, using only the
`gguf` package, numpy and safetensors (no torch, no transformers).

    write_family_gguf(hf_dir, out_path, family)   # qwen3 smollm3 phi3 phi4mini gemma3 mistral granite

Checked against the real converter (llama.cpp as vendored by llama-cpp-python 0.3.36, whose
convert_hf_to_gguf.py now keeps its model classes in conversion/*.py; run with transformers 5.25):
for all seven seed-0 checkpoints this writes a byte-identical file. phi3/phi4mini were compared with a
copy whose tokenizer_config.json names tokenizer_class "GPT2Tokenizer" (see phi3 below).

What the converter does, read from its source (class in conversion/FILE.py):

Common to all (TextModel, ModelBase in base.py)
  * Keys, in this order: general.architecture, general.type "model", general.name and
    general.size_label (gguf.Metadata from the folder name and parameter count), the model's
    hyperparameters, general.file_type (0 = ALL_F32), general.quantization_version (2), tokenizer.
  * TextModel.set_gguf_parameters writes {arch}.block_count, context_length
    (max_position_embeddings), embedding_length, feed_forward_length (intermediate_size),
    attention.head_count, attention.head_count_kv, rope.freq_base (rope_theta, or
    rope_parameters["full_attention"]["rope_theta"]), rope.freq_base_swa (only when a local theta
    exists: rope_local_base_freq or rope_parameters["sliding_attention"]), attention
    .layer_norm_rms_epsilon, and attention.key_length / value_length only when the config (as
    transformers' AutoConfig exposes it) has head_dim. Integers are UINT32, floats FLOAT32.
    rope_type "default" (all these checkpoints) writes no rope.scaling keys.
  * Tensors are written in the safetensors index order (names sorted), HF [out, in] arrays as they
    are (GGUF shape {in, out}). With --outtype f32 every tensor is F32; 1-D tensors and "*_norm"
    weights are forced to F32 whatever the outtype.
  * No output.weight is invented for a tied model: the checkpoint has no lm_head, so the GGUF has
    none and llama.cpp reuses token_embd. An untied lm_head.weight becomes output.weight.
  * Names: model.embed_tokens -> token_embd, model.norm -> output_norm, lm_head -> output; per
    layer (blk.N.) input_layernorm -> attn_norm, self_attn.{q,k,v,o}_proj -> attn_{q,k,v,output},
    self_attn.{q,k}_norm -> attn_{q,k}_norm, post_attention_layernorm -> ffn_norm,
    mlp.{gate,up,down}_proj -> ffn_{gate,up,down} (gguf-py tensor_mapping.py).
  * Tokenizer (_set_vocab_gpt2 / get_vocab_base): tokenizer.ggml.model "gpt2", tokenizer.ggml.pre
    from a sha256 of the token ids of a fixed check text - SmolLM2's tokenizer hashes to "smollm"
    (ref HuggingFaceTB/SmolLM-135M); tokens in id order ("[PADi]" UNUSED for holes), token_type
    NORMAL (1), or CONTROL (3) for added tokens marked special or looking like <|...|>,
    USER_DEFINED (4) for other added tokens. Then gguf.SpecialVocab(load_merges=True): merges ("a b"),
    bos/eos/unknown/padding ids from tokenizer_config.json's token strings (config.json ids as the
    fallback), add_bos/add_eos only where the tokenizer config says so (not here), and
    tokenizer.chat_template from chat_template.jinja. Here: bos 1, eos 2, unk 0, pad 2.

qwen3 -> "qwen3" (Qwen3Model(Qwen2Model) in qwen.py): generic keys only; key/value_length = head_dim
  (32, != hidden/heads); no rope.dimension_count. q/k NOT permuted (NEOX rope, rotate-half order
  kept). attn_q_norm / attn_k_norm per head (length head_dim). No add_bos_token key.
smollm3 -> "smollm3" (SmolLM3Model(LlamaModel) in llama.py): LlamaModel adds {arch}.vocab_size and
  rope.dimension_count (head_dim or hidden/heads). SmolLM3Config has no head_dim, so no key_length.
  q/k rows permuted by LlamaModel.permute (GGML "normal" rope on adjacent pairs). no_rope_layers is
  NOT written: llama.cpp hard-codes it (src/models/smollm3.cpp: rope off where (il+1) % 4 == 0).
  LlamaModel.set_vocab also writes tokenizer.ggml.add_bos_token = false whenever vocab_size is
  49152 (meant for Granite's small models, hits every LlamaModel subclass with this vocabulary).
phi3, phi4mini -> "phi3" (Phi3MiniModel in phi.py): own key order: context_length,
  rope.scaling.original_context_length, embedding_length, feed_forward_length, block_count,
  head_count, head_count_kv, rms eps, rope.dimension_count = int(partial_rotary_factor * hidden)
  // heads (16 for phi3, 12 for phi4mini), rope.freq_base, general.file_type, then
  attention.sliding_window = 0 when the config's sliding_window is null (0 = "Phi-4", no window).
  Fused tensors kept fused: self_attn.qkv_proj -> blk.N.attn_qkv ([q; k; v] rows), mlp.gate_up_proj
  -> blk.N.ffn_up holding [gate; up] (2*ff rows; no ffn_gate tensor). No permutation (NEOX rope).
  Tokenizer: the converter takes the gpt2 path only if tokenizer_config.json's tokenizer_class is
  "GPT2Tokenizer" (Phi-4-mini); otherwise it wants a sentencepiece tokenizer.model and fails on
  these checkpoints (theirs says "TokenizersBackend"). We write the gpt2 path. No add_bos_token.
gemma3 -> "gemma3" (Gemma3Model in gemma.py): generic keys, re-setting context_length, head_count,
  rms eps, key_length/value_length = head_dim (default 256), rope.freq_base = the global theta and
  rope.freq_base_swa = rope_local_base_freq; after file_type attention.sliding_window (written unless
  sliding_window_pattern == 1). No rope.dimension_count, no layer pattern (llama.cpp assumes 5
  sliding : 1 global), no query_pre_attn_scalar (llama.cpp uses 1/sqrt(key_length), except for
  62-layer 27B models), no embedding scale (applied at run time: sqrt(n_embd)).
  Every "*norm.weight" gets +1.0 (Gemma3RMSNorm's (1 + w)); q/k NOT permuted. Extra norms:
  post_attention_layernorm -> post_attention_norm, pre_feedforward_layernorm -> ffn_norm,
  post_feedforward_layernorm -> post_ffw_norm. token_embd is cut to len(vocab) + len(added_tokens)
  rows (no-op here). Tokenizer via _set_vocab_gpt2 (no tokenizer.model); no add_bos_token.
mistral -> "llama" (MistralForCausalLM is registered to LlamaModel in llama.py): generic + vocab_size
  + rope.dimension_count; key/value_length 16 written because transformers' MistralConfig fills
  head_dim = hidden/heads. sliding_window is DROPPED: no key is written, so llama.cpp runs full
  attention (differs from transformers past 8 tokens here). q/k permuted. add_bos_token = false
  (49152 rule above). Untied: output.weight written.
granite -> "granite" (GraniteModel(LlamaModel) in granite.py): pops head_dim (no key_length),
  LlamaModel keys, then attention.scale (attention_multiplier), embedding_scale
  (embedding_multiplier), residual_scale (residual_multiplier), logit_scale (logits_scaling), each
  only if non-zero. q/k permuted. add_bos_token = false (49152 rule).

Not covered (not in these checkpoints): rope scaling (linear/yarn/longrope/llama3 rope_freqs),
biases, MoE, sentencepiece vocabularies, sharded safetensors, the gemma3 final_logit_softcapping key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
from safetensors.numpy import load_file

# HF name (with "model.layers.N." removed) -> GGUF name (after "blk.N."), as gguf-py maps it for
# these architectures.
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
GEMMA3_NAMES = {"post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm",
                "post_feedforward_layernorm": "post_ffw_norm"}
PHI3_NAMES = {"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}

F32 = int(gguf.LlamaFileType.ALL_F32)


# --- hyperparameters, in the order each converter class writes them --------------------------

def _rope_theta(cfg: dict, kind: str = "full_attention") -> float | None:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if kind == "sliding_attention":
        return rp.get(kind, {}).get("rope_theta", cfg.get("rope_local_base_freq"))
    return rp.get(kind, rp).get("rope_theta", cfg.get("rope_theta"))


def _text_keys(cfg: dict, head_dim: int | None) -> dict:
    """TextModel.set_gguf_parameters (base.py)."""
    kv = {"block_count": cfg["num_hidden_layers"],
          "context_length": cfg["max_position_embeddings"],
          "embedding_length": cfg["hidden_size"],
          "feed_forward_length": cfg["intermediate_size"],
          "attention.head_count": cfg["num_attention_heads"],
          "attention.head_count_kv": cfg["num_key_value_heads"],
          "rope.freq_base": float(_rope_theta(cfg))}
    if (swa_theta := _rope_theta(cfg, "sliding_attention")) is not None:
        kv["rope.freq_base_swa"] = float(swa_theta)
    kv["attention.layer_norm_rms_epsilon"] = float(cfg["rms_norm_eps"])
    if head_dim is not None:
        kv["attention.key_length"] = kv["attention.value_length"] = head_dim
    kv["general.file_type"] = F32
    return kv


def _llama_keys(cfg: dict, head_dim: int | None) -> dict:
    """LlamaModel: TextModel's keys + vocab_size + rope.dimension_count."""
    kv = _text_keys(cfg, head_dim)
    kv["vocab_size"] = cfg["vocab_size"]
    kv["rope.dimension_count"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return kv


def _mistral_keys(cfg: dict) -> dict:
    # MistralConfig (transformers) always has head_dim, hidden/heads by default; sliding_window dropped
    return _llama_keys(cfg, cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _granite_keys(cfg: dict) -> dict:
    cfg = {k: v for k, v in cfg.items() if k != "head_dim"}  # GraniteModel pops head_dim
    kv = _llama_keys(cfg, None)
    for hf, key in (("attention_multiplier", "attention.scale"), ("embedding_multiplier", "embedding_scale"),
                    ("residual_multiplier", "residual_scale"), ("logits_scaling", "logit_scale")):
        if cfg.get(hf):
            kv[key] = float(cfg[hf])
    return kv


def _gemma3_keys(cfg: dict) -> dict:
    kv = _text_keys(cfg, cfg.get("head_dim", 256))
    if cfg.get("sliding_window_pattern") != 1:
        kv["attention.sliding_window"] = cfg["sliding_window"]
    return kv


def _phi3_keys(cfg: dict) -> dict:
    """Phi3MiniModel.set_gguf_parameters (phi.py), its own order."""
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or cfg
    return {"context_length": cfg["max_position_embeddings"],
            "rope.scaling.original_context_length": rope.get("original_max_position_embeddings",
                                                             cfg.get("original_max_position_embeddings")),
            "embedding_length": d,
            "feed_forward_length": cfg["intermediate_size"],
            "block_count": cfg["num_hidden_layers"],
            "attention.head_count": h,
            "attention.head_count_kv": cfg["num_key_value_heads"],
            "attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]),
            "rope.dimension_count": int(rope.get("partial_rotary_factor", 1.0) * d) // h,
            "rope.freq_base": float(_rope_theta(cfg)),
            "general.file_type": F32,
            "attention.sliding_window": cfg.get("sliding_window") or 0}


# --- the families ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    arch: str                           # general.architecture
    keys: Callable[[dict], dict]        # hyperparameter keys (without "{arch}."), in writing order
    permute_qk: bool = False            # LlamaModel.permute on q_proj / k_proj rows
    norm_offset: float = 0.0            # added to every "*norm.weight"
    names: dict = field(default_factory=dict)  # overrides of LAYER_NAMES
    no_bos_49152: bool = False          # LlamaModel.set_vocab: add_bos_token false if vocab is 49152


FAMILIES = {
    "qwen3": Family("qwen3", lambda c: _text_keys(c, c.get("head_dim"))),
    "smollm3": Family("smollm3", lambda c: _llama_keys(c, c.get("head_dim")), permute_qk=True, no_bos_49152=True),
    "phi3": Family("phi3", _phi3_keys, names=PHI3_NAMES),
    "phi4mini": Family("phi3", _phi3_keys, names=PHI3_NAMES),
    "gemma3": Family("gemma3", _gemma3_keys, norm_offset=1.0, names=GEMMA3_NAMES),
    "mistral": Family("llama", _mistral_keys, permute_qk=True, no_bos_49152=True),
    "granite": Family("granite", _granite_keys, permute_qk=True, no_bos_49152=True),
}


def rope_pairs_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half rows (x[i] pairs with x[i + d/2] in each head) -> adjacent pairs (x[2i], x[2i+1]),
    as LlamaModel.permute does for GGML's "normal" rope."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str, fam: Family) -> str:
    base, _, suffix = hf_name.rpartition(".")  # "weight"
    if base in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[base]}.{suffix}"
    _, _, bid, rest = base.split(".", 3)        # model.layers.N.rest
    return f"blk.{bid}.{(LAYER_NAMES | fam.names)[rest]}.{suffix}"


def convert_tensor(hf_name: str, w: np.ndarray, fam: Family, cfg: dict, n_vocab_real: int) -> np.ndarray:
    w = w.astype(np.float32)
    if fam.permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
        w = rope_pairs_permute(w, cfg["num_attention_heads"])
    if fam.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
        w = rope_pairs_permute(w, cfg["num_key_value_heads"])
    if fam.norm_offset and hf_name.endswith("norm.weight"):
        w = w + np.float32(fam.norm_offset)
    if fam.arch == "gemma3" and hf_name == "model.embed_tokens.weight":
        w = w[:n_vocab_real]                    # Gemma3Model drops out-of-vocabulary rows
    return np.ascontiguousarray(w)


# --- tokenizer ---------------------------------------------------------------------------------

def _looks_special(text: str) -> bool:  # TextModel.does_token_look_special
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def write_gpt2_vocab(w: gguf.GGUFWriter, hf_dir: Path, n_vocab: int) -> None:
    """TextModel._set_vocab_gpt2, reading tokenizer.json directly instead of via AutoTokenizer."""
    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    added = {a["id"]: a for a in tok["added_tokens"]}
    vocab = {i: t for t, i in tok["model"]["vocab"].items()} | {i: a["content"] for i, a in added.items()}
    if vocab.get(1) != "<|im_start|>" or tok["model"]["type"] != "BPE":
        raise ValueError("only SmolLM2's byte-level BPE tokenizer is supported (pre-tokenizer 'smollm')")
    assert max(vocab) < n_vocab
    tokens, types = [], []
    for i in range(n_vocab):
        text = vocab.get(i, f"[PAD{i}]")
        if i not in vocab:
            ttype = gguf.TokenType.UNUSED
        elif i in added and (added[i]["special"] or _looks_special(text)):
            ttype = gguf.TokenType.CONTROL
        elif i in added:
            ttype, text = gguf.TokenType.USER_DEFINED, text.replace("\u2581", " ")
        else:
            ttype = gguf.TokenType.NORMAL
        tokens.append(text)
        types.append(ttype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")  # get_vocab_base_pre: SmolLM's check-text token hash
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(w, quiet=True)


# --- the writer --------------------------------------------------------------------------------

def write_family_gguf(hf_dir: str | Path, out_path: str | Path, family: str) -> None:
    """Convert the checkpoint in hf_dir (config.json, model.safetensors, tokenizer files) of the
    given family into out_path, as `convert_hf_to_gguf.py --outtype f32` would."""
    hf_dir, fam = Path(hf_dir), FAMILIES[family]
    cfg = json.loads((hf_dir / "config.json").read_text())
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if any(r.get("rope_type", r.get("type", "default")) != "default"
           for r in (rope, *(v for v in rope.values() if isinstance(v, dict)))):
        raise NotImplementedError(f"rope scaling {rope} is not covered")
    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    n_vocab_real = len(tok["model"]["vocab"]) + len(tok["added_tokens"])

    w = gguf.GGUFWriter(path=None, arch=fam.arch)
    weights = load_file(str(hf_dir / "model.safetensors"))
    for name in sorted(weights):
        w.add_tensor(gguf_name(name, fam), convert_tensor(name, weights[name], fam, cfg, n_vocab_real))

    total = w.get_total_parameter_count()
    meta = gguf.Metadata.load(None, hf_dir, None, total[0])
    meta.name = meta.name or hf_dir.name
    meta.size_label = meta.size_label or gguf.size_label(*total)
    w.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(w)
    for key, value in fam.keys(cfg).items():
        key = key if key.startswith("general.") else f"{fam.arch}.{key}"
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(key, value)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_gpt2_vocab(w, hf_dir, cfg["vocab_size"])
    if fam.no_bos_49152 and cfg["vocab_size"] == 49152:
        w.add_add_bos_token(False)

    w.write_header_to_file(path=Path(out_path))
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
