"""Where a forward step's time goes: each op of the Python reference graph timed on its own,
beside the step as one call into the C forward pass.

    python benchmarks/profile.py MODEL.llmr [--prompt 512] [--steps 128] [-t 1,2]

For a prompt of --prompt tokens and for --steps single-token decode steps after it, per thread
count: milliseconds per step in matmul, attention, the small ops and the Python between them
(the reference graph, llmrun.model.forward, runs the same kernels in the same order as the C
forward pass), and the C forward pass's own time for the same step. The Python graph's total
minus the C pass's is what running the layer loop in Python costs.
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

OPS = ["matmul", "attention", "rmsnorm", "rope_", "silu_mul", "embed"]


def timed_ops(module, totals):
    """Wrap module's ops to add their wall time to totals; returns a function that undoes it."""
    originals = {name: getattr(module, name) for name in OPS}

    def wrap(name, f):
        def timed(*args):
            t0 = time.perf_counter()
            out = f(*args)
            totals[name] += time.perf_counter() - t0
            return out
        return timed

    for name, f in originals.items():
        setattr(module, name, wrap(name, f))
    return lambda: [setattr(module, name, f) for name, f in originals.items()]


def profile(model, prompt: list[int], steps: int) -> dict[str, dict[str, float]]:
    from llmrun import model as graph
    out = {}
    for phase in ("prefill", "decode"):
        per_step = {}
        for reference in (True, False):
            totals = collections.defaultdict(float)
            undo = timed_ops(graph.ops, totals)
            try:
                cache = model.new_cache(len(prompt) + steps + 1)
                if phase == "decode":
                    model.forward(prompt, cache, last_only=True)
                    totals.clear()
                t0 = time.perf_counter()
                for i in range(steps if phase == "decode" else 1):
                    model.forward(prompt if phase == "prefill" else [prompt[i % len(prompt)]], cache,
                                  last_only=True, reference=reference)
                total = (time.perf_counter() - t0) / (steps if phase == "decode" else 1)
            finally:
                undo()
            n = steps if phase == "decode" else 1
            if reference:
                per_step = {name: totals[name] / n for name in OPS}
                per_step["python"] = total - sum(per_step.values())
                per_step["python graph total"] = total
            else:
                per_step["C forward total"] = total
        out[phase] = per_step
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("-t", "--threads", default="1,2")
    a = ap.parse_args()
    import llmrun
    from llmrun import _kernels
    model = llmrun.load(a.model)
    prompt = [int(i) for i in np.random.default_rng(0).integers(100, model.config.vocab_size - 1, a.prompt)]
    model.forward(prompt[:8], model.new_cache(16))  # warm the pages and the pool
    for t in a.threads.split(","):
        _kernels.set_threads(int(t))
        result = profile(model, prompt, a.steps)
        for phase, per_step in result.items():
            total = per_step["python graph total"]
            print(f"\n{a.model}, {phase} ({a.prompt} tokens{'' if phase == 'prefill' else ' before'}), "
                  f"{t} thread(s), {_kernels.isa()}: ms per step")
            print("| part | ms | share of the Python graph |")
            print("|---|---|---|")
            for name, seconds in per_step.items():
                print(f"| {name} | {seconds * 1e3:.3f} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
