"""Hugging Face checkpoint directory → .llmr.

Reads config.json, the safetensors weights (one file or sharded), the tokenizer
(tokenizer.json or tokenizer.model), its special tokens and the chat template. Tensors are
streamed one at a time from mmapped shards, so peak memory stays near one tensor's size.
HF checkpoints already use the rotate-half RoPE convention that .llmr stores. What differs by
family (names, fused tensors, config keys) is the family's entry in llmrun/families.py.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Callable

import numpy as np

from .. import __version__
from ..config import ModelConfig
from ..errors import ConvertError
from ..families import BY_HF_ARCHITECTURE, HF_TOP, Family, Unsupported
from ..format import PendingTensor, write
from ..quant import Policy, choose_type, qtype, quantize_weights
from ..quant.policy import DEFAULT_POLICY
from ..quant.reference import bf16_to_f32
from ..tokenizer import BPETokenizer, SentencePieceTokenizer
from . import expected_tensors
from .safetensors import SafetensorsFile

SOURCE_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a cached buffer some old checkpoints saved


def _read_json(path: str, required: bool = True) -> dict:
    if not os.path.exists(path):
        if required:
            raise ConvertError(f"{path} not found; a Hugging Face checkpoint directory needs it")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ConvertError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return value


def _rope(c: dict) -> tuple[float, dict | None, int | None]:
    """(theta, scaling, context) from either spelling: top-level rope_theta + rope_scaling (older
    transformers) or one rope_parameters dict (newer). `context` caps the usable context where
    only part of a scaling is run (LongRoPE: its short factors, exact up to the original context)."""
    params = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    if "full_attention" in params:  # by layer type (Gemma 3): the global layers' (the windowed ones' are a switch)
        params = dict(params["full_attention"] or {})
    theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None, None
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(params["factor"])}, None
    if kind == "longrope" or kind in ("su", "yarn") and c.get("model_type") == "phi3":  # Phi-3's old names for it
        return (theta, *_longrope(c, params))
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in params]
        if missing:
            raise ConvertError(f"llama3 RoPE scaling lacks {missing}")
        return theta, {"type": "llama3", **{k: float(params[k]) for k in keys}}, None
    raise ConvertError(f"RoPE scaling type {kind!r} is not supported (supported: default, linear, llama3, longrope)")


def _longrope(c: dict, params: dict) -> tuple[dict, int]:
    """LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini), as transformers computes it: frequencies
    divided by the short factors up to the original context (the long ones past it), cos and sin
    times an attention factor, sqrt(1 + ln(s) / ln(original)) for s = the context's growth. We
    run the short factors, so the context stops at the original one, exact there."""
    original = params.get("original_max_position_embeddings", c.get("original_max_position_embeddings"))
    if not original or "short_factor" not in params:
        raise ConvertError("longrope RoPE scaling lacks original_max_position_embeddings or short_factor")
    # transformers: the context's growth from the config's two lengths where the config has the
    # original one, else the scaling's own factor, else the lengths again
    max_position = float(c.get("max_position_embeddings", original))
    growth = max_position / float(original) if c.get("original_max_position_embeddings") or not params.get("factor") \
        else float(params["factor"])
    attention_factor = params.get("attention_factor") or (
        1.0 if growth <= 1.0 else math.sqrt(1 + math.log(growth) / math.log(float(original))))
    return ({"type": "factors", "factors": [float(f) for f in params["short_factor"]],
             "attention_factor": float(attention_factor)}, int(original))


def family_of(c: dict, path: str) -> Family:
    archs = c.get("architectures") or []
    family = next((BY_HF_ARCHITECTURE[a] for a in archs if a in BY_HF_ARCHITECTURE), None)
    if family is None:
        raise ConvertError(f"{path}: architecture {archs or c.get('model_type')} is not supported; "
                           f"supported: {', '.join(BY_HF_ARCHITECTURE)}")
    return family


def read_config(c: dict, path: str, has_lm_head: bool, has_qkv_bias: bool) -> ModelConfig:
    family = family_of(c, path)
    try:
        switches = family.hf_switches(c, int(c["num_hidden_layers"]))
    except Unsupported as e:
        raise ConvertError(f"{path}: {e}") from None
    except KeyError as e:
        raise ConvertError(f"{path}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as e:  # a key of the wrong kind
        raise ConvertError(f"{path}: {e}") from None
    for key, bad in (("hidden_act", lambda v: switches.get("act", "silu") == "silu" and v not in ("silu", "swish")),
                     ("mlp_bias", bool)):
        if key in c and bad(c[key]):
            raise ConvertError(f"{path}: {key}={c[key]!r} is not supported")
    try:
        dim, n_heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        theta, scaling, context = _rope(c)
        return ModelConfig(
            arch=family.name, vocab_size=int(c["vocab_size"]), dim=dim, n_layers=int(c["num_hidden_layers"]),
            n_heads=n_heads, n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
            head_dim=int(c.get("head_dim") or dim // n_heads), ffn_dim=int(c["intermediate_size"]),
            norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_seq_len=context or int(c.get("max_position_embeddings", 4096)),
            tie_embeddings=bool(c.get("tie_word_embeddings", False)) or not has_lm_head, attn_bias=has_qkv_bias,
            **switches)
    except KeyError as e:
        raise ConvertError(f"{path}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as e:  # a key of the wrong kind
        raise ConvertError(f"{path}: {e}") from None


def open_weights(d: str) -> dict[str, SafetensorsFile]:
    """Map every tensor name to the (mmapped) shard holding it."""
    index = os.path.join(d, "model.safetensors.index.json")
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"{index}: no weight_map")
        for f in set(map(str, weight_map.values())):
            # only files beside the index: a name like ../../x must not reach outside the checkpoint
            if os.path.basename(f) != f or not os.path.isfile(os.path.join(d, f)):
                raise ConvertError(f"{index}: shard {f!r} is not a file in {d}")
        shards = {f: SafetensorsFile(os.path.join(d, f)) for f in sorted(set(weight_map.values()))}
        where = {}
        for name, f in weight_map.items():
            if name not in shards[f].entries:
                raise ConvertError(f"{index}: {name} is not in {f}")
            where[name] = shards[f]
        return where
    if os.path.exists(single):
        f = SafetensorsFile(single)
        return {name: f for name in f.names()}
    hint = " (PyTorch .bin weights are not supported: save them as safetensors)" if any(
        n.endswith(".bin") for n in os.listdir(d)) else ""
    raise ConvertError(f"{d}: no model.safetensors or model.safetensors.index.json{hint}")


def read_tokenizer(d: str, c: dict) -> tuple[dict, bytes]:
    """The tokenizer metadata (kind, special ids) and blob, and check that it loads."""
    tc = _read_json(os.path.join(d, "tokenizer_config.json"), required=False)
    gc = _read_json(os.path.join(d, "generation_config.json"), required=False)
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        kind, cls, blob_path = "bpe", BPETokenizer, os.path.join(d, "tokenizer.json")
    elif os.path.exists(os.path.join(d, "tokenizer.model")):
        kind, cls, blob_path = "spm", SentencePieceTokenizer, os.path.join(d, "tokenizer.model")
    else:
        raise ConvertError(f"{d}: no tokenizer.json or tokenizer.model")
    with open(blob_path, "rb") as f:
        blob = f.read()
    try:
        tok = cls(blob, {})
    except Exception as e:
        raise ConvertError(f"{blob_path}: cannot be loaded as a {kind} tokenizer: {e}") from None

    def token_id(v):
        text = v.get("content") if isinstance(v, dict) else v
        return tok.token_to_id(text) if isinstance(text, str) else None

    def ids(v, where):
        v = v if isinstance(v, list) else [v]
        for i in v:
            if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < tok.vocab_size):
                raise ConvertError(f"{d}: {where} {i!r} is not a token id of the tokenizer ({tok.vocab_size} tokens)")
        return [i for i in v if i is not None]

    bos = token_id(tc.get("bos_token"))
    if bos is None:
        bos = next(iter(ids(c.get("bos_token_id"), "config.json's bos_token_id")), None)
    eos = (ids(gc.get("eos_token_id"), "generation_config.json's eos_token_id") + ids(token_id(tc.get("eos_token")), "")
           + ids(c.get("eos_token_id"), "config.json's eos_token_id"))
    info = {"kind": kind, "bos_id": bos, "eos_ids": sorted(set(eos)),
            "add_bos": bool(tc.get("add_bos_token", kind == "spm"))}
    return info, blob


def read_chat_template(d: str) -> str | None:
    path = os.path.join(d, "chat_template.jinja")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    t = _read_json(os.path.join(d, "tokenizer_config.json"), required=False).get("chat_template")
    if isinstance(t, list):  # named templates: [{"name": "default", "template": ...}, ...]
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) else None


def _tensor_names(names, n_layers: int, family: Family) -> dict[str, str | tuple]:
    """HF name -> ours (a tuple of ours for a fused tensor, its parts in row order), refusing
    tensors the family's graph has no place for."""
    out = {}
    for name in names:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name in HF_TOP:
            out[name] = HF_TOP[name]
            continue
        parts = name.split(".", 3)
        if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in family.hf_layer:
            if int(parts[2]) < n_layers:
                ours = family.hf_layer[parts[3]]
                prefix = f"layers.{parts[2]}."
                out[name] = tuple(prefix + o for o in ours) if isinstance(ours, tuple) else prefix + ours
                continue
        raise ConvertError(f"tensor {name} has no place in the {family.name} graph (unsupported variant)")
    return out


def split_rows(src: str, names: dict, shape_of, shapes: dict) -> dict[str, tuple]:
    """Ours -> (source name, rows): a whole tensor (rows None), or for each part of a fused one
    the range of its rows the config gives that part (refused unless they add up to the source's)."""
    out = {}
    for source, ours in names.items():
        if not isinstance(ours, tuple):
            out[ours] = (source, None)
            continue
        sizes, found = [shapes.get(o, (0,))[0] for o in ours], shape_of(source)[0]
        if sum(sizes) != found:
            raise ConvertError(f"{src}: tensor {source} has {found} rows; its parts "
                               f"{', '.join(o.rsplit('.', 1)[-1] for o in ours)} take {sum(sizes)}")
        for o, start, size in zip(ours, np.cumsum([0, *sizes[:-1]]), sizes):
            out[o] = (source, range(int(start), int(start) + size))
    return out


def part_shape(shape: tuple, rows: range | None) -> tuple:
    """The shape of `rows` of a tensor of `shape` (all of it: None)."""
    return tuple(shape) if rows is None else (len(rows), *shape[1:])


CHUNK_BYTES = 16 << 20  # source bytes converted at a time: bounds the converter's memory


def _pending(name: str, src: SafetensorsFile, hf_name: str, rows: range | None, target,
             offset: float = 0.0) -> PendingTensor:
    """`rows` of the source tensor (all: None) as our tensor `name`, plus `offset` (a family's
    norms stored as offsets from 1)."""
    shape = part_shape(src.shape(hf_name), rows)
    t = choose_type(name, shape, target)
    source_type = SOURCE_TYPES[src.dtype(hf_name)]
    first, end = (rows.start, rows.stop) if rows is not None else (0, src.rows(hf_name))

    def chunks():
        step = max(1, CHUNK_BYTES // max(1, src.nbytes(hf_name) // src.rows(hf_name)))
        for start in range(first, end, step):
            raw = src.read_rows(hf_name, start, min(end, start + step))
            if source_type == t.name and not offset:
                yield raw  # already in the target type: the bytes exactly
            else:
                values = bf16_to_f32(raw) if source_type == "bf16" else raw.astype(np.float32)
                if offset:
                    values = values + np.float32(offset)
                yield quantize_weights(name, values, t, target if isinstance(target, Policy) else None)

    return PendingTensor(name, t, shape, chunks)


def convert(src: str, out: str, type: str = "f16",
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert the checkpoint directory `src` into `out` with weights of `type`.
    `progress(done_bytes, total_bytes)` is called as tensors are written. Returns the metadata."""
    target = type if isinstance(type, Policy) else qtype(type)
    if not os.path.isdir(src):
        raise ConvertError(f"{src} is not a directory")
    c = _read_json(os.path.join(src, "config.json"))
    where = open_weights(src)
    n_layers = c.get("num_hidden_layers")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int):
        raise ConvertError(f"{src}: config.json's num_hidden_layers is {n_layers!r}, not a whole number")
    family = family_of(c, os.path.join(src, "config.json"))
    names = _tensor_names(where, n_layers, family)
    ours = {o for v in names.values() for o in (v if isinstance(v, tuple) else (v,))}
    cfg = read_config(c, os.path.join(src, "config.json"), "output" in ours, "layers.0.bq" in ours)
    from ..model import tensor_shapes
    shapes = tensor_shapes(cfg)
    parts = split_rows(src, names, lambda hf: where[hf].shape(hf), shapes)
    expected = expected_tensors(src, cfg, {o: part_shape(where[hf].shape(hf), rows) for o, (hf, rows) in parts.items()})
    tok_info, tok_blob = read_tokenizer(src, c)
    if isinstance(target, Policy):
        target = target.for_model(cfg, tied=cfg.tie_embeddings)

    kept = [(o, parts[o]) for o in parts if o in expected]
    tensors = [_pending(o, where[hf], hf, rows, target, family.hf_norm_offset if o.endswith("norm") else 0.0)
               for o, (hf, rows) in kept]
    conversions = Counter(f"{SOURCE_TYPES[where[hf].dtype(hf)]}->{t.type.name}" for (_, (hf, _)), t in zip(kept, tensors))
    meta = {
        "config": cfg.to_dict(),
        "tokenizer": tok_info,
        "chat_template": read_chat_template(src),
        "provenance": {"source": os.path.basename(os.path.abspath(src)), "source_format": "hf-safetensors",
                       "converter": f"llmrun {__version__}", "type": target.name,
                       "tensor_types": dict(sorted(conversions.items())),
                       "policy": target.describe() if isinstance(target, Policy) else DEFAULT_POLICY},
    }
    write(out, meta, tok_blob, tensors, progress)
    return meta
