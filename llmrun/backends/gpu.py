"""What the GPU backends (webgpu.py, cuda.py beside it) share: the model's weights on a
device, uploaded once, and a context's state there, with the plan of a step over it.

The plan is llmrun.model.forward()'s graph, op for op in the same order, recorded once as
kernel launches whose arguments never change: a step writes its token ids and 12 bytes of step
state (n_past, tokens, first), runs the plan, and reads back only the logits. Activations stay
f32 where the CPU quantises them to 16 bits per block, so logits agree with the CPU's to about
1e-4 of their range, not bit for bit.

A backend's device gives: upload(tensor) -> Matrix, buffer(array), zeros(nbytes),
write(buffer, array), read(buffer, nbytes), step_buffer(), plan(step), and OutOfMemory (what
it raises when memory runs out); its plan: op(), matmul(), rope_store() (both RoPEs and the KV
cache's new rows in one launch, at the position the step state holds on the device),
attention(), run(), and `fuses`, the fused launches it has beyond those (CUDA's all; WebGPU's
"residual"): "qkv" (matmul_qkv: q, k and v of one input in one launch), "gate" (matmul_gate:
gate and up, the gate applied as they are stored), "residual" (matmul(..., accumulate=True):
x += W a, where no post-norm or residual scale comes between) and "norm" (with "qkv" and
"gate": the pre-norm before them given as norm=(x, weight, eps), folded into the fused
matvec's prologue; the plan runs the rmsnorm op itself for the steps the matvec does not take).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ..errors import ContextError, LlmrunError
from ..quant.layout import GROUP, X16, has_x16, interleave
from ..quant.types import TABLE
from . import KV_DTYPES, kv_type_checked

# The weight types the GPU kernels read: adding one is its kernel file for each backend
# (kernels/wgsl/matmul_<type>.wgsl; kernels/cuda/<type>.cuh and its line in llmrun.cu) and its
# name here. A model holding a stored type not listed is refused by device_bytes, in one line.
TYPES = ("f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# ... those the kernels read in the x16 layout: every quantised one. Files written before the CPU
# kernels read q2_k and q3_k in x16 hold them in rows; device_bytes() re-lays them as they go up.
X16_TYPES = tuple(t.name for t in TABLE if t.name in TYPES and has_x16(t))
WORKGROUP = 64  # threads of the elementwise kernels' workgroups (CUDA: blocks)
MAX_GROUPS = 65535  # workgroups per dimension, the WebGPU minimum every adapter allows


def groups(n: int) -> tuple[int, int]:
    """Workgroups (x, y) covering n elements: the kernels index x + y * MAX_GROUPS * WORKGROUP."""
    return row_groups(-(-n // WORKGROUP))


def row_groups(n: int) -> tuple[int, int]:
    """Workgroups (x, y), one per row, covering n rows: the kernels index x + y * MAX_GROUPS."""
    return min(n, MAX_GROUPS), -(-n // MAX_GROUPS)


@dataclass
class Matrix:
    """A weight matrix on a device: its type, shape and buffers of whole 16-row groups
    [(buffer, first row, rows)]."""
    type: str
    rows: int
    k: int
    parts: list


def device_bytes(t, backend: str) -> np.ndarray:
    """A weight's bytes as the backend ("WebGPU", "CUDA") reads them: f16 in rows, the quantised
    types in x16, as the file has them or (q2_k, q3_k from older files: rows) re-laid here. A weight
    the kernels cannot read is refused in one line."""
    if t.type.name not in TYPES:
        raise LlmrunError(f"{t.name}: no {backend} kernels for {t.type.name} weights (have: {', '.join(TYPES)}); "
                          "convert the model to one of those, or use --backend cpu")
    if t.type.name not in X16_TYPES or t.layout == X16:
        return t.data
    if len(t.shape) != 2 or t.shape[0] % GROUP:  # x16 types are in rows only there, or in older files
        raise LlmrunError(f"{t.name}: the {backend} kernels read {t.type.name} in the x16 layout only "
                          f"(whole groups of 16 rows; this matrix has {t.shape[0]})")
    rows = np.asarray(t.data, np.uint8).reshape(t.shape[0], -1)
    return interleave(rows, t.type).reshape(-1)


def rope_table(inv_freq: np.ndarray, n_ctx: int, mscale: float = 1.0) -> np.ndarray:
    """cos and sin of every position [n_ctx, rd/2, 2] (rd: the rotated elements of a head), as
    llmr_rope_table makes them: the angle in f32, its cos and sin in f64 rounded to f32, then
    times mscale in f32 (LongRoPE's attention factor; 1 otherwise)."""
    angle = np.arange(n_ctx, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    table = np.stack([np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))], axis=-1).astype(np.float32)
    return table * np.float32(mscale) if mscale != 1.0 else table


class Graph:
    """The model's weights on the device, uploaded once (llmrun.backends' interface);
    `new_cache(n_ctx)` makes the device state of one context, whose run() does a step. Where the
    device can give an op its own step state and rows of a buffer (`dev.batches(cfg)`: CUDA's
    always, WebGPU's where each context's rows start where a binding may), the decode steps of
    several contexts run as one step (DeviceBatch): each product reads its weights once for all
    of them; elsewhere a forward runs one sequence."""
    cpu_threads = False
    BATCHES_KEPT = 8  # the batch plans kept, most recently used first (a server's slots come and go)

    def __init__(self, dev, cfg, w, inv_freq: dict, name: str = "gpu"):
        self.dev, self.cfg, self.inv_freq, self.name = dev, cfg, inv_freq, name
        self.kv_types = dev.kv_types  # the element types its rope_store and attention kernels keep
        self.max_segments = None if dev.batches(cfg) else 1
        self.batches: dict[tuple, DeviceBatch] = {}  # by the ids of their caches, in the order last used

        def vec(a):
            return dev.buffer(np.asarray(a, np.float32))

        self.emb = dev.upload(w.tok_embeddings)
        self.output = self.emb if cfg.tie_embeddings else dev.upload(w.output)
        self.norm = vec(w.norm)
        # each layer's weights by LayerWeights' names: the matrices, and the vectors it has (norms;
        # biases, q/k norms and post-norms where the family has them)
        self.layers = [{n: vec(a) if isinstance(a, np.ndarray) else dev.upload(a) for n, a in vars(l).items()
                        if a is not None} for l in w.layers]

    def new_cache(self, n_ctx: int, kv_type: str = "f32") -> "DeviceCache":
        cache = DeviceCache(self, n_ctx, kv_type_checked(kv_type, self))
        weakref.finalize(cache, self._forget, id(cache))  # its batch plans hold its KV buffers
        return cache

    def _forget(self, cache_id: int) -> None:
        for key in [key for key in self.batches if cache_id in key]:
            del self.batches[key]

    def forward(self, runs) -> list[np.ndarray]:
        """Each run's logits; where the device batches, the single-token runs that want their
        logit (decode steps) as one DeviceBatch step, the others one by one."""
        if self.max_segments is not None and len(runs) > self.max_segments:
            raise LlmrunError(f"the {self.name} backend runs one sequence a call, not {len(runs)}")
        decode = [i for i, (ids, _, _, first) in enumerate(runs) if len(ids) == 1 and first == 0]
        out = {}
        if len(decode) > 1:
            batch = self._batch([runs[i][2] for i in decode])
            out = dict(zip(decode, batch.run([runs[i] for i in decode])))
        return [out[i] if i in out else cache.run(ids, n_past, first)
                for i, (ids, n_past, cache, first) in enumerate(runs)]

    def _batch(self, caches: list) -> "DeviceBatch":
        """The batch plan of these caches (in this order), made on first use."""
        key = tuple(id(c) for c in caches)
        batch = self.batches.pop(key, None) or DeviceBatch(self, caches)
        self.batches[key] = batch
        while len(self.batches) > self.BATCHES_KEPT:
            del self.batches[next(iter(self.batches))]
        return batch


class DeviceCache:
    """One context on the device: its KV cache, RoPE table, activations, and the plan of a
    step over them (rebuilt only when a step has more tokens than any before)."""

    def __init__(self, graph: Graph, n_ctx: int, kv_type: str = "f32"):
        dev, cfg = graph.dev, graph.cfg
        self.graph, self.dev, self.n_ctx, self.kv_type = graph, dev, n_ctx, kv_type
        self.kv_dim = cfg.n_kv_heads * cfg.head_dim
        row_bytes = self.kv_dim * np.dtype(KV_DTYPES[kv_type]).itemsize
        try:
            self.k = [dev.zeros(n_ctx * row_bytes) for _ in graph.layers]  # [C, Hkv, hd] each
            self.v = [dev.zeros(n_ctx * row_bytes) for _ in graph.layers]
        except dev.OutOfMemory as e:
            raise ContextError(f"the GPU cannot hold a KV cache of {n_ctx} positions ({e}): use a smaller "
                               "context (--ctx)") from None
        # [C, rd/2, 2] by kind: "global", and "local" for Gemma 3's windowed layers
        # (the global table's cos and sin scaled as the CPU scales them: LongRoPE's attention factor)
        mscale = {"global": cfg.rope_mscale, "local": 1.0}
        self.rope_tables = {kind: dev.buffer(rope_table(f, n_ctx, mscale[kind])) for kind, f in graph.inv_freq.items()}
        self.step = dev.step_buffer()
        self.capacity, self.plan = 0, None
        self.dispatches = 0  # kernels run in the last step
        self.bytes_up = self.bytes_down = 0  # host -> device, device -> host, in the last step

    def _build(self, capacity: int) -> None:
        """Activations for steps of up to `capacity` tokens, and the plan that runs on them."""
        plan = self.dev.plan(self.step)
        self.ids, self.logits = record_step(self.graph, plan, capacity, [Sequence(self)])
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


class Sequence:
    """One context's part of a step's plan: its cache, and in a batch its token's row of the
    step's activations and its own step state (n_past, 1, 0) in `step`, so that its RoPE, KV
    store and attention read its own position. Alone (row None) it is the whole step."""

    def __init__(self, cache, row: int | None = None, step=None):
        self.cache, self.row = cache, row
        self.tokens = None if row is None else 1  # the grids' tokens: the step's T, or its one
        self.own = {} if step is None else {"step": step, "tokens": 1}  # rope_store's and attention's

    def rows(self, buffer, n: int):
        """Its rows of an activation [T, n]."""
        return buffer if self.row is None else self.cache.dev.view(buffer, self.row * n * 4, n * 4)


class DeviceBatch:
    """The decode steps of several contexts, a token each, as one step: one plan over their
    caches whose products read each weight once for all of them (the server's slots decoding
    together). The step state is one buffer, written once a step: the batch's (0, B, 0), then
    each context's (n_past, 1, 0), dev.step_stride bytes apart."""

    def __init__(self, graph: Graph, caches: list):
        dev, B = graph.dev, len(caches)
        self.graph, self.dev = graph, dev
        try:
            self.state = dev.step_buffer(B + 1)
            self.steps = [dev.view(self.state, dev.step_stride * i, 16) for i in range(B + 1)]
            plan = dev.plan(self.steps[0])
            plan.replay_tokens = B  # CUDA: its grids never change, so it is captured once and replayed
            seqs = [Sequence(c, i, self.steps[i + 1]) for i, c in enumerate(caches)]
            self.ids, self.logits = record_step(graph, plan, B, seqs)
        except dev.OutOfMemory as e:
            raise ContextError(f"the GPU cannot hold the activations of {B} sequences' step ({e}): "
                               "serve fewer at once (--parallel)") from None
        self.plan, self.dispatches = plan, 0

    def run(self, runs) -> list[np.ndarray]:
        """runs: [(ids [1], n_past, cache, 0)] in the caches' order; each one's logits [1, V]."""
        B, V = len(runs), self.graph.cfg.vocab_size
        state = np.zeros((B + 1, self.dev.step_stride // 4), np.uint32)
        state[0, :3] = (0, B, 0)
        for i, (_, n_past, cache, _) in enumerate(runs):
            if n_past + 1 > cache.n_ctx:
                raise LlmrunError(f"{n_past} + 1 tokens do not fit in the context of {cache.n_ctx}")
            state[i + 1, :3] = (n_past, 1, 0)
        self.dev.write(self.ids, np.array([int(ids[0]) for ids, _, _, _ in runs], np.uint32))
        self.dev.write(self.state, state)
        self.dispatches = self.plan.run(B)
        logits = np.frombuffer(self.dev.read(self.logits, B * V * 4), dtype=np.float32).reshape(B, 1, V)
        return [row.copy() for row in logits]


def record_step(g: Graph, plan, capacity: int, seqs: list[Sequence]):
    """The graph's ops into plan, over activations for steps of up to `capacity` tokens: the
    products and elementwise ops over all of them, RoPE, the KV store and the attention for each
    sequence of seqs over its own rows and cache. Returns the ids [T] and logits [T - first, V]
    buffers a step writes and reads."""
    dev, cfg = g.dev, g.cfg
    D, H, Hkv, hd, F, V = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
    T, q_dim, kv_dim, rd, eps = capacity, H * hd, Hkv * hd, cfg.rotary_dims, float(cfg.norm_eps)
    ids = dev.zeros(T * 4)  # [T]
    x, h, tmp = dev.zeros(T * D * 4), dev.zeros(T * D * 4), dev.zeros(T * D * 4)  # [T, D]
    q, att = dev.zeros(T * q_dim * 4), dev.zeros(T * q_dim * 4)  # [T, H, hd]
    k, v = dev.zeros(T * kv_dim * 4), dev.zeros(T * kv_dim * 4)  # [T, Hkv, hd]
    # q and k after their per-head norms (a WGSL kernel cannot read and write one buffer)
    qn, kn = (dev.zeros(T * q_dim * 4), dev.zeros(T * kv_dim * 4)) if cfg.qk_norm else (q, k)
    gate, up = dev.zeros(T * F * 4), dev.zeros(T * F * 4)  # [T, F]
    logits = dev.zeros(T * V * 4)  # [T - first, V]

    per_token = lambda n: (lambda T, first: groups(T * n))  # noqa: E731 (elementwise over T rows of n)
    rows = lambda n: (lambda T, first: row_groups(T * n))  # noqa: E731 (a workgroup per row, n rows a token)
    gate_op = "gelu_mul" if cfg.act == "gelu_tanh" else "silu_mul"
    attn_scale = float(cfg.attn_scale or hd ** -0.5)

    def scale(buffer, row, s, from_first=0):
        if s != 1.0:
            plan.op("scale", (row, from_first, float(s)), [buffer],
                    lambda T, first: groups((T - first * from_first) * row))

    fuses = getattr(plan, "fuses", frozenset())

    def add_sublayer(y, post_norm):
        """x += y [T, D], a sublayer's output: normed first where the family has post-norms
        (into h: the sublayer no longer needs it), scaled where it has a residual multiplier."""
        if post_norm is not None:
            plan.op("rmsnorm", (D, eps, 0, 1), [y, post_norm, h], rows(1))
            y = h
        scale(y, D, cfg.residual_scale)
        plan.op("add", (D, T * D), [x, y], per_token(D))

    def prenorm(weight, fold=True):
        """h = RMSNorm(x) * weight before a sublayer's products: given to the fused matvec as
        norm=(x, weight, eps) where the plan folds it into its prologue (fold and "norm"),
        planned as the rmsnorm op into h otherwise (None)."""
        if fold and "norm" in fuses:
            return x, weight, eps
        plan.op("rmsnorm", (D, eps, 0, 1), [x, weight, h], rows(1))
        return None

    def project(m, a, post_norm):
        """x += W_m a (the o and down projections): the add in the product's epilogue where
        nothing comes between (no post-norm, no residual scale) and the plan has it."""
        if "residual" in fuses and post_norm is None and cfg.residual_scale == 1.0:
            plan.matmul(m, a, x, accumulate=True)
        else:
            plan.matmul(m, a, tmp)
            add_sublayer(tmp, post_norm)

    for part, row0, n_rows in g.emb.parts:
        plan.op("embed", (D, n_rows, row0), [part, ids, x], lambda T, first: (T, 1), g.emb.type)
    scale(x, D, cfg.embed_scale)
    for l, layer in enumerate(g.layers):
        # attention: x + Wo . attn(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x)
        if "qkv" in fuses:
            plan.matmul_qkv(layer["wq"], layer["wk"], layer["wv"], h, q, k, v, norm=prenorm(layer["attn_norm"]))
        else:
            prenorm(layer["attn_norm"], fold=False)
        for name, out, n in (("wq", q, q_dim), ("wk", k, kv_dim), ("wv", v, kv_dim)):
            if "qkv" not in fuses:
                plan.matmul(layer[name], h, out)
            if "b" + name[1] in layer:
                plan.op("add", (n, n), [out, layer["b" + name[1]]], per_token(n))
        if cfg.qk_norm:  # each head normed on its own: T * H rows of hd, T * Hkv
            plan.op("rmsnorm", (hd, eps, 0, H), [q, layer["q_norm"], qn], rows(H))
            plan.op("rmsnorm", (hd, eps, 0, Hkv), [k, layer["k_norm"], kn], rows(Hkv))
        rope = cfg.layer_rope(l)
        # each sequence's RoPE and new cache rows at its own position, then its attention
        parts = [(seq, *(seq.rows(b, n) for b, n in ((v, kv_dim), (qn, q_dim), (kn, kv_dim), (att, q_dim))))
                 for seq in seqs]
        for seq, sv, sqn, skn, _ in parts:
            table = seq.cache.rope_tables[rope if rope != "none" else "global"]
            plan.rope_store(sqn, skn, sv, table, seq.cache.k[l], seq.cache.v[l], H, Hkv, hd,
                            rd if rope != "none" else 0, kv_type=seq.cache.kv_type, **seq.own)
        for seq, _, sqn, _, satt in parts:
            plan.attention(sqn, seq.cache.k[l], seq.cache.v[l], satt, cfg, seq.cache.n_ctx, seq.tokens or T,
                           attn_scale, cfg.layer_window(l), kv_type=seq.cache.kv_type, **seq.own)
        project(layer["wo"], att, layer.get("attn_post_norm"))

        # feed-forward: x + W_down . (act(W_gate h) * W_up h),  h = RMSNorm(x)
        if "gate" in fuses:
            plan.matmul_gate(layer["w_gate"], layer["w_up"], h, gate, up, gate_op, norm=prenorm(layer["ffn_norm"]))
        else:
            prenorm(layer["ffn_norm"], fold=False)
            plan.matmul(layer["w_gate"], h, gate)
            plan.matmul(layer["w_up"], h, up)
            plan.op(gate_op, (F,), [gate, up], per_token(F))
        project(layer["w_down"], gate, layer.get("ffn_post_norm"))

    plan.op("rmsnorm", (D, eps, 1, 1), [x, g.norm, h], lambda T, first: row_groups(T - first))
    plan.matmul(g.output, h, logits, from_first=True)
    scale(logits, V, cfg.logit_scale, from_first=1)
    return ids, logits
