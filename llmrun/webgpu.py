"""The WebGPU backend: WGSL kernels (kernels/wgsl/) run by wgpu, on Metal on macOS and on
Vulkan elsewhere (here, Mesa's software Vulkan device, lavapipe).

Weights go to the device once, as they lie in the .llmr file (the blocks and layouts the CPU
kernels read), split into buffers no larger than the device's storage-binding limit. The KV
cache and every intermediate stay on the device: a step writes its token ids and 12 bytes of
step state, runs the whole graph as one command buffer, and reads back only the logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ContextError, LlmrunError
from .format import Tensor
from .quant.layout import X16

TYPES = ("f16", "q8_0", "q4_0", "q4_1")  # the weight types with a WGSL matmul
X16_TYPES = ("q8_0", "q4_0", "q4_1")  # ... read in the x16 layout
ROWS_PER_WORKGROUP = 16  # matmul.wgsl: a workgroup's rows...
TOKENS_PER_WORKGROUP = 8  # ...and tokens (its TOKENS)
ATTENTION_TOKENS = 16  # tokens per attention dispatch (fewer if [16, heads, ctx] scores outgrow a binding)
WORKGROUP = 64  # threads of the elementwise kernels' workgroups
MAX_GROUPS = 65535  # workgroups per dimension, the WebGPU minimum every adapter allows


def _wgpu():
    try:
        import wgpu
    except ImportError:
        raise LlmrunError("the webgpu backend needs wgpu: pip install 'llmrun[webgpu]'") from None
    return wgpu


@lru_cache(maxsize=None)
def wgsl(name: str) -> str:
    """The source of kernels/wgsl/<name>.wgsl: installed beside this module as wgsl/, or read
    from the source tree in an editable install."""
    for folder in (Path(__file__).parent / "wgsl", Path(__file__).parent.parent / "kernels" / "wgsl"):
        if (folder / f"{name}.wgsl").exists():
            return (folder / f"{name}.wgsl").read_text()
    raise FileNotFoundError(f"WGSL kernel {name}.wgsl is not installed")


def adapters() -> list[dict]:
    """What `llmrun info --backends` shows: every adapter wgpu finds."""
    wgpu = _wgpu()
    out = []
    for a in wgpu.gpu.enumerate_adapters_sync():
        info = a.info
        out.append({"name": info.get("device") or info.get("description"), "backend": info.get("backend_type"),
                    "type": info.get("adapter_type"), "f16": "shader-f16" in a.features,
                    "subgroups": "subgroup" in a.features,
                    "max_binding": a.limits["max-storage-buffer-binding-size"]})
    return out


@dataclass
class Matrix:
    """A weight matrix on the device: its type, shape and buffers of whole 16-row groups
    [(buffer, first row, rows)]."""
    type: str
    rows: int
    k: int
    parts: list


class Device:
    """One wgpu device with the adapter's own limits, and the compiled kernels."""

    def __init__(self):
        wgpu = _wgpu()
        self.wgpu = wgpu
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None:
            raise LlmrunError("no WebGPU adapter found (on Linux: install a Vulkan driver, e.g. mesa-vulkan-drivers)")
        self.adapter = adapter
        self.max_binding = adapter.limits["max-storage-buffer-binding-size"]
        self.device = adapter.request_device_sync(
            required_limits={"max-storage-buffer-binding-size": self.max_binding,
                             "max-buffer-size": adapter.limits["max-buffer-size"]})
        self._pipelines: dict[tuple, object] = {}

    def pipeline(self, kernel: str, weight_type: str | None = None):
        """kernels/wgsl/<kernel>.wgsl behind step.wgsl and, for kernels that read weights, the
        weight type's stub (matmul_<type>.wgsl, after x16.wgsl for the x16 types)."""
        key = (kernel, weight_type)
        if key not in self._pipelines:
            stubs = ["x16"] * (weight_type in X16_TYPES) + [f"matmul_{weight_type}"] * bool(weight_type)
            code = "".join(wgsl(name) for name in ["step", *stubs, kernel])
            module = self.device.create_shader_module(code=code)
            self._pipelines[key] = self.device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": "main"})
        return self._pipelines[key]

    def buffer(self, data, usage=None):
        usage = usage if usage is not None else self.wgpu.BufferUsage.STORAGE
        return self.device.create_buffer_with_data(data=memoryview(np.ascontiguousarray(data)).cast("B"), usage=usage)

    def zeros(self, nbytes: int, usage=None):
        u = self.wgpu.BufferUsage
        return self.device.create_buffer(size=max(4, nbytes), usage=usage if usage is not None else
                                         u.STORAGE | u.COPY_SRC | u.COPY_DST)

    def uniform(self, *fields) -> object:
        """A uniform buffer of u32 / f32 fields, padded to 16 bytes."""
        raw = np.zeros(-(-len(fields) // 4) * 4, np.uint32)
        for i, v in enumerate(fields):
            raw[i] = np.float32(v).view(np.uint32) if isinstance(v, float) else v
        u = self.wgpu.BufferUsage
        return self.buffer(raw, u.UNIFORM | u.COPY_DST)

    def bind(self, pipeline, *buffers):
        return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=[
            {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}} for i, b in enumerate(buffers)])

    def upload(self, t: Tensor) -> Matrix:
        """A weight tensor's bytes as they are in the file, in buffers of whole 16-row groups
        within the binding limit."""
        rows, k = t.shape
        if t.type.name not in TYPES:
            raise LlmrunError(f"{t.name}: no WebGPU kernels for {t.type.name} weights (have: {', '.join(TYPES)}); "
                              "convert the model to one of those, or use --backend cpu")
        if t.type.name in X16_TYPES and t.layout != X16:
            raise LlmrunError(f"{t.name}: the WebGPU kernels read {t.type.name} in the x16 layout only")
        row_bytes = t.data.size // rows
        step = max(ROWS_PER_WORKGROUP, self.max_binding // row_bytes // ROWS_PER_WORKGROUP * ROWS_PER_WORKGROUP)
        parts = [(self.buffer(t.data[r0 * row_bytes:min(rows, r0 + step) * row_bytes]), r0, min(rows, r0 + step) - r0)
                 for r0 in range(0, rows, step)]
        return Matrix(t.type.name, rows, k, parts)

    def matmul(self, m: Matrix, x: np.ndarray) -> np.ndarray:
        """x float32 [T, K] @ m.T -> float32 [T, rows], read back (for tests and one-off use:
        the graph keeps everything on the device)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, m.k)
        T = x.shape[0]
        out = self.zeros(T * m.rows * 4)
        plan = Plan(self)
        plan.matmul(m, self.buffer(x), out)
        plan.run(self.uniform(0, T, 0), T)
        return np.frombuffer(self.device.queue.read_buffer(out), dtype=np.float32).reshape(T, m.rows).copy()


def _groups(n: int) -> tuple[int, int]:
    """Workgroups (x, y) covering n: the kernels index x + y * MAX_GROUPS * WORKGROUP."""
    groups = -(-n // WORKGROUP)
    return min(groups, MAX_GROUPS), -(-groups // MAX_GROUPS)


class Plan:
    """A step's dispatches, built once (pipelines, parameters, bind groups), recorded into a
    command buffer per step: each entry's workgroup count is a function of the step's tokens T
    (and of `first`, for the output rows)."""

    def __init__(self, dev: Device):
        self.dev = dev
        self.entries = []  # (pipeline, [buffers after step], groups(T, first) -> (x, y)) or ("copy", fn)
        self._binds, self._bound_step = None, None  # bind groups, made on the first run

    def op(self, kernel: str, params: tuple, buffers: list, groups, weight_type: str | None = None) -> None:
        self.entries.append((self.dev.pipeline(kernel, weight_type), [self.dev.uniform(*params), *buffers], groups))

    def copy(self, fn) -> None:
        """fn(encoder, n_past, T) records buffer copies (the KV cache's new rows)."""
        self.entries.append(("copy", fn))

    def matmul(self, m: Matrix, x, out, from_first: bool = False) -> None:
        for w, row0, rows in m.parts:
            self.op("matmul", (m.k, rows, row0, m.rows, int(from_first)), [w, x, out],
                    lambda T, first, rows=rows: (-(-rows // ROWS_PER_WORKGROUP),
                                                 -(-(T - first * from_first) // TOKENS_PER_WORKGROUP)),
                    m.type)

    def run(self, step, T: int, n_past: int = 0, first: int = 0) -> int:
        """Record and submit every entry for a step of T tokens; returns the dispatches. The
        dispatches between two copies share one compute pass (WebGPU orders and makes visible
        each dispatch's writes to the next within a pass)."""
        encoder = self.dev.device.create_command_encoder()
        dispatches, compute = 0, None
        if self._bound_step is not step:
            self._binds = [None if e[0] == "copy" else self.dev.bind(e[0], step, *e[1]) for e in self.entries]
            self._bound_step = step
        for entry, bind in zip(self.entries, self._binds):
            if entry[0] == "copy":
                if compute is not None:
                    compute.end()
                    compute = None
                entry[1](encoder, n_past, T)
                continue
            pipeline, _, groups = entry
            x, y = groups(T, first)
            if x and y:
                compute = compute or encoder.begin_compute_pass()
                compute.set_pipeline(pipeline)
                compute.set_bind_group(0, bind)
                compute.dispatch_workgroups(x, y, 1)
                dispatches += 1
        if compute is not None:
            compute.end()
        self.dev.device.queue.submit([encoder.finish()])
        return dispatches


class Graph:
    """The model's weights on the device, uploaded once; `new_cache(n_ctx)` makes the device
    state of one context (KV cache, activations), whose run() does a step, mirroring
    llmrun.model.forward() op for op (same order; f32 activations where the CPU quantises them
    to 16 bits per block, so logits agree to about 1e-4 of their range, not bit for bit)."""

    def __init__(self, dev: Device, cfg, w, inv_freq: np.ndarray):
        self.dev, self.cfg, self.inv_freq = dev, cfg, inv_freq

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
        except dev.wgpu.GPUError as e:
            raise ContextError(f"the GPU cannot hold a KV cache of {n_ctx} positions ({e}): use a smaller "
                               "context (--ctx)") from None
        # cos and sin of every position, as llmr_rope_table makes them: f32 angle, f64 cos/sin
        angle = np.arange(n_ctx, dtype=np.float32)[:, None] * graph.inv_freq.astype(np.float32)[None, :]
        table = np.stack([np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))], axis=-1)
        self.rope_table = dev.buffer(table.astype(np.float32))  # [C, hd/2, 2]
        self.step = dev.uniform(0, 0, 0)
        self.capacity, self.plan = 0, None
        self.dispatches = 0  # in the last step
        self.bytes_up = self.bytes_down = 0  # host -> device, device -> host, in the last step

    def _build(self, capacity: int) -> None:
        """Activations for steps of up to `capacity` tokens, and the plan that runs on them."""
        g, dev, cfg = self.graph, self.dev, self.graph.cfg
        D, H, Hkv, hd, F, V = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
        T, q_dim, kv_dim = capacity, H * hd, self.kv_dim
        u = dev.wgpu.BufferUsage
        self.ids = dev.zeros(T * 4, u.STORAGE | u.COPY_DST)  # [T]
        x, h, tmp = dev.zeros(T * D * 4), dev.zeros(T * D * 4), dev.zeros(T * D * 4)  # [T, D]
        q, att = dev.zeros(T * q_dim * 4), dev.zeros(T * q_dim * 4)  # [T, H, hd]
        k, v = dev.zeros(T * kv_dim * 4), dev.zeros(T * kv_dim * 4)  # [T, Hkv, hd]
        gate, up = dev.zeros(T * F * 4), dev.zeros(T * F * 4)  # [T, F]
        chunk = max(1, min(T, ATTENTION_TOKENS, dev.max_binding // (H * self.n_ctx * 4)))
        scores = dev.zeros(chunk * H * self.n_ctx * 4)  # [chunk, H, C]
        self.logits = dev.zeros(T * V * 4)  # [T - first, V]

        plan = Plan(dev)
        per_token = lambda n: (lambda T, first: _groups(T * n))  # noqa: E731 (elementwise over T rows of n)
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
            plan.copy(lambda enc, n_past, T, kc=kc, vc=vc, row=kv_dim * 4: (
                enc.copy_buffer_to_buffer(k, 0, kc, n_past * row, T * row),
                enc.copy_buffer_to_buffer(v, 0, vc, n_past * row, T * row)))
            for t0 in range(0, T, chunk):
                plan.op("attention", (H, Hkv, hd, self.n_ctx, t0, float(1 / np.sqrt(hd))), [q, kc, vc, att, scores],
                        lambda T, first, t0=t0: (H, min(chunk, T - t0)) if T > t0 else (0, 0))
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
            except self.dev.wgpu.GPUError as e:  # e.g. logits [T, V] past the largest buffer
                raise ContextError(f"the GPU cannot hold the activations of a {T}-token step ({e}): give fewer "
                                   "tokens at a time") from None
        queue = self.dev.device.queue
        ids = np.ascontiguousarray(tokens, dtype=np.uint32)
        queue.write_buffer(self.ids, 0, ids)
        queue.write_buffer(self.step, 0, np.array([n_past, T, first, 0], np.uint32))
        self.dispatches = self.plan.run(self.step, T, n_past, first)
        logits = np.frombuffer(queue.read_buffer(self.logits, 0, (T - first) * V * 4), dtype=np.float32)
        self.bytes_up, self.bytes_down = ids.nbytes + 12, logits.nbytes
        return logits.reshape(T - first, V).copy()
