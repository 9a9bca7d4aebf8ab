"""The one LLaMA graph: RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU, and
the switches by which the LLaMA-style families differ from it (llmrun/config.py, set from each
family's checkpoints by llmrun/families.py): per-head q/k norms, post-norms, a GELU gate,
embedding, residual, attention and logit scalars, a partial or absent RoPE, a sliding window.

Config (hyper-parameters), weights (views of the mapped file) and run state (the KV cache)
are kept apart; `forward()` does no I/O and no sampling, and serves prefill (many tokens)
and decode (one token) alike. Shapes: T new tokens, D model width, H query heads,
Hkv key/value heads, hd head width, F feed-forward width, V vocabulary, C context length.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import backends
from .backends import cpu as ops
from .config import ModelConfig, rope_frequencies
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
    q_norm: np.ndarray | None = None  # [hd]  (qk_norm: Qwen3, Gemma 3)
    k_norm: np.ndarray | None = None  # [hd]
    attn_post_norm: np.ndarray | None = None  # [D]  (post_norms: Gemma 3)
    ffn_post_norm: np.ndarray | None = None  # [D]


VECTORS = ("attn_norm", "ffn_norm", "bq", "bk", "bv", "q_norm", "k_norm", "attn_post_norm", "ffn_post_norm")


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
            # what the config says the layer has; LayerWeights' other fields stay None
            have = {n for n in (k.split(".", 2)[2] for k in shapes if k.startswith(p))}
            return LayerWeights(**{n: get(p + n, vector=n in VECTORS) for n in sorted(have)},
                                **{n: None for n in ("bq", "bk", "bv") if n not in have})

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
    if cfg.qk_norm:
        layer |= {"q_norm": (hd,), "k_norm": (hd,)}
    if cfg.post_norms:
        layer |= {"attn_post_norm": (D,), "ffn_post_norm": (D,)}
    shapes = {"tok_embeddings": (V, D), "norm": (D,)} | ({} if cfg.tie_embeddings else {"output": (V, D)})
    return shapes | {f"layers.{i}.{n}": shape for i in range(cfg.n_layers) for n, shape in layer.items()}


class KVCache:
    """Keys and values of every position seen so far, per layer, where the backend keeps them
    (`store`: host arrays k, v [L, Hkv, C, hd] on the CPU, committed as they are written, of
    element type kv_type; device buffers on a GPU), and the token ids at those positions."""

    def __init__(self, cfg: ModelConfig, n_ctx: int, backend=None, kv_type: str = "f32"):
        self.store = backend.new_cache(n_ctx, kv_type) if backend else ops.new_cache(cfg, n_ctx, kv_type)
        self.n_ctx = n_ctx
        self.n = 0  # positions filled
        self.tokens: list[int] = []  # the ids at those positions

    @property
    def k(self) -> np.ndarray | None:
        """[L, Hkv, C, hd] on the host, or None on a device."""
        return getattr(self.store, "k", None)

    @property
    def v(self) -> np.ndarray | None:
        return getattr(self.store, "v", None)

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


def _sublayer_out(cfg: ModelConfig, y: np.ndarray, post_norm: np.ndarray | None) -> np.ndarray:
    """A sublayer's output [T, D] as it joins the residual stream: normed where the family has
    post-norms (Gemma 3), scaled where it has a residual multiplier (Granite)."""
    if post_norm is not None:
        y = ops.rmsnorm(y, post_norm, cfg.norm_eps)
    if cfg.residual_scale != 1.0:
        y *= np.float32(cfg.residual_scale)
    return y


def forward(cfg: ModelConfig, w: Weights, inv_freq: dict, tokens, cache: KVCache,
            last_only: bool = False, logits_from: int = 0) -> np.ndarray:
    """Run `tokens` at positions cache.n, cache.n+1, ... and return the logits [T - first, V]
    of the tokens from `first` = logits_from on (the last only: first = T - 1). `inv_freq`: the
    RoPE frequencies by kind ("global", and "local" for Gemma 3's windowed layers). Model.forward
    runs this same graph in C."""
    T, H, Hkv, hd = len(tokens), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    _check_fits(cache, T)
    first = _first_logit(T, last_only, logits_from)
    n_past = cache.n
    positions = np.arange(n_past, n_past + T, dtype=np.int32)  # [T]
    gate = ops.gelu_mul if cfg.act == "gelu_tanh" else ops.silu_mul

    x = ops.embed(w.tok_embeddings, np.asarray(tokens))  # [T, D]
    if cfg.embed_scale != 1.0:
        x *= np.float32(cfg.embed_scale)
    for l, layer in enumerate(w.layers):
        # attention: x + Wo · attn(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x)
        h = ops.rmsnorm(x, layer.attn_norm, cfg.norm_eps)  # [T, D]
        q = _add_bias(ops.matmul(layer.wq, h), layer.bq).reshape(T, H, hd)  # [T, H, hd]
        k = _add_bias(ops.matmul(layer.wk, h), layer.bk).reshape(T, Hkv, hd)  # [T, Hkv, hd]
        v = _add_bias(ops.matmul(layer.wv, h), layer.bv).reshape(T, Hkv, hd)  # [T, Hkv, hd]
        if cfg.qk_norm:  # each head normed on its own
            q = ops.rmsnorm(q.reshape(T * H, hd), layer.q_norm, cfg.norm_eps).reshape(T, H, hd)
            k = ops.rmsnorm(k.reshape(T * Hkv, hd), layer.k_norm, cfg.norm_eps).reshape(T, Hkv, hd)
        rope = cfg.layer_rope(l)
        if rope != "none":
            mscale = cfg.rope_mscale if rope == "global" else 1.0
            ops.rope_(q, positions, inv_freq[rope], mscale)
            ops.rope_(k, positions, inv_freq[rope], mscale)
        rotated = cache.k.dtype == np.uint8  # a q8_0 cache holds its rows rotated (ops.kv_rotate_)
        if rotated:
            ops.kv_rotate_(q, divide=True)
            ops.kv_rotate_(k)
            ops.kv_rotate_(v)
        ops.store_kv(cache.k[l, :, n_past:n_past + T], k.transpose(1, 0, 2))  # [Hkv, T, hd]: head-major
        ops.store_kv(cache.v[l, :, n_past:n_past + T], v.transpose(1, 0, 2))
        a = ops.attention(q, cache.k[l], cache.v[l], n_past, cfg.layer_window(l), cfg.attn_scale)  # [T, H, hd]
        if rotated:
            ops.kv_rotate_(a, divide=True)
        x += _sublayer_out(cfg, ops.matmul(layer.wo, a.reshape(T, H * hd)), layer.attn_post_norm)  # [T, D]

        # feed-forward: x + W_down · (act(W_gate h) * W_up h),  h = RMSNorm(x)
        h = ops.rmsnorm(x, layer.ffn_norm, cfg.norm_eps)  # [T, D]
        g = gate(ops.matmul(layer.w_gate, h), ops.matmul(layer.w_up, h))  # [T, F]
        x += _sublayer_out(cfg, ops.matmul(layer.w_down, g), layer.ffn_post_norm)  # [T, D]

    cache.n += T
    cache.tokens.extend(int(t) for t in tokens)
    x = ops.rmsnorm(x[first:], w.norm, cfg.norm_eps)  # [T - first, D]
    logits = ops.matmul(w.output, x)  # [T - first, V]
    if cfg.logit_scale != 1.0:
        logits *= np.float32(cfg.logit_scale)
    return logits


MIN_DEFAULT_CONTEXT = 2048  # the default context is capped by memory, but not below this


def kv_bytes_per_position(cfg: ModelConfig, kv_type: str = "f32") -> int:
    """Bytes the KV cache takes per position: keys and values in every layer, of kv_type."""
    row = backends.kv_row_items(kv_type, cfg.head_dim) * np.dtype(backends.KV_DTYPES[kv_type]).itemsize
    return 2 * cfg.n_layers * cfg.n_kv_heads * row


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's MemAvailable; elsewhere
    the free pages), or None where it cannot say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class Model:
    """A loaded model: config, weights (zero-copy views of the file), tokenizer, chat template."""

    def __init__(self, path: str, huge_pages: bool = False, backend: str = "cpu", kv_type: str = "f32"):
        from .tokenizer import Tokenizer
        if backend not in backends.NAMES:
            raise SettingError(f"unknown backend {backend!r}; known: {', '.join(backends.NAMES)}")
        self.kv_type = backends.kv_type_checked(kv_type, backend)  # the caches' element type, before any upload
        self.path = path
        self.file = LlmrFile(path, huge_pages)
        meta = self.file.metadata
        try:
            self.config = ModelConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: bad model config in metadata: {e}") from None
        backends.kv_row_items(self.kv_type, self.config.head_dim)  # q8_0's head dims, before any upload
        self.weights = Weights.from_file(self.file, self.config)
        self.tokenizer = Tokenizer.from_metadata(meta.get("tokenizer"), bytes(self.file.tokenizer_blob), path)
        self.chat_template: str | None = meta.get("chat_template")
        if not isinstance(self.chat_template, (str, type(None))):
            raise FormatError(f"{path}: the chat template in the metadata is not text; convert the model again")
        self.inv_freq = rope_frequencies(self.config)  # {"global": [rd/2], "local": [rd/2] (Gemma 3)}
        self.backend = backends.bind(backend, self.config, self.weights, self.inv_freq)  # a GPU's upload: once, here

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        """A fresh KV cache for up to n_ctx positions (default: default_context()), on the
        backend's device."""
        return KVCache(self.config, n_ctx or self.default_context()[0], self.backend, self.kv_type)

    def default_context(self, slots: int = 1) -> tuple[int, str | None]:
        """(positions, why they are fewer than the trained context or None): the trained context,
        capped so that `slots` KV caches fit in half the memory left beside the weights. The
        cache is mapped lazily, so a too-long context does not fail at once: it runs the
        machine out of memory when a conversation grows, which a cap turns into a notice."""
        trained = self.config.max_seq_len
        free = available_memory()
        if free is None:
            return trained, None
        per_position = kv_bytes_per_position(self.config, self.kv_type) * slots
        room = (free - os.path.getsize(self.path)) // 2
        fits = max(MIN_DEFAULT_CONTEXT, room // per_position // 1024 * 1024)
        if fits >= trained:
            return trained, None
        return fits, (f"{fits} of the model's {trained} positions: what fits in half of the "
                      f"{free / 2**30:.1f} GiB of free memory beside the weights ({per_position / 2**10:.0f} KiB a position"
                      f"{f' for {slots} slots' if slots > 1 else ''}); --ctx sets it")

    def forward(self, tokens, cache: KVCache, last_only: bool = False, reference: bool = False,
                logits_from: int = 0) -> np.ndarray:
        """forward() above: as one call into the kernels (the same ops in the same order, so the
        same logits bit for bit; forward_batch of this one segment), or with `reference`, step by
        step in Python."""
        if reference:
            if cache.k is None:
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
        most = self.backend.max_segments
        if most is not None and len(batch) > most:
            raise SettingError(f"the {self.backend.name} backend runs {most} sequence(s) a call, not {len(batch)}")
        logits = self.backend.forward([(ids, s.cache.n, s.cache.store, first) for s, (ids, first) in zip(batch, runs)])
        for s, (ids, _) in zip(batch, runs):
            s.cache.n += len(ids)
            s.cache.tokens.extend(ids.tolist())
        return logits

    def logits(self, ids) -> np.ndarray:
        """float32 logits [len(ids), V] of `ids` run from a fresh cache."""
        ids = list(ids)
        return self.forward(ids, self.new_cache(len(ids)))


def load(path, huge_pages: bool | None = None, backend: str | None = None, kv_type: str | None = None) -> Model:
    """Open a .llmr file: weights stay in the page cache; nothing is copied or repacked.
    A GGUF file, a Hugging Face checkpoint directory or a Hub name (`org/repo[:QUANT]`, fetched
    with huggingface_hub) is converted into the model cache on first use (see llmrun.store) and
    loaded from there. `huge_pages` (default: the environment
    variable LLMRUN_HUGEPAGES=1) copies the file into memory backed by transparent huge pages,
    for a file whose cached pages are small (llmrun.format._read_into_huge_pages; a file llmrun
    wrote is read back into huge pages anyway: llmrun.format.drop_cached_pages).
    `backend` is "cpu", "webgpu" or "cuda" (default: the environment variable LLMRUN_BACKEND, else cpu).
    `kv_type` is the KV caches' element type, "f32", "f16" (half the memory) or "q8_0" (0.27x
    f32's; a head dim that is a multiple of 32); f16 and q8_0 on the CPU backend only (default:
    the environment variable LLMRUN_KV_TYPE, else f32)."""
    from .store import resolve
    path = resolve(str(path), download=True)
    if huge_pages is None:
        huge_pages = os.environ.get("LLMRUN_HUGEPAGES", "") == "1"
    return Model(path, huge_pages, backend or os.environ.get("LLMRUN_BACKEND") or "cpu",
                 kv_type or os.environ.get("LLMRUN_KV_TYPE") or "f32")
