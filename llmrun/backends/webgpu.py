"""The WebGPU backend: WGSL kernels (kernels/wgsl/) run by wgpu, on Metal on macOS and on
Vulkan elsewhere (here, Mesa's software Vulkan device, lavapipe).

Weights go to the device once, as they lie in the .llmr file (the blocks and layouts the CPU
kernels read), split into buffers no larger than the device's storage-binding limit. The graph
and the KV cache are llmrun/backends/gpu.py's, shared with the CUDA backend; here, a step's plan runs as
one command buffer.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import LlmrunError
from ..format import Tensor
from .gpu import GROUP, X16_TYPES, Matrix, device_bytes, groups

ROWS_PER_WORKGROUP = 8  # matmul.wgsl: a workgroup's rows (ROWS)...
TOKENS_PER_WORKGROUP = 8  # ...and tokens (its TOKENS)
GEMM_TILE = 64  # gemm.wgsl: a workgroup's rows and tokens (its TILE)
GEMM_FROM = 16  # steps of more tokens than this run gemm.wgsl, fewer the matvec (as CUDA's)
ATTENTION_TOKENS = 16  # tokens per attention dispatch (fewer if [16, heads, ctx] scores outgrow a binding)
MAX_HEAD_DIM = 256  # attention.wgsl: its query in workgroup memory, read four dimensions at a time


class View:
    """Bytes [offset, offset + size) of a buffer, bound with that offset: one context's rows of a
    batch's activations, or its step state."""

    def __init__(self, buffer, offset: int, size: int):
        if offset + size > buffer.size:
            raise ValueError(f"{size} bytes at {offset} do not fit a buffer of {buffer.size}")
        self.buffer, self.offset, self.size = buffer, offset, size


def _binding(b) -> dict:
    return {"buffer": b.buffer, "offset": b.offset, "size": b.size} if isinstance(b, View) else \
        {"buffer": b, "offset": 0, "size": b.size}


def _wgpu():
    try:
        import wgpu
    except ImportError:
        raise LlmrunError("the webgpu backend needs wgpu: pip install 'llmrun[webgpu]'") from None
    return wgpu


@lru_cache(maxsize=None)
def wgsl(name: str) -> str:
    """The source of kernels/wgsl/<name>.wgsl: installed beside the llmrun package as llmrun/wgsl/, or read
    from the source tree in an editable install."""
    package = Path(__file__).parent.parent  # llmrun/
    for folder in (package / "wgsl", package.parent / "kernels" / "wgsl"):
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


class Device:
    """One wgpu device with the adapter's own limits, and the compiled kernels."""

    kv_types = ("f32", "f16")  # the KV cache's element types (kernels/wgsl/kv_<type>.wgsl)

    def __init__(self):
        wgpu = _wgpu()
        self.wgpu = wgpu
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None:
            raise LlmrunError("no WebGPU adapter found (on Linux: install a Vulkan driver, e.g. mesa-vulkan-drivers)")
        self.adapter = adapter
        self.max_binding = adapter.limits["max-storage-buffer-binding-size"]
        # where a binding may start: a batch's per-context rows and step states must fall there
        self.storage_align = adapter.limits["min-storage-buffer-offset-alignment"]
        self.step_stride = max(16, adapter.limits["min-uniform-buffer-offset-alignment"])
        self.device = adapter.request_device_sync(
            required_limits={"max-storage-buffer-binding-size": self.max_binding,
                             "max-buffer-size": adapter.limits["max-buffer-size"]})
        self._pipelines: dict[tuple, object] = {}
        self.OutOfMemory = wgpu.GPUError

    def pipeline(self, kernel: str, weight_type: str | None = None, kv_type: str | None = None):
        """kernels/wgsl/<kernel>.wgsl behind step.wgsl and, for kernels that read weights, the
        weight type's stub (matmul_<type>.wgsl, after x16.wgsl for the x16 types), for those
        that read or write the KV cache its element type's (kv_<type>.wgsl), for the two
        products their parameters and bindings (products.wgsl)."""
        key = (kernel, weight_type, kv_type)
        if key not in self._pipelines:
            stubs = ["x16"] * (weight_type in X16_TYPES) + [f"matmul_{weight_type}"] * bool(weight_type) + \
                [f"kv_{kv_type}"] * bool(kv_type) + ["products"] * (kernel in ("matmul", "gemm"))
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

    def write(self, buffer, data: np.ndarray) -> None:
        self.device.queue.write_buffer(buffer, 0, data)

    def read(self, buffer, nbytes: int):
        return self.device.queue.read_buffer(buffer, 0, nbytes)

    def step_buffer(self, count: int = 1):
        """Step state for `count` steps (a batch's own and each context's), step_stride apart."""
        u = self.wgpu.BufferUsage
        return self.device.create_buffer(size=count * self.step_stride, usage=u.UNIFORM | u.COPY_DST)

    def view(self, buffer, offset: int, nbytes: int) -> View:
        return View(buffer, offset, nbytes)

    def batches(self, cfg) -> bool:
        """Whether several contexts' decode steps can run as one (gpu.DeviceBatch): each one's
        rows of q, k and v must start where a binding may."""
        return all(n * 4 % self.storage_align == 0 for n in (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim))

    def plan(self, step) -> "Plan":
        return Plan(self, step)

    def bind(self, pipeline, *buffers):
        return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=[
            {"binding": i, "resource": _binding(b)} for i, b in enumerate(buffers)])

    def upload(self, t: Tensor) -> Matrix:
        """A weight tensor's bytes as the kernels read them (gpu.device_bytes: as they are in the
        file, or re-laid into x16), in buffers of whole 16-row groups within the binding limit."""
        rows, k = t.shape
        data = device_bytes(t, "WebGPU")
        row_bytes = data.size // rows
        step = max(GROUP, self.max_binding // row_bytes // GROUP * GROUP)
        parts = [(self.buffer(data[r0 * row_bytes:min(rows, r0 + step) * row_bytes]), r0, min(rows, r0 + step) - r0)
                 for r0 in range(0, rows, step)]
        return Matrix(t.type.name, rows, k, parts)

    def matmul(self, m: Matrix, x: np.ndarray) -> np.ndarray:
        """x float32 [T, K] @ m.T -> float32 [T, rows], read back (for tests and one-off use:
        the graph keeps everything on the device)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, m.k)
        T = x.shape[0]
        out = self.zeros(T * m.rows * 4)
        plan = Plan(self, self.uniform(0, T, 0))
        plan.matmul(m, self.buffer(x), out)
        plan.run(T)
        return np.frombuffer(self.device.queue.read_buffer(out), dtype=np.float32).reshape(T, m.rows).copy()


class Plan:
    """A step's dispatches, built once (pipelines, parameters, bind groups), recorded into a
    command buffer per step, in one compute pass: each entry's workgroup count is a function of
    the step's tokens T (and of `first`, for the output rows). Fused beyond gpu.py's ops: the
    residual add in the o and down products' epilogue (matmul(..., accumulate=True))."""

    fuses = frozenset({"residual"})

    def __init__(self, dev: Device, step):
        self.dev, self.step = dev, step
        self.entries = []  # (pipeline, [buffers after step], groups(T, first) -> (x, y), step)
        self._binds = None  # bind groups, made on the first run
        self._scores = None  # the attention's scratch, shared by every layer

    def op(self, kernel: str, params: tuple, buffers: list, groups, weight_type: str | None = None, step=None,
           kv_type: str | None = None) -> None:
        """A dispatch; its kernel reads the plan's step state, or `step` (a context's in a batch)."""
        self.entries.append((self.dev.pipeline(kernel, weight_type, kv_type), [self.dev.uniform(*params), *buffers],
                             groups, step or self.step))

    def matmul(self, m: Matrix, x, out, from_first: bool = False, accumulate: bool = False) -> None:
        """out = x m^T, or out += it (accumulate: the residual add). Both kernels are planned; a
        step runs the matvec (matmul.wgsl) up to GEMM_FROM tokens, the tiled GEMM beyond."""
        def grid(rows: int, tile_rows: int, tile_tokens: int, gemm: bool):
            def workgroups(T, first):
                tokens = T - first * from_first
                return (-(-rows // tile_rows), -(-tokens // tile_tokens)) if (tokens > GEMM_FROM) == gemm else (0, 0)
            return workgroups
        for w, row0, rows in m.parts:
            params = (m.k, rows, row0, m.rows, int(from_first), int(accumulate))
            self.op("matmul", params, [w, x, out], grid(rows, ROWS_PER_WORKGROUP, TOKENS_PER_WORKGROUP, False), m.type)
            self.op("gemm", params, [w, x, out], grid(rows, GEMM_TILE, GEMM_TILE, True), m.type)

    # rope_store and attention take `step` and `tokens` for one context of a batch (gpu.Sequence):
    # its step state and its one token, whatever the batch's T

    def rope_store(self, q, k, v, table, kc, vc, heads: int, kv_heads: int, hd: int, rd: int, step=None,
                   tokens: int | None = None, kv_type: str = "f32") -> None:
        """RoPE on q (in place) and k (into the key cache) over the first rd of each head (0:
        none), and v into the value cache (of kv_type elements), at the step's position: one
        dispatch, an invocation per turned pair of q and per two elements of k and of v."""
        n = heads * (rd // 2) + kv_heads * hd
        self.op("rope_store", (heads, kv_heads, hd, rd), [q, k, v, table, kc, vc],
                lambda T, first: groups((tokens or T) * n), step=step, kv_type=kv_type)

    def attention(self, q, kc, vc, out, cfg, n_ctx: int, capacity: int, scale: float, window: int, step=None,
                  tokens: int | None = None, kv_type: str = "f32") -> None:
        """attention.wgsl over chunks of the step's tokens, whose scores [chunk, H, C] fit one
        binding; scores q.k * scale, each token seeing its last `window` positions (0: all)."""
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        if hd > MAX_HEAD_DIM or hd % 4:
            raise LlmrunError(f"the WebGPU attention kernel takes heads of up to {MAX_HEAD_DIM}, a multiple of 4, "
                              f"not {hd}; use --backend cpu")
        chunk = max(1, min(capacity, ATTENTION_TOKENS, self.dev.max_binding // (H * n_ctx * 4)))
        if self._scores is None or self._scores.size < chunk * H * n_ctx * 4:  # a batch's contexts differ
            self._scores = self.dev.zeros(chunk * H * n_ctx * 4)
        for t0 in range(0, capacity, chunk):
            self.op("attention", (H, Hkv, hd, n_ctx, t0, float(scale), window), [q, kc, vc, out, self._scores],
                    lambda T, first, t0=t0: (H, min(chunk, (tokens or T) - t0)) if (tokens or T) > t0 else (0, 0),
                    step=step, kv_type=kv_type)

    def run(self, T: int, n_past: int = 0, first: int = 0) -> int:
        """Record and submit every entry for a step of T tokens, in one compute pass (WebGPU
        orders each dispatch's writes before the next one's reads within a pass); returns the
        dispatches. n_past is the step state's, which the kernels read on the device."""
        encoder = self.dev.device.create_command_encoder()
        if self._binds is None:
            self._binds = [self.dev.bind(pipeline, step, *buffers) for pipeline, buffers, _, step in self.entries]
        compute, dispatches = encoder.begin_compute_pass(), 0
        for (pipeline, _, groups, _), bind in zip(self.entries, self._binds):
            x, y = groups(T, first)
            if x and y:
                compute.set_pipeline(pipeline)
                compute.set_bind_group(0, bind)
                compute.dispatch_workgroups(x, y, 1)
                dispatches += 1
        compute.end()
        self.dev.device.queue.submit([encoder.finish()])
        return dispatches
