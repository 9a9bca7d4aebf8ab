"""A CUDA driver in numpy, to test llmrun/backends/cuda.py (launch geometry, arguments, buffers, graph
capture) without a GPU. It has llmrun.backends.cuda.Driver's methods: device memory is numpy arrays
(an access outside an allocation fails), and each kernel of kernels/cuda/llmrun.cu is its numpy
twin, run over exactly the blocks its launch covers, so a grid that misses rows or tokens
leaves them unwritten. Every launch is checked against the kernel as nvcc compiled it: its
parameters' count and types and its block size, read from the PTX.

It tests the host side only: the CUDA code itself runs on a GPU (tests/test_cuda_device.py).
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from llmrun.backends.gpu import TYPES as GPU_TYPES
from llmrun.quant import dequantize, qtype
from llmrun.quant.layout import deinterleave

ROOT = Path(__file__).resolve().parent.parent
CTYPES = {"u64": ctypes.c_uint64, "u32": ctypes.c_uint32, "f32": ctypes.c_float}
WORKGROUP, MAX_GROUPS = 64, 65535
WEIGHT_TYPES = GPU_TYPES  # the weight kernels' name endings


def compile_ptx() -> str:
    """kernels/cuda/llmrun.cu as PTX (nvcc must be on PATH)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    return subprocess.run([nvcc, "--ptx", "-std=c++17", f"-I{ROOT / 'kernels' / 'include'}", "-arch=compute_75",
                           str(ROOT / "kernels" / "cuda" / "llmrun.cu"), "-o", "-"],
                          check=True, capture_output=True, text=True).stdout


def signatures(ptx: str) -> dict[str, tuple[list[str], int]]:
    """Each entry point's parameter types (u64, u32, f32) and its most threads per block."""
    out = {}
    for m in re.finditer(r"\.entry (\w+)\(([^)]*)\)\s*\.maxntid (\d+), 1, 1", ptx):
        out[m.group(1)] = (re.findall(r"\.param \.(\w+)", m.group(2)), int(m.group(3)))
    return out


def constants() -> dict[str, int]:
    """The kernels' integer constants (`constexpr uint32_t NAME = value;` in kernels/cuda/)."""
    return {m.group(1): int(m.group(2)) for f in sorted((ROOT / "kernels" / "cuda").glob("*.cuh"))
            for m in re.finditer(r"constexpr uint32_t (\w+) = (\d+);", f.read_text())}


TILES = {"matmul": ("MATMUL_ROWS", "MATMUL_TOKENS"), "gemm": ("GEMM_ROWS", "GEMM_TOKENS")}


def _covered(grid) -> int:
    """Elements an elementwise launch reaches: index x * 64 + thread + y * 65535 * 64."""
    return _rows_covered(grid) * WORKGROUP


def _rows_covered(grid) -> int:
    """Rows a launch of a block per row reaches: row x + y * 65535."""
    gx, gy = grid
    assert gy == 1 or gx == MAX_GROUPS, f"grid {grid}: y > 1 needs a full x"
    return gx if gy == 1 else gy * MAX_GROUPS


class Emulator:
    def __init__(self, kernels: dict | None, memory: int = 1 << 40, capability=(9, 0)):
        """kernels: signatures() of the module, to check every launch against; None: no checks."""
        self.kernels, self.capacity, self.capability_ = kernels, memory, capability
        self.constants = constants()
        self.memory: dict[int, np.ndarray] = {}
        self.host: dict[int, np.ndarray] = {}
        self.next = 1 << 32
        self.launches: list[tuple[str, tuple, int]] = []  # (kernel, grid, threads) as run
        self.graph_launches = 0
        self.capturing: list | None = None
        self.graphs: dict[int, list] = {}
        self._weights: dict[tuple, np.ndarray] = {}  # dequantised, by (pointer, type, rows, k)

    # devices, modules
    def device_count(self):
        return 1

    def device(self, index):
        return 0

    def name(self, device):
        return "Emulated GPU"

    def total_memory(self, device):
        return self.capacity

    def capability(self, device):
        return self.capability_

    def context(self, device):
        return 1

    def use(self, context):
        pass

    def stream(self):
        return 1

    def load_module(self, image):
        return 1

    def function(self, module, name):
        from llmrun.backends.cuda import CudaError
        if self.kernels is not None and name not in self.kernels:
            raise CudaError(f"cuModuleGetFunction: CUDA_ERROR_NOT_FOUND ({name})", 500)
        return name

    # memory
    def alloc(self, nbytes):
        from llmrun.backends.cuda import OUT_OF_MEMORY, DeviceMemoryError
        if sum(a.nbytes for a in self.memory.values()) + nbytes > self.capacity:
            raise DeviceMemoryError("cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY", OUT_OF_MEMORY)
        ptr = self.next
        self.memory[ptr] = np.full(nbytes, 0xA5, np.uint8)  # garbage, as cuMemAlloc leaves it
        self.next += -(-nbytes // 256) * 256 + 256
        return ptr

    def free(self, ptr):
        del self.memory[ptr]

    def alloc_host(self, nbytes):
        a = np.zeros(nbytes, np.uint8)
        self.host[a.ctypes.data] = a
        return a.ctypes.data

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes [ptr, ptr + nbytes) of one allocation."""
        for base, a in self.memory.items():
            if base <= ptr < base + a.nbytes:
                assert ptr + nbytes <= base + a.nbytes, f"{nbytes} bytes at {ptr - base} overrun a {a.nbytes}-byte buffer"
                return a[ptr - base:ptr - base + nbytes]
        raise AssertionError(f"pointer {ptr:#x} is in no allocation")

    def f32(self, ptr, n):
        return self.view(ptr, 4 * n).view(np.float32)

    def zero(self, ptr, nbytes, stream):
        self.view(ptr, nbytes)[:] = 0

    def to_device(self, ptr, host, nbytes, stream):
        ctypes.memmove(self.view(ptr, nbytes).ctypes.data, host, nbytes)

    def to_host(self, host, ptr, nbytes, stream):
        ctypes.memmove(host, self.view(ptr, nbytes).ctypes.data, nbytes)

    def sync(self, stream):
        pass

    # launches and graphs
    def launch(self, launch, grid, stream):
        if self.kernels is not None:
            types, max_threads = self.kernels[launch.name]
            assert [type(a) for a in launch.args] == [CTYPES[t] for t in types], \
                f"{launch.name}: arguments {[type(a).__name__ for a in launch.args]}, kernel takes {types}"
            assert launch.threads == max_threads, f"{launch.name}: {launch.threads} threads, built for {max_threads}"
        assert grid[0] > 0 and grid[1] > 0
        if self.capturing is not None:
            self.capturing.append((launch, grid))
            return
        self.launches.append((launch.name, grid, launch.threads))
        values = [a.value for a in launch.args]
        if launch.name.startswith("matmul3_"):  # matmul3_<type of w0>_<type of w1 and w2>
            a = next(t for t in WEIGHT_TYPES if launch.name[8:].startswith(t + "_"))
            return self.k_matmul3(grid, *values, types=(a, launch.name[9 + len(a):]))
        for weight_type in WEIGHT_TYPES:  # <op>_<weight type>
            if launch.name.endswith("_" + weight_type):
                getattr(self, "k_" + launch.name[:-len(weight_type) - 1])(grid, *values, type=weight_type)
                break
        else:
            getattr(self, "k_" + launch.name)(grid, *values)

    def begin_capture(self, stream):
        self.capturing = []

    def end_capture(self, stream):
        graph, self.capturing = self.capturing, None
        self.graphs[id(graph)] = graph
        return id(graph)

    def launch_graph(self, graph, stream):
        self.graph_launches += 1
        for launch, grid in self.graphs[graph]:
            self.launch(launch, grid, stream)

    def free_graph(self, graph):
        del self.graphs[graph]

    # the kernels' numpy twins
    def step(self, ptr):
        return [int(v) for v in self.view(ptr, 12).view(np.uint32)]

    def weights(self, ptr, type, rows, k) -> np.ndarray:
        key = (ptr, type, rows, k)
        if key not in self._weights:
            t = qtype(type)
            row_bytes = k // t.block_size * t.type_size
            data = self.view(ptr, rows * row_bytes).reshape(rows, row_bytes)
            if type != "f16":
                data = deinterleave(data, t, row_bytes)
            self._weights[key] = dequantize(data, t, k).reshape(rows, k).astype(np.float64)
        return self._weights[key]

    def _product(self, grid, step, w, x, out, k, rows, row0, out_rows, from_first, accumulate, type, tile,
                 split=False):
        n_past, T, first = self.step(step)
        tokens = T - from_first * first
        n_rows, n_tokens = min(rows, grid[0] * tile[0]), min(tokens, grid[1] * tile[1])
        product = self._sums(w, x, k, rows, n_rows, n_tokens, type, split)
        for t in range(n_tokens):
            o = self.f32(out, t * out_rows + row0 + n_rows)[t * out_rows + row0:]
            o[:] = o + product[t].astype(np.float32) if accumulate else product[t]  # x + W a in f32

    def _sums(self, w, x, k, rows, n_rows, n_tokens, type, split=False, X=None) -> np.ndarray:
        """The first n_tokens of x [., k] (or of X, given) times the first n_rows of w, in
        float64 [n_tokens, n_rows]."""
        W = self.weights(w, type, rows, k)[:n_rows]
        X = self.f32(x, n_tokens * k).reshape(n_tokens, k) if X is None else X
        if split:  # the tensor cores take x as two f16 parts, hi + lo
            hi = X.astype(np.float16)
            X = hi.astype(np.float64) + (X - hi.astype(np.float32)).astype(np.float16)
        return X.astype(np.float64) @ W.T

    def k_matmul(self, grid, *args, type):
        self._product(grid, *args, type=type, tile=[self.constants[c] for c in TILES["matmul"]])

    def k_gemm(self, grid, *args, type):
        self._product(grid, *args, type=type, tile=[self.constants[c] for c in TILES["gemm"]], split=True)

    def _input(self, x, norm, k, n_tokens, eps) -> np.ndarray:
        """A fused matvec's activations [n_tokens, k]: x, or RMSNorm(x) * norm where norm is
        not null (the pre-norm in its prologue: norm_scales, as the CPU's rmsnorm_ref computes it)."""
        X = self.f32(x, n_tokens * k).reshape(n_tokens, k)
        return X if not norm else prenormed(X, self.f32(norm, k), eps)

    def k_matmul3(self, grid, step, w0, w1, w2, x, norm, out0, out1, out2, k, rows0, rows1, rows2, eps, types):
        """Blocks 0 .. g0 - 1 over w0's groups of 16 rows (type types[0]), then w1's, then w2's
        (types[1]); of RMSNorm(x) * norm where norm is not null."""
        _, T, _ = self.step(step)
        tile_rows, tile_tokens = (self.constants[c] for c in TILES["matmul"])
        n_tokens, left = min(T, grid[1] * tile_tokens), grid[0]
        X = self._input(x, norm, k, n_tokens, eps)
        for w, out, rows, type in ((w0, out0, rows0, types[0]), (w1, out1, rows1, types[1]),
                                   (w2, out2, rows2, types[1])):
            n_rows = min(rows, left * tile_rows)
            left -= min(left, -(-rows // tile_rows))
            if n_rows:
                sums = self._sums(w, x, k, rows, n_rows, n_tokens, type, X=X)
                self.f32(out, n_tokens * rows).reshape(n_tokens, rows)[:, :n_rows] = sums

    def k_matmul_gate(self, grid, step, wg, wu, x, norm, out, k, rows, act, eps, type):
        """out = act(W_gate x) * (W_up x): silu_mul's or gelu_mul's formula on the f32 sums; x
        RMSNorm(x) * norm where norm is not null."""
        _, T, _ = self.step(step)
        tile_rows, tile_tokens = (self.constants[c] for c in TILES["matmul"])
        n_rows, n_tokens = min(rows, grid[0] * tile_rows), min(T, grid[1] * tile_tokens)
        X = self._input(x, norm, k, n_tokens, eps)
        g = self._sums(wg, x, k, rows, n_rows, n_tokens, type, X=X).astype(np.float32)
        u = self._sums(wu, x, k, rows, n_rows, n_tokens, type, X=X).astype(np.float32)
        self.f32(out, n_tokens * rows).reshape(n_tokens, rows)[:, :n_rows] = (gelu if act else silu)(g, u)

    def k_embed(self, grid, step, w, ids, out, k, rows, row0, type):
        _, T, _ = self.step(step)
        table = self.weights(w, type, rows, k)
        for t in range(min(grid[0], T)):
            i = int(self.view(ids, 4 * T).view(np.uint32)[t])
            if row0 <= i < row0 + rows:
                self.f32(out, (t + 1) * k)[t * k:] = table[i - row0]

    def k_rmsnorm(self, grid, step, x, weight, out, d, eps, from_first, per_token):
        _, T, first = self.step(step)
        skip = from_first * first * per_token
        for t in range(min(_rows_covered(grid), T * per_token - skip)):
            row = self.f32(x, (t + skip + 1) * d)[(t + skip) * d:].astype(np.float64)
            self.f32(out, (t + 1) * d)[t * d:] = row / np.sqrt((row ** 2).mean() + np.float32(eps)) * self.f32(weight, d)

    def k_rope_store(self, grid, step, q, k, v, table, kc, vc, heads, kv_heads, hd, rd):
        """rope on q in place and on k into the key cache, v into the value cache, over the
        elements a grid covers: q's turned pairs first, then k's elements, then v's."""
        n_past, T, _ = self.step(step)
        half, kv = rd // 2, kv_heads * hd
        n = _covered(grid)
        cs = self.f32(table, (n_past + T) * rd).reshape(-1, half, 2) if half else None
        xs = self.f32(q, T * heads * hd).reshape(T * heads, hd)
        xs[:] = _turned(xs, cs, n_past, heads, half, min(n, T * heads * half))
        n -= min(n, T * heads * half)
        ks = self.f32(k, T * kv).reshape(T * kv_heads, hd)
        keys = _turned(ks, cs, n_past, kv_heads, half, T * kv_heads * half).reshape(-1)
        count = min(n, T * kv)
        self.f32(kc, n_past * kv + count)[n_past * kv:] = keys[:count]
        n -= count
        count = min(n, T * kv)
        self.f32(vc, n_past * kv + count)[n_past * kv:] = self.f32(v, count)

    def k_silu_mul(self, grid, step, gate, up, row):
        _, T, _ = self.step(step)
        n = min(T * row, _covered(grid))
        g, u = self.f32(gate, n), self.f32(up, n)
        g[:] = silu(g, u)

    def k_gelu_mul(self, grid, step, gate, up, row):
        _, T, _ = self.step(step)
        n = min(T * row, _covered(grid))
        g, u = self.f32(gate, n), self.f32(up, n)
        g[:] = gelu(g, u)

    def k_scale(self, grid, step, x, row, from_first, s):
        _, T, first = self.step(step)
        count = min((T - from_first * first) * row, _covered(grid))
        self.f32(x, count)[:] *= np.float32(s)

    def k_add(self, grid, step, x, y, row, n):
        _, T, _ = self.step(step)
        count = min(T * row, _covered(grid))
        self.f32(x, count)[:] += self.f32(y, n)[np.arange(count) % n]

    def k_attention(self, grid, step, q, kc, vc, out, heads, kv_heads, hd, scale, window):
        n_past, T, _ = self.step(step)
        Q = self.f32(q, T * heads * hd).reshape(T, heads, hd)
        K = self.f32(kc, (n_past + T) * kv_heads * hd).reshape(-1, kv_heads, hd).astype(np.float64)
        V = self.f32(vc, (n_past + T) * kv_heads * hd).reshape(-1, kv_heads, hd).astype(np.float64)
        o = self.f32(out, T * heads * hd).reshape(T, heads, hd)
        for t in range(min(grid[1], T)):
            n = n_past + t + 1
            start = n - window if 0 < window < n else 0  # a sliding window's first position
            for h in range(min(grid[0], heads)):
                s = K[start:n, h // (heads // kv_heads)] @ Q[t, h] * np.float32(scale)
                p = np.exp(s - s.max())
                o[t, h] = p @ V[start:n, h // (heads // kv_heads)] / p.sum()


def prenormed(x, w, eps):
    """The pre-norm a fused matvec folds in (kernels/cuda/matmul.cuh: norm_scales), as the CPU's
    rmsnorm_ref: each row's squares summed in float64, scale = 1 / sqrt(ss / d + eps) in float64
    rounded to f32, then (x * scale) * w in f32. x [T, d] f32."""
    ss = (x.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
    scale = (1.0 / np.sqrt(ss / x.shape[1] + float(np.float32(eps)))).astype(np.float32)
    return (x * scale) * w.astype(np.float32)


def silu(g, u):
    """silu_gate of kernels/cuda/common.cuh: g / (1 + exp(-g)) * u."""
    return g / (1 + np.exp(-g.astype(np.float64))) * u


def gelu(g, u):
    """gelu_gate of kernels/cuda/common.cuh: GELU in its tanh form, times u."""
    x = g.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))) * u


def _turned(xs, cs, n_past, heads, half, n):
    """A copy of rows xs [tokens * heads, hd] with the first n of its pairs turned (pair i: row
    i // half, element i % half with i % half + half) by the positions' cos and sin cs."""
    out = xs.copy()
    i = np.arange(n)
    j, row = i % half if half else i, i // half if half else i
    if n:
        c = cs[n_past + row // heads, j]
        a, b = xs[row, j], xs[row, j + half]
        out[row, j], out[row, j + half] = a * c[:, 0] - b * c[:, 1], b * c[:, 0] + a * c[:, 1]
    return out
