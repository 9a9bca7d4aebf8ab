"""The CPU backend: the graph's op set on the C kernels in `llmrun._kernels`.

Each op allocates its output and calls one kernel; the kernels check shapes and dtypes and
release the GIL. Later backends (CUDA, WebGPU) provide the same functions.
"""
from __future__ import annotations

import numpy as np

from . import _kernels as K
from .format import Tensor


def matmul(w: Tensor, x: np.ndarray) -> np.ndarray:
    """x [T, K] @ W^T for W [N, K] of any type -> [T, N]."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    K.matmul(out, x, w.data, w.type.id, w.layout)
    return out


def embed(w: Tensor, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` [T] of the table W [V, D] -> [T, D] float32."""
    out = np.empty((len(ids), w.shape[1]), dtype=np.float32)
    K.get_rows(out, w.data, w.type.id, np.ascontiguousarray(ids, dtype=np.int32), w.layout)
    return out


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    out = np.empty_like(x)
    K.rmsnorm(out, x, w, eps)
    return out


def rope_(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> None:
    """Rotate x [T, H, hd] in place by each token's position (rotate-half convention)."""
    K.rope(x, positions, inv_freq)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, n_past: int) -> np.ndarray:
    """Causal grouped-query attention of q [T, Hq, hd] over cache positions [0, n_past + T)."""
    out = np.empty_like(q)
    K.attention(out, q, k_cache, v_cache, n_past)
    return out


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    out = np.empty_like(gate)
    K.silu_mul(out, gate, up)
    return out


def graph(cfg, w, inv_freq: np.ndarray):
    """The model's weights (llmrun.model.Weights) bound for forward(): views, nothing copied."""
    def weight(t: Tensor):
        return (t.data, t.type.id, t.layout, t.shape[0], t.shape[1])

    layers = [(l.attn_norm, l.ffn_norm, l.bq, l.bk, l.bv,
               *(weight(m) for m in (l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down))) for l in w.layers]
    config = (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.norm_eps)
    return K.graph(config, inv_freq, w.norm, weight(w.tok_embeddings), weight(w.output), layers)


def forward_batch(graph, segments, vocab: int) -> np.ndarray:
    """llmrun.model.forward() for several sequences in one kernel call: every weight is read once
    for all their tokens; each segment attends over its own cache. A segment is (tokens int32
    [T], n_past, k_cache, v_cache, first): it writes its caches' rows n_past .. and gets the
    logits of its tokens from `first` on. Returns logits [sum(T - first), V], segment after
    segment, each segment's bit for bit those it gets alone."""
    logits = np.empty((sum(len(s[0]) - s[4] for s in segments), vocab), dtype=np.float32)
    K.forward(graph, segments, logits)
    return logits


def forward(graph, tokens: np.ndarray, n_past: int, k_cache: np.ndarray, v_cache: np.ndarray,
            first: int, vocab: int) -> np.ndarray:
    """llmrun.model.forward() in one kernel call: the same ops in the same order, so the same
    logits bit for bit. Writes the caches' rows n_past ..; returns logits [T - first, V] of
    the tokens from `first` on. (forward_batch of one segment.)"""
    return forward_batch(graph, [(tokens, n_past, k_cache, v_cache, first)], vocab)


def isa() -> str:
    """The kernel path in use: "scalar", "avx2", "avx512", "avx512vnni" (LLMRUN_ISA forces one)."""
    return K.isa()


def threads() -> int:
    """Threads the kernels use (LLMRUN_THREADS, else the physical cores; set_threads changes it)."""
    return K.get_threads()
