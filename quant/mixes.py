"""The k-quant mixes (`--type q4_k_m` and the like): a base type, and the tensors that get more.

llama-quantize's mixes are what people download (ollama's default pull is a Q4_K_M), so ours
are the same, tensor for tensor, and a file quantised here compares with one quantised there:

    mix     base   output  attn_v (wv)                     ffn_down (w_down)              attn_output (wo)
    q2_k    q2_k   q6_k    q4_k if GQA >= 4, else q3_k     q3_k                           q3_k
    q3_k_m  q3_k   q6_k    q5_k in layers 0-1, else q4_k   q5_k in the first 16th, q4_k   q4_k
    q4_k_s  q4_k   q6_k    q5_k in layers 0-3              q5_k in the first 8th          -
    q4_k_m  q4_k   q6_k    q6_k where more_bits            q6_k where more_bits           -
    q5_k_m  q5_k   q6_k    q6_k where more_bits            q6_k where more_bits           -
    q6_k    q6_k   q6_k    -                               -                              -

`more_bits` (llama.cpp's use_more_bits) is the first and last eighth of the layers and every
third layer between them. A tied embedding table is the output head and gets its type; an
untied one the base type. The output head is q8_0 where its rows are not a whole number of
super-blocks. Every other matrix whose row does not split into whole blocks gives way to its
type's `fallback` (quant/types.py): that is most of a small model (SmolLM2's width, 576, is not
a multiple of 256, so its Q4_K_M is mostly q5_0).
"""
from __future__ import annotations

from dataclasses import dataclass

from .types import F16, QType, TYPES, ggml_type

_TYPE = {t.name: t for t in (ggml_type(i) for i in (10, 11, 12, 13, 14))}  # q2_k .. q6_k, stored or not


def more_bits(layer: int, n_layers: int) -> bool:
    """The layers whose attn_v and ffn_down a _m mix keeps at more bits (llama.cpp's use_more_bits)."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


@dataclass(frozen=True)
class Mix:
    name: str
    base: str

    def type_for(self, kind: str, layer: int, n_layers: int, gqa: int) -> QType:
        """The type of matrix `kind` (our short name: wv, w_down, ...) of layer `layer`."""
        more = more_bits(layer, n_layers)
        up = {  # (kind, mix) -> the type that kind gets, where it differs from the base
            ("wv", "q2_k"): "q4_k" if gqa >= 4 else "q3_k",
            ("w_down", "q2_k"): "q3_k",
            ("wo", "q2_k"): "q3_k",
            ("wv", "q3_k_m"): "q5_k" if layer < 2 else "q4_k",
            ("w_down", "q3_k_m"): "q5_k" if layer < n_layers // 16 else "q4_k",
            ("wo", "q3_k_m"): "q4_k",
            ("wv", "q4_k_s"): "q5_k" if layer < 4 else None,
            ("w_down", "q4_k_s"): "q5_k" if layer < n_layers // 8 else None,
            ("wv", "q4_k_m"): "q6_k" if more else None,
            ("w_down", "q4_k_m"): "q6_k" if more else None,
            ("wv", "q5_k_m"): "q6_k" if more else None,
            ("w_down", "q5_k_m"): "q6_k" if more else None,
        }.get((kind, self.name))
        return _TYPE[up or self.base]

    @property
    def base_type(self) -> QType:
        return _TYPE[self.base]

    @property
    def types(self) -> set[str]:
        """Every k-quant this mix can give a tensor (checked against the types we store): the rules
        above run over every branch (64 layers reach each layer test; GQA 1 and 4)."""
        kinds = ("wv", "w_down", "wo", "wq")
        got = {self.type_for(k, i, 64, g).name for k in kinds for i in range(64) for g in (1, 4)}
        return got | {"q6_k"}


MIXES = {m.name: m for m in (Mix("q2_k", "q2_k"), Mix("q3_k_m", "q3_k"), Mix("q4_k_s", "q4_k"),
                             Mix("q4_k_m", "q4_k"), Mix("q5_k_m", "q5_k"), Mix("q6_k", "q6_k"))}
# `--type q6_k` is the mix (output q6_k too, as llama-quantize): the same name as the type.


def missing_types(mix: Mix) -> list[str]:
    """The types `mix` needs that llmrun does not store (yet)."""
    return sorted(t for t in mix.types if t not in TYPES)


def names() -> str:
    """The mixes llmrun can write (every type they use stored), for the command line's help."""
    return ", ".join(m.name for m in MIXES.values() if not missing_types(m))


def fit(t: QType, cols: int) -> QType:
    """`t`, or the type it gives way to where a row of `cols` is not a whole number of its blocks:
    its fallback (q4_k -> q5_0, ...), and f16 where even that does not fit."""
    while cols % t.block_size:
        t = TYPES[t.fallback] if t.fallback else F16
    return t


def mix_type(mix: Mix, name: str, shape, n_layers: int, gqa: int, tied: bool) -> QType:
    """The type `mix` gives matrix `name` (ours: "layers.3.wv", "output", "tok_embeddings")."""
    cols = shape[-1]
    if name == "output" or (name == "tok_embeddings" and tied):
        return fit(_TYPE["q6_k"], cols)  # q8_0 where rows are not whole super-blocks: q6_k's fallback
    if name.startswith("layers."):
        _, layer, kind = name.split(".", 2)
        return fit(mix.type_for(kind, int(layer), n_layers, gqa), cols)
    return fit(_TYPE[mix.base], cols)
