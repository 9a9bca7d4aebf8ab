"""`llmrun selftest`: a backend against the CPU on small random models, one per weight type,
built in memory (nothing to download): the first thing to run on a new machine or GPU."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .backends import cpu, device
from .backends.gpu import TYPES as GPU_TYPES
from .config import ModelConfig, rope_frequencies
from .errors import SettingError
from .format import Tensor
from .model import KVCache, LayerWeights, Weights
from .quant import qtype, quantize
from .quant.layout import X16, interleave, kernel_layout

TYPES = GPU_TYPES  # one model per weight type the GPU kernels read (gpu.py says which)
CONFIG = ModelConfig(vocab_size=256, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=256,
                     norm_eps=1e-5, rope_theta=10000.0, max_seq_len=64, tie_embeddings=False, attn_bias=True)


def config_for(type_name: str) -> ModelConfig:
    """CONFIG widened (twice, for the k-quants' 256-value blocks) until every matrix row is a
    whole number of the type's blocks."""
    f = -(-qtype(type_name).block_size // CONFIG.n_heads // CONFIG.head_dim)
    return CONFIG if f == 1 else replace(CONFIG, dim=CONFIG.dim * f, head_dim=CONFIG.head_dim * f,
                                         ffn_dim=CONFIG.ffn_dim * f)


# Logits may differ by this much of their range: the CPU quantises activations to 16 bits per
# block where a GPU keeps f32, and sums in another order (measured: ~5e-5).
BOUND = 1e-3


@dataclass
class Check:
    type: str
    argmax_same: bool
    max_diff: float  # max |logit difference| / max |logit|

    @property
    def passed(self) -> bool:
        return self.argmax_same and self.max_diff <= BOUND


def tensor(w: np.ndarray, t) -> Tensor:
    """float32 [R, K] as a weight of type t, in the layout the converter gives it."""
    data = quantize(w, t)
    layout = kernel_layout(t, w.shape)
    return Tensor("w", t, w.shape, (interleave(data, t) if layout == X16 else data).reshape(-1), layout)


def random_weights(type_name: str, cfg: ModelConfig = CONFIG, seed: int = 0) -> Weights:
    """Random weights of one type (norms and biases f32), laid out as the converter lays them."""
    rng = np.random.default_rng(seed)
    t = qtype(type_name)

    def matrix(rows, cols, scale=None):
        return tensor((rng.standard_normal((rows, cols)) * (scale or cols ** -0.5)).astype(np.float32), t)

    def vector(n, center=1.0):
        return (center + 0.1 * rng.standard_normal(n)).astype(np.float32)

    D, F, q_dim, kv_dim = cfg.dim, cfg.ffn_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    layers = [LayerWeights(attn_norm=vector(D), wq=matrix(q_dim, D), wk=matrix(kv_dim, D), wv=matrix(kv_dim, D),
                           wo=matrix(D, q_dim), bq=vector(q_dim, 0.0), bk=vector(kv_dim, 0.0), bv=vector(kv_dim, 0.0),
                           ffn_norm=vector(D), w_gate=matrix(F, D), w_up=matrix(F, D), w_down=matrix(D, F))
              for _ in range(cfg.n_layers)]
    return Weights(tok_embeddings=matrix(cfg.vocab_size, D, 1.0), layers=layers, norm=vector(D),
                   output=matrix(cfg.vocab_size, D))


def run(backend: str = "webgpu") -> list[Check]:
    """For each weight type: a 12-token prompt then 3 decode steps, on the CPU and on the
    backend, compared position by position."""
    if backend == "cpu":
        raise SettingError("selftest checks a GPU backend against the CPU: --backend webgpu or cuda")
    dev = device(backend)
    ids = np.random.default_rng(1).integers(0, CONFIG.vocab_size, 15).astype(np.int32)
    checks = []
    for type_name in TYPES:
        cfg = config_for(type_name)
        want, got = cpu_and_device_logits(dev, backend, cfg, random_weights(type_name, cfg), ids, (12, 13, 14, 15))
        checks.append(Check(type_name, bool((want.argmax(-1) == got.argmax(-1)).all()),
                            float(np.abs(want - got).max() / np.abs(want).max())))
    return checks


def cpu_and_device_logits(dev, backend: str, cfg, w, ids, ends) -> tuple[np.ndarray, np.ndarray]:
    """The logits of `ids` run as a prefill up to ends[0], then steps to each next end, on the
    CPU and on the device `dev` of `backend`, each with the weights `w`."""
    from .backends import gpu
    inv_freq = rope_frequencies(cfg)
    graph, on_device = cpu.graph(cfg, w, inv_freq), gpu.Graph(dev, cfg, w, inv_freq, backend)
    cache, device_cache = KVCache(cfg, ends[-1]), on_device.new_cache(ends[-1])
    want, got = [], []
    for start, stop in zip((0, *ends[:-1]), ends):
        want.append(cpu.forward(graph, ids[start:stop], start, cache.k, cache.v, 0, cfg.vocab_size))
        got.append(device_cache.run(ids[start:stop], start, 0))
    return np.concatenate(want), np.concatenate(got)
