"""Speed tests in the manner of llama-bench: prompt processing (pp) and token generation (tg).

pp<N>: N prompt tokens through one forward from an empty cache. tg<N>: N tokens one forward at a
time from an empty cache. With a depth D (llama-bench's -d), both start instead from a cache
holding D tokens already (filled once, untimed; each run goes back to it): "pp<N> @ d<D>",
"tg<N> @ d<D>", where attention over the context, not the weights, may set the speed. Each test
runs once to warm up, then `repetitions` times; tokens/s is reported as mean and standard
deviation. For tg the weight bytes read per token (every matrix once; the embedding table only
when it is also the output head) give the achieved GB/s (the KV cache's bytes not counted).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _kernels
from .model import Model


@dataclass
class BenchResult:
    model: str
    type: str  # the type most of the weight bytes are in
    kv_type: str  # the KV cache's element type (llmrun.backends.KV_DTYPES: f32, f16, q8_0)
    model_bytes: int
    params: int
    isa: str
    threads: int
    test: str  # "pp512", "tg128", "tg128 @ d4096"
    n_tokens: int
    avg_ts: float  # tokens/s, mean over the repetitions
    stddev_ts: float
    gb_s: float | None  # achieved weight bandwidth, tg only

    def to_dict(self) -> dict:
        return asdict(self)


def bytes_per_token(model: Model) -> int:
    """Weight bytes one decode step reads: every matrix, and the embedding table only as the head."""
    f = model.file
    return sum(t.nbytes for name, t in f.tensors.items()
               if name != "tok_embeddings" or model.config.tie_embeddings)


def _main_type(model: Model) -> str:
    by_type: dict[str, int] = {}
    for t in model.file.tensors.values():
        by_type[t.type.name] = by_type.get(t.type.name, 0) + t.nbytes
    return max(by_type, key=by_type.get)


def _time_pp(model: Model, ids: list[int], cache, depth: int) -> float:
    cache.truncate(depth)
    start = time.perf_counter()
    model.forward(ids, cache, last_only=True)
    return len(ids) / (time.perf_counter() - start)


def _time_tg(model: Model, ids: list[int], cache, depth: int) -> float:
    cache.truncate(depth)
    start = time.perf_counter()
    for token in ids:
        model.forward([token], cache)
    return len(ids) / (time.perf_counter() - start)


def _cache_at_depth(model: Model, context: list[int], n: int):
    """A cache with room for n more tokens after `context`, which it holds (one untimed prefill,
    in pieces of 512 tokens)."""
    cache = model.new_cache(len(context) + n)
    for i in range(0, len(context), 512):
        model.forward(context[i:i + 512], cache, last_only=True)
    return cache


def bench(model: Model, name: str, n_prompt: int = 512, n_gen: int = 128, threads=(1,), repetitions: int = 3,
          seed: int = 0, depth: int = 0) -> list[BenchResult]:
    """Run pp<n_prompt> and tg<n_gen> (either may be 0 to skip) for each thread count (once,
    with threads 0, for a model on a GPU backend: its kernels use no CPU threads), from a cache
    holding `depth` tokens."""
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    tensors = model.file.tensors.values()
    size, params = sum(t.nbytes for t in tensors), sum(int(np.prod(t.shape)) for t in tensors)
    per_token = bytes_per_token(model)
    results = []
    sweep = model.backend.cpu_threads
    for n_threads in threads if sweep else (0,):
        if sweep:
            _kernels.set_threads(n_threads)
        for test, n, timer in (("pp", n_prompt, _time_pp), ("tg", n_gen, _time_tg)):
            if not n:
                continue
            context, ids = rng.integers(0, vocab, depth).tolist(), rng.integers(0, vocab, n).tolist()
            cache = _cache_at_depth(model, context, n)
            timer(model, ids, cache, depth)  # warm-up: page in the weights, size the buffers
            rates = [timer(model, ids, cache, depth) for _ in range(repetitions)]
            avg = statistics.fmean(rates)
            results.append(BenchResult(
                model=name, type=_main_type(model), kv_type=model.kv_type, model_bytes=size, params=params,
                isa=_kernels.isa() if model.backend.name == "cpu" else model.backend.name,
                threads=n_threads, test=f"{test}{n}" + (f" @ d{depth}" if depth else ""), n_tokens=n, avg_ts=avg,
                stddev_ts=statistics.stdev(rates) if len(rates) > 1 else 0.0,
                gb_s=avg * per_token / 1e9 if test == "tg" else None))
    return results
