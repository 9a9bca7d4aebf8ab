"""What the GPU backends (webgpu.py, cuda.py beside it) share: the model's weights on a
device, uploaded once, and a context's state there, with the plan of a step over it.

The plan is llmrun.model.forward()'s graph, op for op in the same order, recorded once as
kernel launches whose arguments never change: a step writes its token ids and 12 bytes of step
state (n_past, tokens, first), runs the plan, and reads back only the logits. Activations stay
f32 where the CPU quantises them to 16 bits per block, so logits agree with the CPU's to about
1e-4 of their range, not bit for bit.

A backend's device gives: upload(tensor) -> Matrix, buffer(array), zeros(nbytes),
write(buffer, array), read(buffer, nbytes), step_buffer(), plan(step), and OutOfMemory (what
it raises when memory runs out); its plan: op(), matmul(), attention(), store_rows(), run().
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ContextError, LlmrunError
from ..quant.layout import X16

TYPES = ("f16", "q8_0", "q4_0", "q4_1")  # the weight types the GPU kernels read
X16_TYPES = ("q8_0", "q4_0", "q4_1")  # ... in the x16 layout
WORKGROUP = 64  # threads of the elementwise kernels' workgroups (CUDA: blocks)
MAX_GROUPS = 65535  # workgroups per dimension, the WebGPU minimum every adapter allows


def groups(n: int) -> tuple[int, int]:
    """Workgroups (x, y) covering n elements: the kernels index x + y * MAX_GROUPS * WORKGROUP."""
    g = -(-n // WORKGROUP)
    return min(g, MAX_GROUPS), -(-g // MAX_GROUPS)


@dataclass
class Matrix:
    """A weight matrix on a device: its type, shape and buffers of whole 16-row groups
    [(buffer, first row, rows)]."""
    type: str
    rows: int
    k: int
    parts: list


def check_weight(t, backend: str) -> None:
    """A weight the backend ("WebGPU", "CUDA") has kernels for, in the layout they read."""
    if t.type.name not in TYPES:
        raise LlmrunError(f"{t.name}: no {backend} kernels for {t.type.name} weights (have: {', '.join(TYPES)}); "
                          "convert the model to one of those, or use --backend cpu")
    if t.type.name in X16_TYPES and t.layout != X16:
        raise LlmrunError(f"{t.name}: the {backend} kernels read {t.type.name} in the x16 layout only")


def check_config(cfg, backend: str) -> None:
    """A model whose family switches (llmrun/config.py) the GPU graph runs; one line naming the
    missing pieces otherwise."""
    missing = [what for what, used in (
        ("per-head q/k norms", cfg.qk_norm), ("post-norms", cfg.post_norms),
        ("the GELU gate", cfg.act != "silu"),
        ("scaled embeddings", cfg.embed_scale != 1.0), ("scaled residuals", cfg.residual_scale != 1.0),
        ("an attention scale of its own", cfg.attn_scale is not None), ("scaled logits", cfg.logit_scale != 1.0),
        ("a partial rotary", cfg.rotary_dims != cfg.head_dim), ("layers without RoPE", bool(cfg.no_rope_layers)),
        ("a sliding window", cfg.sliding_window > 0)) if used]
    if missing:
        raise LlmrunError(f"the {backend} backend does not run {cfg.arch}'s {', '.join(missing)} yet: "
                          "use --backend cpu")


def rope_table(inv_freq: np.ndarray, n_ctx: int) -> np.ndarray:
    """cos and sin of every position [n_ctx, hd/2, 2], as llmr_rope_table makes them: the angle
    in f32, its cos and sin in f64."""
    angle = np.arange(n_ctx, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.stack([np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))], axis=-1).astype(np.float32)


class Graph:
    """The model's weights on the device, uploaded once (llmrun.backends' interface);
    `new_cache(n_ctx)` makes the device state of one context, whose run() does a step."""
    max_segments = 1  # a step runs one sequence: the plans have no batch of caches yet
    cpu_threads = False

    def __init__(self, dev, cfg, w, inv_freq: dict, name: str = "gpu"):
        check_config(cfg, name)
        self.dev, self.cfg, self.inv_freq, self.name = dev, cfg, inv_freq, name

        def vec(a):
            return dev.buffer(np.asarray(a, np.float32))

        self.emb = dev.upload(w.tok_embeddings)
        self.output = self.emb if cfg.tie_embeddings else dev.upload(w.output)
        self.norm = vec(w.norm)
        self.layers = [dict(attn_norm=vec(l.attn_norm), ffn_norm=vec(l.ffn_norm),
                            **{n: dev.upload(getattr(l, n)) for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")},
                            **{n: vec(getattr(l, n)) for n in ("bq", "bk", "bv") if getattr(l, n) is not None})
                       for l in w.layers]

    def new_cache(self, n_ctx: int) -> "DeviceCache":
        return DeviceCache(self, n_ctx)

    def forward(self, runs) -> list[np.ndarray]:
        if len(runs) > self.max_segments:
            raise LlmrunError(f"the {self.name} backend runs one sequence a call, not {len(runs)}")
        return [cache.run(ids, n_past, first) for ids, n_past, cache, first in runs]


class DeviceCache:
    """One context on the device: its KV cache, RoPE table, activations, and the plan of a
    step over them (rebuilt only when a step has more tokens than any before)."""

    def __init__(self, graph: Graph, n_ctx: int):
        dev, cfg = graph.dev, graph.cfg
        self.graph, self.dev, self.n_ctx = graph, dev, n_ctx
        self.kv_dim = cfg.n_kv_heads * cfg.head_dim
        try:
            self.k = [dev.zeros(n_ctx * self.kv_dim * 4) for _ in graph.layers]  # [C, Hkv, hd] each
            self.v = [dev.zeros(n_ctx * self.kv_dim * 4) for _ in graph.layers]
        except dev.OutOfMemory as e:
            raise ContextError(f"the GPU cannot hold a KV cache of {n_ctx} positions ({e}): use a smaller "
                               "context (--ctx)") from None
        self.rope_table = dev.buffer(rope_table(graph.inv_freq["global"], n_ctx))  # [C, hd/2, 2]
        self.step = dev.step_buffer()
        self.capacity, self.plan = 0, None
        self.dispatches = 0  # kernels run in the last step
        self.bytes_up = self.bytes_down = 0  # host -> device, device -> host, in the last step

    def _build(self, capacity: int) -> None:
        """Activations for steps of up to `capacity` tokens, and the plan that runs on them."""
        g, dev, cfg = self.graph, self.dev, self.graph.cfg
        D, H, Hkv, hd, F, V = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
        T, q_dim, kv_dim = capacity, H * hd, self.kv_dim
        self.ids = dev.zeros(T * 4)  # [T]
        x, h, tmp = dev.zeros(T * D * 4), dev.zeros(T * D * 4), dev.zeros(T * D * 4)  # [T, D]
        q, att = dev.zeros(T * q_dim * 4), dev.zeros(T * q_dim * 4)  # [T, H, hd]
        k, v = dev.zeros(T * kv_dim * 4), dev.zeros(T * kv_dim * 4)  # [T, Hkv, hd]
        gate, up = dev.zeros(T * F * 4), dev.zeros(T * F * 4)  # [T, F]
        self.logits = dev.zeros(T * V * 4)  # [T - first, V]

        plan = dev.plan(self.step)
        per_token = lambda n: (lambda T, first: groups(T * n))  # noqa: E731 (elementwise over T rows of n)
        rows = lambda T, first: (T, 1)  # noqa: E731 (a workgroup per token)

        for part, row0, n_rows in g.emb.parts:
            plan.op("embed", (D, n_rows, row0), [part, self.ids, x], rows, g.emb.type)
        for layer, kc, vc in zip(g.layers, self.k, self.v):
            # attention: x + Wo . attn(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x)
            plan.op("rmsnorm", (D, float(cfg.norm_eps), 0), [x, layer["attn_norm"], h], rows)
            for name, out, n in (("wq", q, q_dim), ("wk", k, kv_dim), ("wv", v, kv_dim)):
                plan.matmul(layer[name], h, out)
                if "b" + name[1] in layer:
                    plan.op("add", (n, n), [out, layer["b" + name[1]]], per_token(n))
            plan.op("rope", (H, hd), [q, self.rope_table], per_token(q_dim // 2))
            plan.op("rope", (Hkv, hd), [k, self.rope_table], per_token(kv_dim // 2))
            plan.store_rows(k, kc, kv_dim)
            plan.store_rows(v, vc, kv_dim)
            plan.attention(q, kc, vc, att, cfg, self.n_ctx, T)
            plan.matmul(layer["wo"], att, tmp)
            plan.op("add", (D, T * D), [x, tmp], per_token(D))

            # feed-forward: x + W_down . (silu(W_gate h) * W_up h),  h = RMSNorm(x)
            plan.op("rmsnorm", (D, float(cfg.norm_eps), 0), [x, layer["ffn_norm"], h], rows)
            plan.matmul(layer["w_gate"], h, gate)
            plan.matmul(layer["w_up"], h, up)
            plan.op("silu_mul", (F,), [gate, up], per_token(F))
            plan.matmul(layer["w_down"], gate, tmp)
            plan.op("add", (D, T * D), [x, tmp], per_token(D))

        plan.op("rmsnorm", (D, float(cfg.norm_eps), 1), [x, g.norm, h], lambda T, first: (T - first, 1))
        plan.matmul(g.output, h, self.logits, from_first=True)
        self.capacity, self.plan = capacity, plan

    def run(self, tokens: np.ndarray, n_past: int, first: int) -> np.ndarray:
        """Run tokens at positions n_past ..; the logits [T - first, V] of the tokens from first on."""
        T, V = len(tokens), self.graph.cfg.vocab_size
        if n_past + T > self.n_ctx:
            raise LlmrunError(f"{n_past} + {T} tokens do not fit in the context of {self.n_ctx}")
        if T > self.capacity:
            try:
                self._build(max(T, 2 * self.capacity))
            except self.dev.OutOfMemory as e:  # e.g. logits [T, V] past the largest buffer
                raise ContextError(f"the GPU cannot hold the activations of a {T}-token step ({e}): give fewer "
                                   "tokens at a time") from None
        ids = np.ascontiguousarray(tokens, dtype=np.uint32)
        self.dev.write(self.ids, ids)
        self.dev.write(self.step, np.array([n_past, T, first, 0], np.uint32))
        self.dispatches = self.plan.run(T, n_past, first)
        logits = np.frombuffer(self.dev.read(self.logits, (T - first) * V * 4), dtype=np.float32)
        self.bytes_up, self.bytes_down = ids.nbytes + 12, logits.nbytes
        return logits.reshape(T - first, V).copy()
