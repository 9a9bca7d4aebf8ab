"""The WebGPU backend: WGSL kernels (kernels/wgsl/) run by wgpu, on Metal on macOS and on
Vulkan elsewhere (here, Mesa's software Vulkan device, lavapipe).

Weights go to the device once, as they lie in the .llmr file (the blocks and layouts the CPU
kernels read), split into buffers no larger than the device's storage-binding limit. This is
the first part of the backend: the matmul kernels and the device; the forward pass follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import LlmrunError
from .format import Tensor
from .quant.layout import X16

TYPES = ("f16", "q8_0", "q4_0", "q4_1")  # the weight types with a WGSL matmul
ROWS_PER_WORKGROUP = 16  # matmul.wgsl: a workgroup's rows...
TOKENS_PER_WORKGROUP = 8  # ...and tokens (its TOKENS)
PARAMS_BYTES = 32  # matmul.wgsl's Params (5 u32), padded to uniform alignment


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
        self._pipelines: dict[str, object] = {}

    def pipeline(self, weight_type: str):
        if weight_type not in self._pipelines:
            if weight_type not in TYPES:
                raise LlmrunError(f"no WebGPU matmul for {weight_type} weights (have: {', '.join(TYPES)})")
            module = self.device.create_shader_module(code=wgsl(f"matmul_{weight_type}") + wgsl("matmul"))
            self._pipelines[weight_type] = self.device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": "main"})
        return self._pipelines[weight_type]

    def buffer(self, data, usage=None):
        usage = usage or self.wgpu.BufferUsage.STORAGE
        return self.device.create_buffer_with_data(data=memoryview(np.ascontiguousarray(data)).cast("B"), usage=usage)

    def upload(self, t: Tensor) -> Matrix:
        """A weight tensor's bytes as they are in the file, in buffers of whole 16-row groups
        within the binding limit."""
        rows, k = t.shape
        if t.type.name in ("q8_0", "q4_0", "q4_1") and t.layout != X16:
            raise LlmrunError(f"{t.name}: the WebGPU kernels read {t.type.name} in the x16 layout only")
        row_bytes = t.data.size // rows
        step = max(ROWS_PER_WORKGROUP, self.max_binding // row_bytes // ROWS_PER_WORKGROUP * ROWS_PER_WORKGROUP)
        parts = [(self.buffer(t.data[r0 * row_bytes:min(rows, r0 + step) * row_bytes]), r0, min(rows, r0 + step) - r0)
                 for r0 in range(0, rows, step)]
        return Matrix(t.type.name, rows, k, parts)

    def matmul(self, m: Matrix, x: np.ndarray) -> np.ndarray:
        """x float32 [T, K] @ m.T -> float32 [T, rows], one dispatch per weight buffer, read back
        (for tests and one-off use: the forward pass keeps everything on the device)."""
        wgpu = self.wgpu
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, m.k)
        T = x.shape[0]
        x_buf = self.buffer(x)
        out = self.device.create_buffer(size=T * m.rows * 4, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
        pipeline = self.pipeline(m.type)
        encoder = self.device.create_command_encoder()
        for w_buf, row0, rows in m.parts:
            params = np.zeros(PARAMS_BYTES // 4, np.uint32)
            params[:5] = (m.k, rows, T, row0, m.rows)
            bind = self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=[
                {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                for i, b in enumerate((w_buf, x_buf, out, self.buffer(params, wgpu.BufferUsage.UNIFORM)))])
            compute = encoder.begin_compute_pass()
            compute.set_pipeline(pipeline)
            compute.set_bind_group(0, bind)
            compute.dispatch_workgroups(-(-rows // ROWS_PER_WORKGROUP), -(-T // TOKENS_PER_WORKGROUP), 1)
            compute.end()
        self.device.queue.submit([encoder.finish()])
        return np.frombuffer(self.device.queue.read_buffer(out), dtype=np.float32).reshape(T, m.rows).copy()
