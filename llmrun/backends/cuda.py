"""The CUDA backend: the kernels of kernels/cuda/, built by nvcc into llmrun/cuda.fatbin when
the package is built where nvcc is, loaded at run time through the CUDA driver API
(libcuda.so.1, which the NVIDIA driver installs) by ctypes: no CUDA toolkit, no PyTorch.

Weights go to the device once, from the mapped file through a pinned staging buffer, as they
lie in the .llmr file; the graph and the KV cache are llmrun/backends/gpu.py's. Every launch's arguments
are fixed when a plan is built (pointers and sizes; what changes per step is in the step
buffer), so a decode step, whose grids never change, is captured once as a CUDA graph and
replayed: one driver call per token instead of one per kernel.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import LlmrunError
from ..format import Tensor
from .gpu import TYPES, WORKGROUP, Matrix, device_bytes, groups, row_groups

MATMUL_ROWS, MATMUL_TOKENS, MATMUL_THREADS = 16, 8, 256  # kernels/cuda/matmul.cuh: a block's tile, 8 warps
GEMM_ROWS, GEMM_TOKENS, GEMM_THREADS = 64, 64, 128  # kernels/cuda/gemm.cuh
# matmul3's (q type, k and v type): every type with itself, q4_0 and q4_1 with q8_0 (quant/policy.py);
# other pairs (a k-quant mix's) run as three matvecs
MATMUL3_TYPES = {(t, t) for t in TYPES} | {("q4_0", "q8_0"), ("q4_1", "q8_0")}
GEMM_FROM = 16  # steps of more tokens than this multiply on tensor cores (gemm), fewer read weights once (matmul)
ATTENTION_THREADS, MAX_HEAD_DIM = 256, 256  # kernels/cuda/attention.cuh
MIN_CAPABILITY = (7, 5)  # the oldest GPUs the fatbin is built for (Turing)
STAGING = 32 << 20  # bytes of pinned host memory the weights go through


class CudaError(LlmrunError):
    """A CUDA driver call failed; `code` is its CUresult."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class DeviceMemoryError(CudaError):
    """The device is out of memory (CUDA_ERROR_OUT_OF_MEMORY)."""


OUT_OF_MEMORY, NO_DEVICE, INSUFFICIENT_DRIVER, NO_BINARY_FOR_GPU, UNSUPPORTED_PTX = 2, 100, 35, 209, 222
_ADVICE = {NO_DEVICE: "no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
           INSUFFICIENT_DRIVER: "the NVIDIA driver is older than the CUDA 13 kernels need: update the driver",
           UNSUPPORTED_PTX: "the NVIDIA driver is older than the CUDA 13 kernels need: update the driver",
           NO_BINARY_FOR_GPU: "the kernels were not built for this GPU (built for sm_75 .. sm_90)"}
CAPTURE_THREAD_LOCAL, STREAM_NON_BLOCKING, CAPABILITY_MAJOR, CAPABILITY_MINOR = 1, 1, 75, 76


@lru_cache(maxsize=None)
def fatbin() -> bytes:
    """The kernels' module, installed beside llmrun's compiled extension."""
    from .. import _kernels
    for folder in (Path(_kernels.__file__).parent, Path(__file__).parent.parent):
        if (folder / "cuda.fatbin").exists():
            return (folder / "cuda.fatbin").read_bytes()
    raise LlmrunError("this llmrun was built without its CUDA kernels (nvcc was not found when it was built): "
                      "install the CUDA toolkit and reinstall llmrun, or use --backend cpu")


class Driver:
    """The CUDA driver API calls the backend makes, through ctypes. Each raises CudaError with
    the driver's error name; tests put an emulator with the same methods in its place."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            raise LlmrunError("the cuda backend needs the NVIDIA driver (libcuda.so.1 was not found); "
                              "use --backend cpu or webgpu") from None
        self._call("cuInit", ctypes.c_uint(0))

    def _call(self, fn: str, *args) -> None:
        code = getattr(self.lib, fn)(*args)
        if code:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(code, ctypes.byref(text))
            name = (text.value or b"CUDA error").decode()
            what = f"{fn}: {name}" + (f": {_ADVICE[code]}" if code in _ADVICE else "")
            raise (DeviceMemoryError if code == OUT_OF_MEMORY else CudaError)(what, code)

    def _out(self, fn: str, ctype, *args):
        value = ctype()
        self._call(fn, ctypes.byref(value), *args)
        return value.value

    # devices and contexts
    def device_count(self) -> int:
        return self._out("cuDeviceGetCount", ctypes.c_int)

    def device(self, index: int) -> int:
        return self._out("cuDeviceGet", ctypes.c_int, ctypes.c_int(index))

    def name(self, device: int) -> str:
        buf = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", buf, ctypes.c_int(256), ctypes.c_int(device))
        return buf.value.decode(errors="replace")

    def total_memory(self, device: int) -> int:
        return self._out("cuDeviceTotalMem_v2", ctypes.c_size_t, ctypes.c_int(device))

    def capability(self, device: int) -> tuple[int, int]:
        return tuple(self._out("cuDeviceGetAttribute", ctypes.c_int, ctypes.c_int(a), ctypes.c_int(device))
                     for a in (CAPABILITY_MAJOR, CAPABILITY_MINOR))

    def context(self, device: int) -> int:
        """The device's primary context (the one the runtime API would use)."""
        return self._out("cuDevicePrimaryCtxRetain", ctypes.c_void_p, ctypes.c_int(device))

    def use(self, context: int) -> None:
        """Make the context current on the calling thread (a server steps from its own)."""
        self._call("cuCtxSetCurrent", ctypes.c_void_p(context))

    def stream(self) -> int:
        return self._out("cuStreamCreate", ctypes.c_void_p, ctypes.c_uint(STREAM_NON_BLOCKING))

    # modules and launches
    def load_module(self, image: bytes) -> int:
        return self._out("cuModuleLoadData", ctypes.c_void_p, ctypes.c_char_p(image))

    def function(self, module: int, name: str) -> int:
        return self._out("cuModuleGetFunction", ctypes.c_void_p, ctypes.c_void_p(module), name.encode())

    def launch(self, launch: "Launch", grid: tuple[int, int], stream: int) -> None:
        self._call("cuLaunchKernel", ctypes.c_void_p(launch.function), ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]),
                   ctypes.c_uint(1), ctypes.c_uint(launch.threads), ctypes.c_uint(1), ctypes.c_uint(1), ctypes.c_uint(0),
                   ctypes.c_void_p(stream), launch.params, None)

    def begin_capture(self, stream: int) -> None:
        self._call("cuStreamBeginCapture_v2", ctypes.c_void_p(stream), ctypes.c_int(CAPTURE_THREAD_LOCAL))

    def end_capture(self, stream: int) -> int:
        """The launches since begin_capture, as an executable graph."""
        graph = ctypes.c_void_p()
        self._call("cuStreamEndCapture", ctypes.c_void_p(stream), ctypes.byref(graph))  # the graph comes second
        graph = graph.value
        try:
            return self._out("cuGraphInstantiateWithFlags", ctypes.c_void_p, ctypes.c_void_p(graph),
                             ctypes.c_ulonglong(0))
        finally:
            self._call("cuGraphDestroy", ctypes.c_void_p(graph))

    def launch_graph(self, graph: int, stream: int) -> None:
        self._call("cuGraphLaunch", ctypes.c_void_p(graph), ctypes.c_void_p(stream))

    def free_graph(self, graph: int) -> None:
        self._call("cuGraphExecDestroy", ctypes.c_void_p(graph))

    # memory
    def alloc(self, nbytes: int) -> int:
        return self._out("cuMemAlloc_v2", ctypes.c_uint64, ctypes.c_size_t(nbytes))

    def free(self, ptr: int) -> None:
        self._call("cuMemFree_v2", ctypes.c_uint64(ptr))

    def alloc_host(self, nbytes: int) -> int:
        """Pinned host memory: copies from it run at the bus's full speed."""
        return self._out("cuMemAllocHost_v2", ctypes.c_void_p, ctypes.c_size_t(nbytes))

    def zero(self, ptr: int, nbytes: int, stream: int) -> None:
        self._call("cuMemsetD8Async", ctypes.c_uint64(ptr), ctypes.c_ubyte(0), ctypes.c_size_t(nbytes),
                   ctypes.c_void_p(stream))

    def to_device(self, ptr: int, host: int, nbytes: int, stream: int) -> None:
        self._call("cuMemcpyHtoDAsync_v2", ctypes.c_uint64(ptr), ctypes.c_void_p(host), ctypes.c_size_t(nbytes),
                   ctypes.c_void_p(stream))

    def to_host(self, host: int, ptr: int, nbytes: int, stream: int) -> None:
        self._call("cuMemcpyDtoHAsync_v2", ctypes.c_void_p(host), ctypes.c_uint64(ptr), ctypes.c_size_t(nbytes),
                   ctypes.c_void_p(stream))

    def sync(self, stream: int) -> None:
        self._call("cuStreamSynchronize", ctypes.c_void_p(stream))


def devices() -> list[dict]:
    """What `llmrun info --backends` shows: every CUDA device the driver sees."""
    driver = Driver()
    out = []
    for i in range(driver.device_count()):
        d = driver.device(i)
        major, minor = driver.capability(d)
        out.append({"name": driver.name(d), "capability": f"{major}.{minor}", "memory": driver.total_memory(d)})
    return out


class Buffer:
    """Device memory, freed when the last reference goes."""

    def __init__(self, driver, nbytes: int):
        self.driver, self.nbytes = driver, max(4, nbytes)
        self.ptr = driver.alloc(self.nbytes)

    def __del__(self):
        try:
            self.driver.free(self.ptr)
        except Exception:  # the driver may be gone at interpreter exit
            pass


class View:
    """Bytes [offset, offset + nbytes) of a buffer, which it keeps alive: one sequence's rows of
    a batch's activations, or its step state."""

    def __init__(self, base: Buffer, offset: int, nbytes: int):
        if offset + nbytes > base.nbytes:
            raise ValueError(f"{nbytes} bytes at {offset} do not fit a buffer of {base.nbytes}")
        self.base, self.ptr, self.nbytes = base, base.ptr + offset, nbytes


class _Null:
    """The null pointer as a buffer argument (a fused matvec without its norm)."""
    ptr = 0
    nbytes = 0


NULL = _Null()


class Device:
    """The first CUDA device (CUDA_VISIBLE_DEVICES chooses which), its context, stream and the
    loaded kernels."""

    OutOfMemory = DeviceMemoryError
    kv_types = ("f32",)  # its rope_store and attention kernels keep f32 rows (f16: WebGPU's, not yet here)
    step_stride = 16  # bytes between the step states of a batch's buffer (gpu.DeviceBatch)

    def __init__(self, driver=None):
        self.driver = driver or Driver()
        if self.driver.device_count() == 0:
            raise LlmrunError("no CUDA GPU found (check nvidia-smi and CUDA_VISIBLE_DEVICES); use --backend cpu")
        self.handle = self.driver.device(0)
        self.name, self.capability = self.driver.name(self.handle), self.driver.capability(self.handle)
        if self.capability < MIN_CAPABILITY:
            raise LlmrunError(f"{self.name} has compute capability {'.'.join(map(str, self.capability))}; the CUDA "
                              "kernels need 7.5 or newer: use --backend cpu or webgpu")
        self.context = self.driver.context(self.handle)
        self.driver.use(self.context)
        self.module = self.driver.load_module(fatbin())
        self.stream = self.driver.stream()
        self._functions: dict[str, int] = {}
        self._staging = None

    def function(self, name: str) -> int:
        if name not in self._functions:
            self._functions[name] = self.driver.function(self.module, name)
        return self._functions[name]

    def zeros(self, nbytes: int) -> Buffer:
        self.driver.use(self.context)
        b = Buffer(self.driver, nbytes)
        self.driver.zero(b.ptr, b.nbytes, self.stream)
        return b

    def write(self, buffer: Buffer, data: np.ndarray, offset: int = 0) -> None:
        data = np.ascontiguousarray(data)
        self.driver.use(self.context)
        if offset + data.nbytes > buffer.nbytes:
            raise ValueError(f"{data.nbytes} bytes at {offset} do not fit a buffer of {buffer.nbytes}")
        self.driver.to_device(buffer.ptr + offset, data.ctypes.data, data.nbytes, self.stream)
        self.driver.sync(self.stream)  # `data` may be freed when this returns

    def read(self, buffer: Buffer, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, np.uint8)
        self.driver.use(self.context)
        self.driver.to_host(out.ctypes.data, buffer.ptr, nbytes, self.stream)
        self.driver.sync(self.stream)
        return out

    def buffer(self, data: np.ndarray) -> Buffer:
        data = np.ascontiguousarray(data)
        self.driver.use(self.context)
        b = Buffer(self.driver, data.nbytes)
        self.write(b, data)
        return b

    def step_buffer(self, count: int = 1) -> Buffer:
        """Step state for `count` steps (a batch's own and each context's), step_stride apart."""
        return self.zeros(count * self.step_stride)

    def batches(self, cfg) -> bool:
        """Whether several contexts' decode steps can run as one (gpu.DeviceBatch): always here."""
        return True

    def view(self, buffer: Buffer, offset: int, nbytes: int) -> View:
        return View(buffer, offset, nbytes)

    def plan(self, step: Buffer) -> "Plan":
        return Plan(self, step)

    def upload(self, t: Tensor) -> Matrix:
        """A weight tensor's bytes as the kernels read them (gpu.device_bytes: as they are in the
        file, or re-laid into x16), in one buffer, through pinned memory."""
        rows, k = t.shape
        data = np.ascontiguousarray(device_bytes(t, "CUDA")).reshape(-1).view(np.uint8)
        self.driver.use(self.context)
        b = Buffer(self.driver, data.nbytes)
        if self._staging is None:
            self._staging = self.driver.alloc_host(STAGING)
        for start in range(0, data.nbytes, STAGING):
            n = min(STAGING, data.nbytes - start)
            ctypes.memmove(self._staging, data.ctypes.data + start, n)
            self.driver.to_device(b.ptr + start, self._staging, n, self.stream)
            self.driver.sync(self.stream)  # before the staging buffer is refilled
        return Matrix(t.type.name, rows, k, [(b, 0, rows)])

    def matmul(self, m: Matrix, x: np.ndarray) -> np.ndarray:
        """x float32 [T, K] @ m.T -> float32 [T, rows], read back (for tests and one-off use)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, m.k)
        T = x.shape[0]
        out, step = self.zeros(T * m.rows * 4), self.buffer(np.array([0, T, 0, 0], np.uint32))
        plan = Plan(self, step)
        plan.matmul(m, self.buffer(x), out)
        plan.run(T)
        return self.read(out, T * m.rows * 4).view(np.float32).reshape(T, m.rows).copy()


@dataclass
class Launch:
    """One kernel launch of a plan: its function, threads per block, arguments (ctypes values,
    in the order of the kernel's parameters: the step, the buffers, then the 32-bit unsigned or
    float parameters), the pointer array cuLaunchKernel takes, and its grid as a function of
    the step's tokens and `first`."""
    name: str
    function: int
    threads: int
    args: list
    params: object
    buffers: list  # kept alive with the launch
    grid: object


class Plan:
    """A step's launches, built once; run() launches them for a step of T tokens, or replays
    the CUDA graph captured at the first step of that shape (T, first) when T is replay_tokens
    (1: a decode step; a batch's plan: its sequences, whose grids never change either)."""

    def __init__(self, dev: Device, step: Buffer):
        self.dev, self.step = dev, step
        self.replay_tokens = 1
        self.launches: list[Launch] = []
        self.graphs: dict[tuple[int, int], tuple[int, int]] = {}  # (T, first) -> (graph, its launches)

    def __del__(self):
        for graph, _ in getattr(self, "graphs", {}).values():
            try:
                self.dev.driver.free_graph(graph)
            except Exception:
                pass

    def op(self, kernel: str, params: tuple, buffers: list, grid, weight_type: str | None = None,
           threads: int = WORKGROUP, step=None) -> None:
        """A launch; its kernel reads the plan's step state, or `step` (a sequence's in a batch)."""
        name = f"{kernel}_{weight_type}" if weight_type else kernel
        step = step or self.step
        args = [ctypes.c_uint64(step.ptr), *(ctypes.c_uint64(b.ptr) for b in buffers),
                *(ctypes.c_float(p) if isinstance(p, float) else ctypes.c_uint32(p) for p in params)]
        pointers = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
        self.launches.append(Launch(name, self.dev.function(name), threads, args, pointers, [step, *buffers], grid))

    # what gpu.py's plan may ask of this one beside the ops every backend has (WebGPU: none):
    # "residual": matmul(..., accumulate=True) adds the product to out (x = x + W a);
    # "qkv": matmul_qkv(); "gate": matmul_gate(); "rope_store": rope_store(); "norm": the
    # pre-norm given to matmul_qkv / matmul_gate (norm=(x, weight, eps)), folded into the matvec
    fuses = frozenset({"residual", "qkv", "gate", "norm"})

    @staticmethod
    def _grid(rows: int, from_first: bool, gemm: bool):
        """A product's grid for a step of T tokens: the matvec's up to GEMM_FROM tokens, the
        GEMM's beyond; (0, 0) for the other one."""
        tile_rows, tile_tokens = (GEMM_ROWS, GEMM_TOKENS) if gemm else (MATMUL_ROWS, MATMUL_TOKENS)

        def grid(T, first):
            tokens = T - first * from_first
            if (tokens > GEMM_FROM) != gemm:
                return 0, 0
            return -(-rows // tile_rows), -(-tokens // tile_tokens)
        return grid

    def matmul(self, m: Matrix, x, out, from_first: bool = False, accumulate: bool = False,
               gemm_only: bool = False) -> None:
        """Both products are planned; a step runs the one its token count calls for.
        accumulate: out += the product (the residual add). gemm_only: the tensor-core product
        alone (a fused matvec covers the short steps)."""
        for w, row0, rows in m.parts:
            params = (m.k, rows, row0, m.rows, int(from_first), int(accumulate))
            if not gemm_only:
                self.op("matmul", params, [w, x, out], self._grid(rows, from_first, False), m.type, MATMUL_THREADS)
            self.op("gemm", params, [w, x, out], self._grid(rows, from_first, True), m.type, GEMM_THREADS)

    @staticmethod
    def _fusable(*ms: Matrix) -> bool:
        return len({m.k for m in ms}) == 1 and all(len(m.parts) == 1 for m in ms)

    def _prenorm(self, norm, x, d: int, fused: bool):
        """norm = (src, weight, eps): x = RMSNorm(src) * weight [T, d]. The fused matvec (fused)
        computes it in its prologue for the short steps, so the rmsnorm op into x runs only for
        the longer ones (the GEMMs read x); for every step where nothing fuses. Returns the
        matvec's input, its norm weights (NULL: none) and eps."""
        if norm is None:
            return x, NULL, 0.0
        src, weight, eps = norm
        self.op("rmsnorm", (d, float(eps), 0, 1), [src, weight, x],
                lambda T, first: row_groups(T) if T > GEMM_FROM or not fused else (0, 0))
        return src, weight, float(eps)

    def matmul_qkv(self, mq: Matrix, mk: Matrix, mv: Matrix, x, q, k, v, norm=None) -> None:
        """q, k, v = x Wq^T, x Wk^T, x Wv^T: short steps in one launch (matmul3), longer ones
        as three GEMMs; three plain products where the matrices differ in type. norm = (src,
        weight, eps): x is RMSNorm(src) * weight first (written to x only where a GEMM or a
        plain product reads it; matmul3 folds it into its prologue)."""
        fused = self._fusable(mq, mk, mv) and mk.type == mv.type and (mq.type, mk.type) in MATMUL3_TYPES
        src, weight, eps = self._prenorm(norm, x, mq.k, fused)
        if not fused:
            for m, out in ((mq, q), (mk, k), (mv, v)):
                self.matmul(m, x, out)
            return
        n_groups = sum(-(-m.rows // MATMUL_ROWS) for m in (mq, mk, mv))
        self.op("matmul3", (mq.k, mq.rows, mk.rows, mv.rows, eps),
                [mq.parts[0][0], mk.parts[0][0], mv.parts[0][0], src, weight, q, k, v],
                lambda T, first: (n_groups, -(-T // MATMUL_TOKENS)) if T <= GEMM_FROM else (0, 0),
                f"{mq.type}_{mk.type}", MATMUL_THREADS)
        for m, out in ((mq, q), (mk, k), (mv, v)):
            self.matmul(m, x, out, gemm_only=True)

    def matmul_gate(self, mg: Matrix, mu: Matrix, x, gate, up, act: str, norm=None) -> None:
        """gate = act(x Wg^T) * (x Wu^T), act "silu_mul" or "gelu_mul": short steps in one launch
        (matmul_gate, the gate in its epilogue), longer ones as two GEMMs and the gate op. norm:
        as matmul_qkv's."""
        fused = self._fusable(mg, mu) and mg.type == mu.type and mg.rows == mu.rows
        src, weight, eps = self._prenorm(norm, x, mg.k, fused)
        if not fused:
            self.matmul(mg, x, gate)
            self.matmul(mu, x, up)
            self.op(act, (mg.rows,), [gate, up], lambda T, first: groups(T * mg.rows))
            return
        self.op("matmul_gate", (mg.k, mg.rows, int(act == "gelu_mul"), eps),
                [mg.parts[0][0], mu.parts[0][0], src, weight, gate],
                lambda T, first: (-(-mg.rows // MATMUL_ROWS), -(-T // MATMUL_TOKENS)) if T <= GEMM_FROM else (0, 0),
                mg.type, MATMUL_THREADS)
        self.matmul(mg, x, gate, gemm_only=True)
        self.matmul(mu, x, up, gemm_only=True)
        self.op(act, (mg.rows,), [gate, up], lambda T, first: groups(T * mg.rows) if T > GEMM_FROM else (0, 0))

    # rope_store and attention take `step` and `tokens` for one sequence of a batch:
    # its step state (n_past, 1, 0) and its one token, whatever the batch's T

    def rope_store(self, q, k, v, table, kc, vc, heads: int, kv_heads: int, hd: int, rd: int, step=None,
                   tokens: int | None = None, kv_type: str = "f32") -> None:
        """RoPE on q (in place) and k (into the key cache) over the first rd of each head (0:
        none), and v into the value cache, at the step's position: one launch. kv_type: f32
        (Device.kv_types; gpu.Graph.new_cache checked it)."""
        n = heads * (rd // 2) + 2 * kv_heads * hd
        self.op("rope_store", (heads, kv_heads, hd, rd), [q, k, v, table, kc, vc],
                lambda T, first: groups((tokens or T) * n), step=step)

    def attention(self, q, kc, vc, out, cfg, n_ctx: int, capacity: int, scale: float, window: int, step=None,
                  tokens: int | None = None, kv_type: str = "f32") -> None:
        """Scores q.k * scale, each token seeing its last `window` positions (0: all)."""
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        if hd > MAX_HEAD_DIM:
            raise LlmrunError(f"the CUDA attention kernel takes heads of up to {MAX_HEAD_DIM}, not {hd}; "
                              "use --backend cpu")
        self.op("attention", (H, Hkv, hd, float(scale), window), [q, kc, vc, out],
                lambda T, first: (H, tokens or T), threads=ATTENTION_THREADS, step=step)

    def run(self, T: int, n_past: int = 0, first: int = 0) -> int:
        """Launch every entry with work in a step of T tokens (the step buffer holds n_past, T and
        first already); returns the kernels launched."""
        driver, stream = self.dev.driver, self.dev.stream
        driver.use(self.dev.context)
        replay = T == self.replay_tokens
        if replay and (T, first) in self.graphs:  # the same launches every step, replayed
            graph, count = self.graphs[T, first]
            driver.launch_graph(graph, stream)
            return count
        live = [(launch, grid) for launch in self.launches for grid in [launch.grid(T, first)] if grid[0] and grid[1]]
        if replay:
            driver.begin_capture(stream)
        for launch, grid in live:
            driver.launch(launch, grid, stream)
        if replay:
            self.graphs[T, first] = driver.end_capture(stream), len(live)
            driver.launch_graph(self.graphs[T, first][0], stream)
        return len(live)
