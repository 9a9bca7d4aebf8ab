"""The CPU backend: the graph's op set on the C kernels in `llmrun._kernels` (what the Python
reference forward in llmrun/model.py calls), and `Backend`, the whole forward pass in one C call.

Each op allocates its output and calls one kernel; the kernels check shapes and dtypes and
release the GIL.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from .. import _kernels as K
from ..errors import ContextError
from ..format import Tensor, advise
from . import KV_DTYPES, kv_row_items, kv_type_checked


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


def rope_(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, mscale: float = 1.0) -> None:
    """Rotate x [T, H, hd] in place by each token's position (rotate-half convention, over the
    first 2 * len(inv_freq) of each head), cos and sin scaled by mscale."""
    K.rope(x, positions, inv_freq, mscale)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, n_past: int, window: int = 0,
              scale: float | None = None) -> np.ndarray:
    """Causal grouped-query attention of q [T, Hq, hd] over cache positions [0, n_past + T) of
    k_cache, v_cache [Hkv, n_ctx, hd] (a layer of a Cache), each token seeing its last `window`
    positions only where window > 0; scores q.k * scale (default hd^-0.5)."""
    out = np.empty_like(q)
    K.attention(out, q, k_cache, v_cache, n_past, window, scale or 0.0)
    return out


def kv_rotate_(x: np.ndarray, divide: bool = False) -> None:
    """x [.., hd] in place: each run of n values (the largest power of two dividing hd) times the
    Walsh-Hadamard matrix H_n, then / n where `divide`. A q8_0 KV cache stores H k and H v; a
    query goes in as H q / n and the attention output comes back by H / n (H H = n I), so the
    attention is unchanged while each q8_0 block holds mixtures of a head's values, its few large
    ones spread out (what llama.cpp does for its quantised caches)."""
    K.kv_rotate(x, divide)


def store_kv(rows: np.ndarray, x: np.ndarray) -> None:
    """A cache's rows [.., hd] of its element type <- x [.., hd] float32: copied (f32), rounded to
    nearest even (f16), or quantised by the C forward's own quantiser (q8_0 blocks, uint8 rows)."""
    if rows.dtype != np.uint8:
        rows[...] = x
        return
    from ..quant.types import Q8_0
    blocks = np.empty(rows.shape, dtype=np.uint8)
    K.quantize(blocks, np.ascontiguousarray(x, dtype=np.float32), Q8_0.id)
    rows[...] = blocks


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    out = np.empty_like(gate)
    K.silu_mul(out, gate, up)
    return out


def gelu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    out = np.empty_like(gate)
    K.gelu_mul(out, gate, up)
    return out


ROPE_KINDS = {"none": 0, "global": 1, "local": 2}  # llmrun.h's LLMR_ROPE_*
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}  # llmrun.h's LLMR_ACT_*


def graph(cfg, w, inv_freq: dict):
    """The model's weights (llmrun.model.Weights) and switches bound for forward(), by name:
    views, nothing copied. inv_freq: llmrun.config.rope_frequencies."""
    def weight(t: Tensor):
        return (t.data, t.type.id, t.layout, t.shape[0], t.shape[1])

    def layer(i, l):
        tensors = {name: value if isinstance(value, np.ndarray) else weight(value)
                   for name, value in vars(l).items() if value is not None}
        return tensors | {"rope": ROPE_KINDS[cfg.layer_rope(i)], "window": cfg.layer_window(i)}

    model = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
             "head_dim": cfg.head_dim, "ffn_dim": cfg.ffn_dim, "norm_eps": cfg.norm_eps, "rope_dims": cfg.rotary_dims,
             "act": ACTIVATIONS[cfg.act], "embed_scale": cfg.embed_scale, "residual_scale": cfg.residual_scale,
             "attn_scale": cfg.attn_scale or cfg.head_dim ** -0.5, "logit_scale": cfg.logit_scale,
             "rope_mscale": cfg.rope_mscale, "inv_freq": inv_freq["global"], "inv_freq_local": inv_freq.get("local"), "norm": w.norm,
             "tok_embeddings": weight(w.tok_embeddings), "output": weight(w.output)}
    return K.graph(model, [layer(i, l) for i, l in enumerate(w.layers)])


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


def prefetch() -> str | None:
    """How the x86 kernels prefetch the weights they stream, "nta" or "l2" (LLMRUN_PREFETCH forces
    one; docs/kernels.md, Prefetch); None on a path that does not prefetch (scalar, NEON)."""
    return K.prefetch() if K.isa().startswith("avx") else None


def threads() -> int:
    """Threads the kernels use (LLMRUN_THREADS, else the physical cores; set_threads changes it)."""
    return K.get_threads()


def _lazy_zeros(shape: tuple, dtype: str = "float32") -> np.ndarray:
    """Zeros of dtype in fresh anonymous memory, committed a small page at a time as it is
    written. (np.zeros asks Linux for 2 MiB huge pages on large arrays: a KV cache's first token
    would then commit 2 MiB per layer for K and V alike, ~120 MiB for SmolLM2, and zeroing them
    made its first prefill 20x slower.)"""
    count = int(np.prod(shape, dtype=np.int64))
    buf = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1))
    advise(buf, "MADV_NOHUGEPAGE")
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


@dataclass
class Cache:
    """A context's keys and values in host memory, pages committed as they are written. Each kv
    head's positions lie one after another ([L, Hkv, C, hd]): a decode step's pass of a head over
    the cache reads one run of memory, which the prefetchers follow (position-major rows, a
    head's 128 to 512 bytes every Hkv * hd elements, made LLaMA-3.2-1B's attention over 8k
    positions 1.5x (f32) to 1.7x (f16) slower, one thread, cold caches)."""
    k: np.ndarray  # [L, Hkv, C, hd], float32 or float16; q8_0: [L, Hkv, C, hd / 32 * 34] uint8
    v: np.ndarray  # the same


def new_cache(cfg, n_ctx: int, kv_type: str = "f32") -> Cache:
    """Host keys and values for n_ctx positions of a model of config `cfg`, of element type
    kv_type (llmrun.backends.KV_DTYPES)."""
    shape = (cfg.n_layers, cfg.n_kv_heads, n_ctx, kv_row_items(kv_type_checked(kv_type), cfg.head_dim))
    dtype = KV_DTYPES[kv_type]
    try:
        return Cache(_lazy_zeros(shape, dtype), _lazy_zeros(shape, dtype))
    except (MemoryError, OSError, OverflowError):  # even unbacked: a context past what the machine can map
        size = 2 * np.dtype(dtype).itemsize * np.prod(shape, dtype=np.float64)
        raise ContextError(f"a KV cache for {n_ctx} positions takes {size / 2**30:.1f} GiB, more than "
                           "this machine can map: use a smaller context (--ctx)") from None


class Backend:
    """The model's weights bound for the C forward pass (llmrun.backends' interface)."""
    name = "cpu"
    max_segments = None  # any number: one call reads every weight once for all of them
    cpu_threads = True
    kv_types = tuple(KV_DTYPES)  # the attention kernels turn f16 and q8_0 rows into f32 as they load them

    def __init__(self, cfg, weights, inv_freq: dict):
        self.cfg = cfg
        self.graph = graph(cfg, weights, inv_freq)

    def new_cache(self, n_ctx: int, kv_type: str = "f32") -> Cache:
        return new_cache(self.cfg, n_ctx, kv_type)

    def forward(self, runs) -> list[np.ndarray]:
        flat = forward_batch(self.graph, [(ids, n_past, c.k, c.v, first) for ids, n_past, c, first in runs],
                             self.cfg.vocab_size)
        return np.split(flat, np.cumsum([len(ids) - first for ids, _, _, first in runs[:-1]]))
