"""The one LLaMA graph: RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU.

Config (hyper-parameters), weights (views of the mapped file) and run state (the KV cache)
are kept apart; `forward()` does no I/O and no sampling, and serves prefill (many tokens)
and decode (one token) alike. Shapes: T new tokens, D model width, H query heads,
Hkv key/value heads, hd head width, F feed-forward width, V vocabulary, C context length.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import cpu as ops
from .config import ModelConfig, rope_inv_freq
from .errors import ContextError, FormatError, SettingError
from .format import LlmrFile, Tensor


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # [D]
    wq: Tensor  # [H*hd, D]
    wk: Tensor  # [Hkv*hd, D]
    wv: Tensor  # [Hkv*hd, D]
    wo: Tensor  # [D, H*hd]
    bq: np.ndarray | None  # [H*hd]  (Qwen2)
    bk: np.ndarray | None  # [Hkv*hd]
    bv: np.ndarray | None  # [Hkv*hd]
    ffn_norm: np.ndarray  # [D]
    w_gate: Tensor  # [F, D]
    w_up: Tensor  # [F, D]
    w_down: Tensor  # [D, F]


@dataclass
class Weights:
    tok_embeddings: Tensor  # [V, D]
    layers: list[LayerWeights]
    norm: np.ndarray  # [D]
    output: Tensor  # [V, D]  (the embedding table itself when tied)

    @classmethod
    def from_file(cls, f: LlmrFile, cfg: ModelConfig) -> "Weights":
        shapes = tensor_shapes(cfg)

        def get(name, vector=False):
            if name not in f.tensors:
                raise FormatError(f"{f.path}: tensor {name!r} is missing")
            t = f.tensor(name)
            if t.shape != shapes[name]:
                raise FormatError(f"{f.path}: tensor {name!r} has shape {list(t.shape)}, expected {list(shapes[name])}")
            if vector:
                if t.type.name != "f32":
                    raise FormatError(f"{f.path}: tensor {name!r} is {t.type.name}; norms and biases must be f32")
                return t.numpy()
            return t

        def layer(i):
            p = f"layers.{i}."
            bias = (lambda n: get(p + n, vector=True)) if cfg.attn_bias else (lambda n: None)
            return LayerWeights(
                attn_norm=get(p + "attn_norm", vector=True),
                wq=get(p + "wq"), wk=get(p + "wk"), wv=get(p + "wv"), wo=get(p + "wo"),
                bq=bias("bq"), bk=bias("bk"), bv=bias("bv"),
                ffn_norm=get(p + "ffn_norm", vector=True),
                w_gate=get(p + "w_gate"), w_up=get(p + "w_up"), w_down=get(p + "w_down"))

        emb = get("tok_embeddings")
        return cls(tok_embeddings=emb, layers=[layer(i) for i in range(cfg.n_layers)],
                   norm=get("norm", vector=True), output=emb if cfg.tie_embeddings else get("output"))


def tensor_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Every tensor a model of this config has in a .llmr file, and its shape."""
    D, hd, F, V = cfg.dim, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
    q_dim, kv_dim = cfg.n_heads * hd, cfg.n_kv_heads * hd
    layer = {"attn_norm": (D,), "wq": (q_dim, D), "wk": (kv_dim, D), "wv": (kv_dim, D), "wo": (D, q_dim),
             "ffn_norm": (D,), "w_gate": (F, D), "w_up": (F, D), "w_down": (D, F)}
    if cfg.attn_bias:
        layer |= {"bq": (q_dim,), "bk": (kv_dim,), "bv": (kv_dim,)}
    shapes = {"tok_embeddings": (V, D), "norm": (D,)} | ({} if cfg.tie_embeddings else {"output": (V, D)})
    return shapes | {f"layers.{i}.{n}": shape for i in range(cfg.n_layers) for n, shape in layer.items()}


BACKENDS = ("cpu", "webgpu", "cuda")


def device(backend: str):
    """A GPU backend's device (webgpu or cuda), ready for a gpu.Graph."""
    if backend == "webgpu":
        from . import webgpu
        return webgpu.Device()
    if backend == "cuda":
        from . import cuda
        return cuda.Device()
    raise SettingError(f"{backend!r} is not a GPU backend; GPU backends: webgpu, cuda")


def _lazy_zeros(shape: tuple) -> np.ndarray:
    """float32 zeros in fresh anonymous memory, committed a small page at a time as it is
    written. (np.zeros asks Linux for 2 MiB huge pages on large arrays: a KV cache's first token
    would then commit 2 MiB per layer for K and V alike, ~120 MiB for SmolLM2, and zeroing them
    made its first prefill 20x slower.)"""
    size = int(np.prod(shape, dtype=np.int64)) * 4
    buf = mmap.mmap(-1, max(size, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype=np.float32, count=size // 4).reshape(shape)


class KVCache:
    """Keys and values of every position seen so far, per layer. Pages are committed lazily
    (_lazy_zeros), so a long context costs only what is used. With `gpu` (a gpu.Graph) they
    live on the device instead, in `device`."""

    def __init__(self, cfg: ModelConfig, n_ctx: int, gpu=None):
        shape = (cfg.n_layers, n_ctx, cfg.n_kv_heads, cfg.head_dim)
        self.device = gpu.new_cache(n_ctx) if gpu is not None else None
        self.k = self.v = None
        try:
            if self.device is None:
                self.k = _lazy_zeros(shape)  # [L, C, Hkv, hd]
                self.v = _lazy_zeros(shape)  # [L, C, Hkv, hd]
        except (MemoryError, OSError, OverflowError):  # even unbacked: a context past what the machine can map
            size = 8 * np.prod(shape, dtype=np.float64)
            raise ContextError(f"a KV cache for {n_ctx} positions takes {size / 2**30:.1f} GiB, more than "
                               "this machine can map: use a smaller context (--ctx)") from None
        self.n_ctx = n_ctx
        self.n = 0  # positions filled
        self.tokens: list[int] = []  # the ids at those positions

    def truncate(self, n: int) -> None:
        """Forget positions n and later (the next forward overwrites them). Also mends a cache
        whose forward was interrupted between its two bookkeeping steps."""
        self.n = min(self.n, n, len(self.tokens))
        del self.tokens[self.n:]


@dataclass
class Segment:
    """One sequence's part of a batched forward (Model.forward_batch): `tokens` [T] run at
    positions cache.n, cache.n+1, ... of its own cache, with the logits of the tokens from
    `logits_from` on (the last only: last_only)."""
    tokens: Sequence[int]
    cache: KVCache
    last_only: bool = False
    logits_from: int = 0


def _add_bias(x: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        x += b
    return x


def _check_fits(cache: KVCache, T: int) -> None:
    if T == 0:
        raise ValueError("forward() needs at least one token")
    if cache.n + T > cache.n_ctx:
        raise ContextError(f"{cache.n} + {T} tokens do not fit in the context of {cache.n_ctx}; "
                           "shorten the prompt or raise the context size")


def _first_logit(T: int, last_only: bool, logits_from: int) -> int:
    first = T - 1 if last_only else logits_from
    if not 0 <= first < T:
        raise ValueError(f"logits from token {first}: there are {T} tokens")
    return first


def _token_ids(tokens, vocab_size: int) -> np.ndarray:
    """tokens as int32 [T], each checked to be in [0, vocab_size)."""
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise SettingError(f"token id {bad} is out of range [0, {vocab_size})")
    return ids.astype(np.int32)


def forward(cfg: ModelConfig, w: Weights, inv_freq: np.ndarray, tokens, cache: KVCache,
            last_only: bool = False, logits_from: int = 0) -> np.ndarray:
    """Run `tokens` at positions cache.n, cache.n+1, ... and return the logits [T - first, V]
    of the tokens from `first` = logits_from on (the last only: first = T - 1). Model.forward
    runs this same graph in C."""
    T, H, Hkv, hd = len(tokens), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    _check_fits(cache, T)
    first = _first_logit(T, last_only, logits_from)
    n_past = cache.n
    positions = np.arange(n_past, n_past + T, dtype=np.int32)  # [T]

    x = ops.embed(w.tok_embeddings, np.asarray(tokens))  # [T, D]
    for l, layer in enumerate(w.layers):
        # attention: x + Wo · attn(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x)
        h = ops.rmsnorm(x, layer.attn_norm, cfg.norm_eps)  # [T, D]
        q = _add_bias(ops.matmul(layer.wq, h), layer.bq).reshape(T, H, hd)  # [T, H, hd]
        k = _add_bias(ops.matmul(layer.wk, h), layer.bk).reshape(T, Hkv, hd)  # [T, Hkv, hd]
        v = _add_bias(ops.matmul(layer.wv, h), layer.bv).reshape(T, Hkv, hd)  # [T, Hkv, hd]
        ops.rope_(q, positions, inv_freq)
        ops.rope_(k, positions, inv_freq)
        cache.k[l, n_past:n_past + T] = k
        cache.v[l, n_past:n_past + T] = v
        a = ops.attention(q, cache.k[l], cache.v[l], n_past)  # [T, H, hd]
        x += ops.matmul(layer.wo, a.reshape(T, H * hd))  # [T, D]

        # feed-forward: x + W_down · (silu(W_gate h) * W_up h),  h = RMSNorm(x)
        h = ops.rmsnorm(x, layer.ffn_norm, cfg.norm_eps)  # [T, D]
        g = ops.silu_mul(ops.matmul(layer.w_gate, h), ops.matmul(layer.w_up, h))  # [T, F]
        x += ops.matmul(layer.w_down, g)  # [T, D]

    cache.n += T
    cache.tokens.extend(int(t) for t in tokens)
    x = ops.rmsnorm(x[first:], w.norm, cfg.norm_eps)  # [T - first, D]
    return ops.matmul(w.output, x)  # [T - first, V]


class Model:
    """A loaded model: config, weights (zero-copy views of the file), tokenizer, chat template."""

    def __init__(self, path: str, huge_pages: bool = False, backend: str = "cpu"):
        from .tokenizer import Tokenizer
        if backend not in BACKENDS:
            raise SettingError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.path = path
        self.file = LlmrFile(path, huge_pages)
        meta = self.file.metadata
        try:
            self.config = ModelConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: bad model config in metadata: {e}") from None
        self.weights = Weights.from_file(self.file, self.config)
        self.tokenizer = Tokenizer.from_metadata(meta.get("tokenizer"), bytes(self.file.tokenizer_blob), path)
        self.chat_template: str | None = meta.get("chat_template")
        if not isinstance(self.chat_template, (str, type(None))):
            raise FormatError(f"{path}: the chat template in the metadata is not text; convert the model again")
        self.inv_freq = rope_inv_freq(self.config)  # [hd/2]
        self.backend = backend
        self.graph = ops.graph(self.config, self.weights, self.inv_freq)
        self.gpu = None
        if backend != "cpu":  # the weights go to the device once, here
            from . import gpu
            self.gpu = gpu.Graph(device(backend), self.config, self.weights, self.inv_freq)

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        """A fresh KV cache for up to n_ctx positions (default: the trained context), on the
        backend's device."""
        return KVCache(self.config, n_ctx or self.config.max_seq_len, self.gpu)

    def forward(self, tokens, cache: KVCache, last_only: bool = False, reference: bool = False,
                logits_from: int = 0) -> np.ndarray:
        """forward() above: as one call into the kernels (the same ops in the same order, so the
        same logits bit for bit; forward_batch of this one segment), or with `reference`, step by
        step in Python."""
        if reference:
            if cache.device is not None:
                raise SettingError("the Python reference forward runs on a CPU cache, not a device's")
            return forward(self.config, self.weights, self.inv_freq, tokens, cache, last_only, logits_from)
        return self.forward_batch([Segment(tokens, cache, last_only, logits_from)])[0]

    def forward_batch(self, batch: Sequence[Segment]) -> list[np.ndarray]:
        """forward() for several sequences at once, each with its own cache (a server decoding
        many requests): one call into the kernels reads every weight once for all of them.
        Returns each segment's logits [T - first, V], the same as forward() of that segment
        alone. Everything is checked before anything runs, so a refused batch changes no cache."""
        if not batch:
            raise ValueError("forward_batch() needs at least one segment")
        if len({id(s.cache) for s in batch}) < len(batch):
            raise SettingError("a cache appears twice in one batch: its sequence's tokens go in one segment")
        runs = []  # (ids [T], first) per segment
        for s in batch:
            _check_fits(s.cache, len(s.tokens))
            runs.append((_token_ids(s.tokens, self.config.vocab_size),
                         _first_logit(len(s.tokens), s.last_only, s.logits_from)))
        if any(s.cache.device is not None for s in batch):
            if len(batch) > 1:
                raise SettingError("batched forward runs on the cpu backend; on a device, run one sequence a call")
            (ids, first), cache = runs[0], batch[0].cache
            logits = [cache.device.run(ids, cache.n, first)]
        else:
            flat = ops.forward_batch(self.graph, [(ids, s.cache.n, s.cache.k, s.cache.v, first)
                                                  for s, (ids, first) in zip(batch, runs)], self.config.vocab_size)
            logits = np.split(flat, np.cumsum([len(ids) - first for ids, first in runs[:-1]]))
        for s, (ids, _) in zip(batch, runs):
            s.cache.n += len(ids)
            s.cache.tokens.extend(ids.tolist())
        return logits

    def logits(self, ids) -> np.ndarray:
        """float32 logits [len(ids), V] of `ids` run from a fresh cache."""
        ids = list(ids)
        return self.forward(ids, self.new_cache(len(ids)))


def load(path, huge_pages: bool | None = None, backend: str | None = None) -> Model:
    """Open a .llmr file: weights stay in the page cache; nothing is copied or repacked.
    A GGUF file or a Hugging Face checkpoint directory is converted into the model cache on
    first use (see llmrun.store) and loaded from there. `huge_pages` (default: the environment
    variable LLMRUN_HUGEPAGES=1) copies the file into memory backed by transparent huge pages,
    a few percent faster decode for twice the memory (llmrun.format._read_into_huge_pages).
    `backend` is "cpu", "webgpu" or "cuda" (default: the environment variable LLMRUN_BACKEND, else cpu)."""
    from .models import source_kind
    path = str(path)
    if source_kind(path) in ("hf", "gguf"):
        from .store import convert_into_cache
        path = convert_into_cache(path)
    if huge_pages is None:
        huge_pages = os.environ.get("LLMRUN_HUGEPAGES", "") == "1"
    return Model(path, huge_pages, backend or os.environ.get("LLMRUN_BACKEND") or "cpu")
