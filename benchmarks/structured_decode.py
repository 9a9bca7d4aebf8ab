"""Decode speed with a JSON schema constraining every token (llmrun/grammar.py) against without.

    python benchmarks/structured_decode.py [MODEL] [-t 2] [-r 3]

Without MODEL: SmolLM2-135M-Instruct q4_0, converted into a temporary folder from the checkpoint
the tests keep in the asset cache. Each of the tests' 20 schemas (tests/data/json_schemas.json)
is answered greedily through the chat template with its schema, and without one for as many
tokens (an unconstrained answer may end sooner); the decode rate is all the tokens after the
first over the time they took (the prompt's forward is not in it), per mode. The modes alternate
schema by schema, and the figure is the median of -r rounds. On a shared machine the rounds
swing with the neighbours' load, so it also prints the time the grammar's own calls took a token
against a token's time without: the bound that the schema puts on the speed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import llmrun
from llmrun import _kernels
from llmrun.chat import chat_ids
from llmrun.grammar import Constraint

from grammar_engines import SCHEMAS, default_model


class GrammarClock:
    """Time spent in the grammar's own work (Constraint.mask and advance), for its share of a token."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0
        for name in ("mask", "advance"):
            setattr(Constraint, name, self._timed(getattr(Constraint, name)))

    def _timed(self, f):
        def timed(*args):
            t0 = time.perf_counter()
            try:
                return f(*args)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += f.__name__ == "mask"
        return timed


def decode(model, ids, max_tokens, schema=None) -> tuple[int, float]:
    """(tokens after the first, seconds they took) of a greedy answer."""
    last = None
    for last in llmrun.generate(model, ids, max_tokens=max_tokens, temperature=0, json_schema=schema):
        pass
    n = last.generation_tokens - 1
    return n, n / last.generation_tps if n else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    args = ap.parse_args()
    _kernels.set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = llmrun.load(args.model or default_model(tmp))
    cases = json.loads(Path(SCHEMAS).read_text())
    prompts = [chat_ids(model, [{"role": "user", "content": c["prompt"]}]) for c in cases]
    decode(model, prompts[0], 8, cases[0]["schema"])  # warm-up: the engine's vocabulary, caches
    clock = GrammarClock()
    ratios, plain_rates = [], []
    for r in range(args.rounds):
        totals = {"plain": [0, 0.0], "schema": [0, 0.0]}
        for c, ids in zip(cases, prompts):
            n, t = decode(model, ids, 300, c["schema"])
            totals["schema"][0] += n
            totals["schema"][1] += t
            n, t = decode(model, ids, n + 1)
            totals["plain"][0] += n
            totals["plain"][1] += t
        rates = {k: n / t for k, (n, t) in totals.items()}
        plain_rates.append(rates["plain"])
        ratios.append(rates["schema"] / rates["plain"])
        print(f"round {r + 1}: without {rates['plain']:.1f} tok/s ({totals['plain'][0]} tokens), "
              f"with a schema {rates['schema']:.1f} tok/s ({totals['schema'][0]} tokens): {ratios[-1]:.1%}")
    print(f"with a schema / without, median of {args.rounds} rounds, {args.threads} threads: {statistics.median(ratios):.1%}")
    per_token = clock.seconds / clock.calls
    plain = 1 / statistics.median(plain_rates)
    print(f"the grammar's own work: {per_token * 1e6:.0f} µs a token (mask and advance), against {plain * 1e6:.0f} µs "
          f"a token without (median round): {plain / (plain + per_token):.1%} of the speed at most")


if __name__ == "__main__":
    main()
