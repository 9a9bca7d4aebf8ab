""".llmr -> a Hugging Face checkpoint folder: the inverse of models/hf.py, for transformers and
the servers that load its checkpoints (vLLM, SGLang, TGI).

    config.json                 the family's own keys (Family.hf_keys, read back by hf_switches)
    model.safetensors           or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                past 5 GB a shard, weights in --dtype (bf16, f16 or f32)
    tokenizer.json | tokenizer.model, tokenizer_config.json (special tokens, chat template),
    chat_template.jinja, generation_config.json

Quantised tensors are dequantised exactly (to float32; f32 is then exact, bf16 and f16 round
once more). Names and fused tensors (Phi-3's qkv_proj, gate_up_proj) are the family's entry in
llmrun/families.py; Gemma's norms go back to offsets from 1. HF checkpoints use the rotate-half
RoPE order .llmr stores. As for GGUF, config.json is read back by the importer before anything is
written, and a model it would not give back is refused in one line.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable

import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..config import ModelConfig, differences
from ..errors import ConvertError
from ..families import HF_TOP, family as family_of
from ..format import LlmrFile
from ..quant import dequantize
from ..quant.reference import f32_to_bf16
from .hf import read_config
from .safetensors import write_safetensors

SHARD_BYTES = 5 * 10 ** 9  # transformers' save_pretrained default, "5GB"
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
CHUNK_ROWS_BYTES = 16 << 20


def _rope(cfg: ModelConfig) -> dict:
    """RoPE as config.json says it: top-level rope_theta / rope_scaling (older transformers) and
    the same as rope_parameters (newer); Gemma 3 by layer type."""
    s = cfg.rope_scaling
    if s is None:
        scaling = {"rope_type": "default"}
    elif s["type"] in ("linear", "llama3"):
        scaling = {"rope_type": s["type"], **{k: v for k, v in s.items() if k != "type"}}
    elif "attention_factor" in s:  # LongRoPE, its short factors (models/hf.py runs those alone)
        scaling = {"rope_type": "longrope", "short_factor": s["factors"], "long_factor": s["factors"],
                   "original_max_position_embeddings": cfg.max_seq_len, "attention_factor": s["attention_factor"]}
    else:
        raise ConvertError("RoPE frequency factors from a GGUF's rope_freqs tensor have no config.json form")
    params = {**scaling, "rope_theta": cfg.rope_theta}
    if cfg.rope_local_theta is not None:
        params = {"full_attention": params, "sliding_attention": {"rope_type": "default",
                                                                   "rope_theta": cfg.rope_local_theta}}
    return {"rope_theta": cfg.rope_theta, "rope_scaling": None if s is None else scaling, "rope_parameters": params}


def hf_config(cfg: ModelConfig, tok: dict, dtype: str) -> dict:
    family = family_of(cfg.arch)
    c = {"architectures": [family.hf_architectures[0]], "model_type": family.hf_model_type,
         "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim,
         "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
         "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
         "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
         "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.attn_bias, "mlp_bias": False,
         "bos_token_id": tok.get("bos_id"), "eos_token_id": _one_or_list(tok.get("eos_ids")),
         # llmrun keeps no padding id; null, not absent, so that a config class's default (Phi-3's
         # 32000, SmolLM3's 128004) cannot name a token past a smaller vocabulary
         "pad_token_id": None,
         "torch_dtype": TORCH_DTYPES[dtype], "use_cache": True}
    return c | _rope(cfg) | family.hf_keys(cfg)


def _one_or_list(ids):
    ids = list(ids or [])
    return ids[0] if len(ids) == 1 else ids or None


def _names(f: LlmrFile, cfg: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(HF name, our tensors in its row order) for every tensor of the model."""
    family = family_of(cfg.arch)
    out, left = [], set(f.tensors)
    for hf, ours in HF_TOP.items():
        if ours in f.tensors:
            out.append((hf, (ours,)))
    for i in range(cfg.n_layers):
        for suffix, ours in family.hf_layer.items():
            parts = tuple(f"layers.{i}.{o}" for o in (ours if isinstance(ours, tuple) else (ours,)))
            if all(p in f.tensors for p in parts):
                out.append((f"model.layers.{i}.{suffix}", parts))
    for _, parts in out:
        left.difference_update(parts)
    if left:
        raise ConvertError(f"{f.path}: tensors {sorted(left)[:3]} have no Hugging Face name in the {cfg.arch} family")
    return out


def _tokenizer_files(info: dict, blob: bytes, chat_template: str | None) -> dict[str, bytes]:
    from ..tokenizer import Tokenizer
    tok = Tokenizer.from_metadata(info, blob)

    def text(i):
        return None if i is None else tok.id_to_token(i)

    files = {"tokenizer.json" if info["kind"] == "bpe" else "tokenizer.model": blob}
    eos = list(info.get("eos_ids") or [])
    tc = {"tokenizer_class": "PreTrainedTokenizerFast" if info["kind"] == "bpe" else "LlamaTokenizer",
          "bos_token": text(info.get("bos_id")), "eos_token": text(eos[0]) if eos else None,
          "add_bos_token": bool(info.get("add_bos")), "add_eos_token": bool(info.get("add_eos")),
          "clean_up_tokenization_spaces": False}
    if chat_template:
        tc["chat_template"] = chat_template
        files["chat_template.jinja"] = chat_template.encode()
    files["tokenizer_config.json"] = json.dumps(tc, indent=2, ensure_ascii=False).encode()
    files["generation_config.json"] = json.dumps({"bos_token_id": info.get("bos_id"), "eos_token_id": _one_or_list(eos),
                                                   "transformers_version": "llmrun " + __version__}, indent=2).encode()
    return files


def export(src: str, out: str, dtype: str = "bf16", progress: Callable[[int, int], None] | None = None,
           say: Callable[[str], None] | None = None, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write the .llmr file `src` as the checkpoint folder `out` (created atomically: written
    beside it under a temporary name, then renamed) with weights in `dtype`."""
    f = LlmrFile(src)
    meta = f.metadata
    cfg = ModelConfig.from_dict(meta["config"])
    family = family_of(cfg.arch)
    c = hf_config(cfg, meta["tokenizer"], dtype)
    names = _names(f, cfg)
    back = read_config(c, f"{out}/config.json", not cfg.tie_embeddings, cfg.attn_bias)
    bad = differences(cfg, back)
    if bad:
        raise ConvertError(f"{src}: a Hugging Face config cannot hold this {cfg.arch} model: {bad[0]}")
    files = _tokenizer_files(meta["tokenizer"], bytes(f.tokenizer_blob), meta.get("chat_template"))

    quantised = Counter(f.tensors[o].type.name for _, parts in names for o in parts if f.tensors[o].type.quantized)
    if quantised and say:
        say(f"note: {', '.join(f'{k} x{n}' for k, n in sorted(quantised.items()))} tensors dequantised exactly to "
            f"float32{'' if dtype == 'f32' else f', then rounded to {dtype}'} (a checkpoint holds no GGML blocks)")
    width = 4 if dtype == "f32" else 2

    def entry(hf, parts):
        shapes = [f.tensors[o].shape for o in parts]
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        offset = family.hf_norm_offset if parts[0].endswith("norm") else 0.0

        def chunks():
            for o in parts:
                t = f.tensor(o)
                rows, n = t.rows(), t.shape[-1]
                step = max(1, CHUNK_ROWS_BYTES // (4 * n))
                for start in range(0, rows.shape[0], step):
                    x = dequantize(rows[start:start + step], t.type, n).reshape(-1)
                    if offset:
                        x = x - np.float32(offset)  # exact: what the importer added to these values
                    if dtype == "f32":
                        yield x.astype(np.float32, copy=False)
                    elif dtype == "bf16":
                        yield f32_to_bf16(x)
                    else:
                        if np.abs(x).max(initial=0) > 65504:
                            raise ConvertError(f"{src}: {o} has values past float16's range; "
                                               "export with --dtype bf16 or f32")
                        yield x.astype(np.float16)
        return hf, dtype, shape, chunks

    entries = [entry(hf, parts) for hf, parts in names]
    sizes = [int(np.prod(e[2])) * width for e in entries]
    shards, current, size = [], [], 0
    for e, n in zip(entries, sizes):
        if current and size + n > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(e)
        size += n
    shards.append(current)
    total, done = sum(sizes), 0

    def step(n):
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    with atomic_path(out, folder=True) as tmp:
        files["config.json"] = json.dumps(c, indent=2, ensure_ascii=False).encode()
        for name, data in files.items():
            with open(os.path.join(tmp, name), "xb") as fh:
                fh.write(data)
        if len(shards) == 1:
            write_safetensors(os.path.join(tmp, "model.safetensors"), shards[0], step)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(os.path.join(tmp, name), shard, step)
                weight_map |= {e[0]: name for e in shard}
            with open(os.path.join(tmp, "model.safetensors.index.json"), "x") as fh:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return {"arch": c["architectures"][0], "tensor_types": {dtype: len(entries)}, "tensors": len(entries),
            "shards": len(shards), "bytes": sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))}
