"""Decode speed of B sequences stepped together (Model.forward_batch), as a server's continuous
batching runs them: one forward per step for all B, so each weight is read once per step.

    python benchmarks/batch_decode.py [MODEL.llmr] [-b 1,2,4,8] [-t 2] [--prompt 32] [-n 64] [-r 3]
                                      [--backend cpu|cuda|webgpu]

Without MODEL: SmolLM2-135M-Instruct q4_0, converted into a temporary folder from the float32
checkpoint the tests keep in the asset cache ($LLMRUN_TEST_ASSETS, else
~/.cache/llmrun-test-assets/smollm2-hf-float32). For each B: B caches, each prefilled with its
own --prompt random tokens (not timed), then -n decode steps of B tokens, one forward_batch a
step (on CUDA: one device step, its graph captured at the first). Prints ms per step, aggregate tokens/s (B tokens a step), its ratio to the first B (1),
and the weight bytes a step reads over its time (GB/s). Speed does not depend on the token
values, so they are random. Medians of -r rounds, each round every B in turn, after a warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import llmrun
from llmrun import _kernels
from llmrun.bench import bytes_per_token
from llmrun.model import Segment


def default_model(tmp: str) -> str:
    assets = Path(os.environ.get("LLMRUN_TEST_ASSETS", Path.home() / ".cache" / "llmrun-test-assets"))
    hf = assets / "smollm2-hf-float32"
    if not hf.is_dir():
        sys.exit(f"{hf} is not there: give a .llmr model, or run the SmolLM2 tests once to make it")
    from llmrun.models import convert
    path = os.path.join(tmp, "smollm2-q4_0.llmr")
    convert(str(hf), path, "q4_0")
    return path


def seconds_per_step(model, batch: int, n_prompt: int, n_gen: int, rng) -> float:
    """Wall time of one decode step of `batch` sequences, over n_gen steps after their prompts."""
    vocab = model.config.vocab_size
    caches = [model.new_cache(n_prompt + n_gen) for _ in range(batch)]
    model.forward_batch([Segment(rng.integers(0, vocab, n_prompt).tolist(), c, last_only=True) for c in caches])
    steps = rng.integers(0, vocab, (n_gen, batch)).tolist()  # [n_gen, B]
    start = time.perf_counter()
    for ids in steps:
        model.forward_batch([Segment([t], c) for t, c in zip(ids, caches)])
    return (time.perf_counter() - start) / n_gen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a .llmr file (default: SmolLM2-135M q4_0)")
    ap.add_argument("-b", "--batch", default="1,2,4,8", help="sequence counts, comma-separated")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence before decoding")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="decode steps timed")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "webgpu"])
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",")]
    _kernels.set_threads(a.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = llmrun.load(a.model or default_model(tmp), backend=a.backend)
        per_step = bytes_per_token(model)  # weight bytes a step reads, whatever B
        where = f"{_kernels.isa()}, {a.threads} threads" if a.backend == "cpu" else a.backend
        print(f"{a.model or 'SmolLM2-135M q4_0'}: {where}, prompt {a.prompt}, "
              f"{a.n_gen} steps, median of {a.repetitions}")
        for b in batches:  # warm-up: pages, pool, allocator
            seconds_per_step(model, b, a.prompt, a.n_gen, rng)
        # rounds of every B in turn, so that a neighbour's load or a clock change falls on all alike
        times = {b: [] for b in batches}
        for _ in range(a.repetitions):
            for b in batches:
                times[b].append(seconds_per_step(model, b, a.prompt, a.n_gen, rng))
        print(f"{'B':>3} {'ms/step':>8} {'tok/s':>8} {f'vs B={batches[0]}':>7} {'GB/s':>6}")
        base = batches[0] / statistics.median(times[batches[0]])
        for b in batches:
            step = statistics.median(times[b])
            print(f"{b:3d} {step * 1e3:8.2f} {b / step:8.1f} {b / step / base:7.2f} {per_step / step / 1e9:6.1f}")


if __name__ == "__main__":
    main()
