"""GGUF file → .llmr.

Tensors of a type we run (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K .. Q6_K) are
copied block for block; IQ4_XS blocks become IQ4_NL ones (the same quants, each 32's scale
multiplied out and rounded to f16: quant/kquants.restore_blocks); Q8_K is dequantised exactly
and re-quantised to q8_0, the nearest type we run that loses little against it. llama.cpp's converter permutes the q/k rows of
`llama`-style models so that its RoPE rotates adjacent pairs; .llmr uses the rotate-half
order, so those rows are put back (a permutation of whole rows: lossless for every type). Which
architectures were permuted, their tensor names and the metadata their switches come from are
each family's entry in llmrun/families.py.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Callable

import numpy as np

from .. import __version__
from ..config import ModelConfig
from ..errors import ConvertError
from ..families import BY_GGUF_ARCH, GGUF_TOP, Family
from ..format import PendingTensor, write
from ..quant import F32, Q8_0, TYPES, Policy, choose_type, qtype, quantize_weights
from ..quant.policy import DEFAULT_POLICY
from ..quant.kquants import dequantize_ggml, restore_blocks
from . import expected_tensors
from .gguf_file import GGUFFile
from .hf import part_shape, split_rows
from .gguf_tokenizer import tokenizer_from_gguf

ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1: per-dimension divisors of the RoPE frequencies
# LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini): the divisors up to the original context, and past it
ROPE_SHORT, ROPE_LONG = "rope_factors_short.weight", "rope_factors_long.weight"
ROPE_TENSORS = (ROPE_FREQS, ROPE_SHORT, ROPE_LONG)
CHUNK_ROWS_BYTES = 16 << 20


def family_of(g: GGUFFile) -> Family:
    arch = g.metadata.get("general.architecture")
    if arch not in BY_GGUF_ARCH:
        raise ConvertError(f"{g.path}: architecture {arch!r} is not supported; supported: {', '.join(BY_GGUF_ARCH)}")
    return BY_GGUF_ARCH[arch]


def read_config(g: GGUFFile) -> ModelConfig:
    m = g.metadata
    arch = m.get("general.architecture")
    family = family_of(g)

    def key(name, default=None):
        v = m.get(f"{arch}.{name}", default)
        if v is None:
            raise ConvertError(f"{g.path}: missing metadata key {arch}.{name}")
        return v

    try:
        dim, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
        emb = g.tensors.get("token_embd.weight")
        vocab = m.get(f"{arch}.vocab_size") or (emb.shape[0] if emb else len(m.get("tokenizer.ggml.tokens", [])))
        scaling = None
        kind = m.get(f"{arch}.rope.scaling.type", "none")
        if kind == "linear":
            scaling = {"type": "linear", "factor": float(key("rope.scaling.factor"))}
        elif kind not in ("none", None):
            raise ConvertError(f"{g.path}: RoPE scaling {kind!r} is not supported (supported: none, linear)")
        context = int(key("context_length"))
        for name in (ROPE_FREQS, ROPE_SHORT):
            if name in g.tensors:
                factors = dequantize_ggml(g.data(name), g.tensors[name].type, g.tensors[name].shape[-1])
                scaling = {"type": "factors", "factors": [float(f) for f in factors.reshape(-1)]}
        if ROPE_SHORT in g.tensors:  # LongRoPE's short factors: exact up to the original context (models/hf.py)
            scaling["attention_factor"] = float(m.get(f"{arch}.rope.scaling.attn_factor", 1.0))
            context = int(m.get(f"{arch}.rope.scaling.original_context_length", context))
        head_dim = int(m.get(f"{arch}.attention.key_length") or dim // n_heads)
        n_layers = int(key("block_count"))
        return ModelConfig(
            arch=family.name, vocab_size=int(vocab), dim=dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=int(m.get(f"{arch}.attention.head_count_kv") or n_heads), head_dim=head_dim,
            ffn_dim=int(key("feed_forward_length")), norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(key("rope.freq_base", 10000.0)), rope_scaling=scaling,
            max_seq_len=context, tie_embeddings="output.weight" not in g.tensors,
            attn_bias="blk.0.attn_q.bias" in g.tensors, **family.gguf_switches(m, arch, n_layers))
    except KeyError as e:
        raise ConvertError(f"{g.path}: missing metadata key {e.args[0]}") from None
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ConvertError(f"{g.path}: {e}") from None


def _names(g: GGUFFile, n_layers: int, family: Family) -> dict[str, str | tuple]:
    """GGUF name -> ours (a tuple of ours for a fused tensor, its parts in row order), refusing
    tensors the family's graph has no place for."""
    out = {}
    for name in g.tensors:
        if name in ROPE_TENSORS:
            continue
        if name in GGUF_TOP:
            out[name] = GGUF_TOP[name]
            continue
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < n_layers \
                and parts[2] in family.gguf_layer:
            ours = family.gguf_layer[parts[2]]
            prefix = f"layers.{parts[1]}."
            out[name] = tuple(prefix + o for o in ours) if isinstance(ours, tuple) else prefix + ours
            continue
        raise ConvertError(f"{g.path}: tensor {name} has no place in the {family.name} graph (unsupported variant)")
    return out


def _unpermute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: within each head, rows (0, 2, 4, ..., 1, 3, 5, ...)
    come back as (0, 1, 2, ...); rows [N, ...] of any type, whole rows moved."""
    n = rows.shape[0]
    return rows.reshape(n_heads, n // n_heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _pending(g: GGUFFile, src: str, part: range | None, ours: str, cfg: ModelConfig, permuted: bool,
             target) -> tuple[PendingTensor, str]:
    """Rows `part` (all: None) of GGUF tensor `src` as our tensor `ours`, and how its type was
    chosen (for the log)."""
    info = g.tensors[src]
    shape = part_shape(info.shape, part)
    if target is not None:
        t = choose_type(ours, shape, target)
        if isinstance(target, Policy) and info.type.quantized and t is not info.type and not target.allow_requantize:
            raise ConvertError(f"{g.path}: tensor {src} is already {info.type.name}; quantising it again to "
                               f"{t.name} compounds the error: pass --allow-requantize to do it anyway")
    elif info.type.name in TYPES and (len(shape) > 1 or info.type is F32):
        t = info.type  # stored in a type we run: copy the blocks
    else:
        t = F32 if len(shape) == 1 else qtype(info.type.restored_as or Q8_0.name)
    heads = {"wq": cfg.n_heads, "wk": cfg.n_kv_heads, "bq": cfg.n_heads, "bk": cfg.n_kv_heads}.get(ours.rsplit(".", 1)[-1])
    permuted = heads if permuted else None

    def chunks():
        rows = g.data(src)  # [R, row_bytes]
        if part is not None:
            rows = rows[part.start:part.stop]
        if permuted:  # as [out features, bytes of each]: a matrix's rows, a bias's elements
            rows = _unpermute_rows(rows.reshape(shape[0], -1), permuted).reshape(rows.shape)
        step = max(1, CHUNK_ROWS_BYTES // rows.shape[1])
        for start in range(0, rows.shape[0], step):
            block = rows[start:start + step]
            if t is info.type:
                yield block
            elif t.name == info.type.restored_as:
                try:
                    yield restore_blocks(block, info.type, shape[-1])
                except ValueError as e:
                    raise ConvertError(f"{g.path}: tensor {src}: {e}") from None
            else:
                values = dequantize_ggml(block, info.type, shape[-1])
                yield quantize_weights(ours, values, t, target if isinstance(target, Policy) else None)

    how = info.type.name if t is info.type else f"{info.type.name}->{t.name}"
    return PendingTensor(ours, t, shape, chunks), how


def convert(src: str, out: str, type: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert the GGUF file `src` into `out`. With `type` None, tensors keep their type where
    we run it (lossless); with a type, every tensor is re-quantised by the usual policy."""
    target = type if isinstance(type, Policy) or type is None else qtype(type)
    g = GGUFFile(src)
    if not g.tensors:
        raise ConvertError(f"{src}: a vocabulary-only GGUF (no tensors): use it as a tokenizer "
                           "(`llmrun tokenize`), not as a model")
    cfg = read_config(g)
    family = family_of(g)
    if isinstance(target, Policy):
        target = target.for_model(cfg, tied=cfg.tie_embeddings)
    names = _names(g, cfg.n_layers, family)
    tok_info, tok_blob = tokenizer_from_gguf(g.metadata)
    from ..model import tensor_shapes
    shapes = tensor_shapes(cfg)
    parts = split_rows(src, names, lambda s: g.tensors[s].shape, shapes)
    expected = expected_tensors(src, cfg, {o: part_shape(g.tensors[s].shape, rows) for o, (s, rows) in parts.items()})
    pending = [_pending(g, s, rows, o, cfg, family.gguf_permuted, target)
               for o, (s, rows) in parts.items() if o in expected]
    tensors = [p for p, _ in pending]
    conversions = Counter(how for _, how in pending)
    meta = {
        "config": cfg.to_dict(),
        "tokenizer": tok_info,
        "chat_template": g.metadata.get("tokenizer.chat_template"),
        "provenance": {"source": os.path.basename(src), "source_format": f"gguf v{g.version}",
                       "source_name": g.metadata.get("general.name"),
                       "converter": f"llmrun {__version__}", "type": target.name if target else "as stored",
                       "tensor_types": dict(sorted(conversions.items())),
                       "policy": "GGUF types we run kept block for block; others dequantised exactly, "
                                 "then q8_0 (f32 for vectors)" if target is None else
                                 target.describe() if isinstance(target, Policy) else DEFAULT_POLICY},
    }
    write(out, meta, tok_blob, tensors, progress)
    return meta
