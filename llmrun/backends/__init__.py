"""The backends: where a model's forward pass runs. Each is bound to a model's weights once,
with `bind`, and then answers one interface, so that nothing above this package asks which
backend it has:

    name                 "cpu", "webgpu" or "cuda"
    max_segments         sequences one forward may run together (None: any number)
    cpu_threads          whether the CPU's thread count sets its speed (bench sweeps threads then)
    kv_types             the KV cache element types it keeps (KV_DTYPES' names): "f32"; the CPU
                         also "f16" and "q8_0", WebGPU "f16"
    new_cache(n_ctx, kv_type="f32")
                         a context's keys and values, where this backend keeps them
    forward(runs)        runs: [(ids int32 [T], n_past, cache, first)], at most max_segments of
                         them; writes each cache's rows n_past .. n_past + T - 1 and returns the
                         logits [T - first, V] of each run's tokens from `first` on

cpu.py runs llmrun._kernels (C, built from kernels/cpu/); gpu.py is what the GPU backends share
(the graph as a plan of kernel launches), with cuda.py (kernels/cuda/ through the driver API)
and webgpu.py (kernels/wgsl/ through wgpu) as its devices.
"""
from __future__ import annotations

from ..errors import SettingError

NAMES = ("cpu", "webgpu", "cuda")
GPU_NAMES = ("webgpu", "cuda")

# A KV cache's element types, by the name --kv-type takes: numpy's dtype of the cache arrays
# (the C kernels' LLMR_KV_* tell them apart by its size). f32 keeps the keys and values as the
# graph computes them; f16 rounds them to nearest even as they are stored, for half the memory
# and half the bytes a long context's attention reads; q8_0 stores each row as the weight
# type's blocks of 32 (an f16 scale and 32 int8: 0.53x f16's bytes), the rows being uint8.
KV_DTYPES = {"f32": "float32", "f16": "float16", "q8_0": "uint8"}


def kv_type_checked(kv_type: str, backend=None) -> str:
    """kv_type, if it names a KV cache element type (and, given a backend or a backend's name,
    one it keeps: checked by name before a GPU's upload, not after)."""
    if kv_type not in KV_DTYPES:
        raise SettingError(f"unknown KV cache type {kv_type!r}; known: {', '.join(KV_DTYPES)}")
    if isinstance(backend, str):
        from . import cpu, cuda, webgpu
        name, kept = backend, {"cpu": cpu.Backend, "webgpu": webgpu.Device, "cuda": cuda.Device}[backend].kv_types
    else:
        name, kept = getattr(backend, "name", None), getattr(backend, "kv_types", KV_DTYPES)
    if kv_type not in kept:
        raise SettingError(f"the {name} backend keeps its KV cache in {', '.join(kept)}, not {kv_type}")
    return kv_type


def kv_row_items(kv_type: str, head_dim: int) -> int:
    """Items of KV_DTYPES[kv_type] in a cache row of head_dim elements: head_dim, or q8_0's bytes."""
    if kv_type != "q8_0":
        return head_dim
    from ..quant.types import Q8_0
    if head_dim % Q8_0.block_size:
        raise SettingError(f"a q8_0 KV cache needs a head dim that is a multiple of {Q8_0.block_size}, and this "
                           f"model's is {head_dim}: use --kv-type f16")
    return head_dim // Q8_0.block_size * Q8_0.type_size


def device(name: str):
    """A GPU backend's device, ready for gpu.Graph."""
    if name == "webgpu":
        from . import webgpu
        return webgpu.Device()
    if name == "cuda":
        from . import cuda
        return cuda.Device()
    raise SettingError(f"{name!r} is not a GPU backend; GPU backends: {', '.join(GPU_NAMES)}")


def bind(name: str, cfg, weights, inv_freq):
    """The backend `name` with the model's weights (llmrun.model.Weights) bound: views of the
    file on the CPU, uploaded once to a GPU."""
    if name not in NAMES:
        raise SettingError(f"unknown backend {name!r}; known: {', '.join(NAMES)}")
    if name == "cpu":
        from .cpu import Backend
        return Backend(cfg, weights, inv_freq)
    from .gpu import Graph
    return Graph(device(name), cfg, weights, inv_freq, name)
