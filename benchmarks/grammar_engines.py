"""The two grammar engines llmrun could constrain sampling with, side by side on one model's
vocabulary: llguidance (what llmrun uses: llmrun/grammar.py) and outlines-core.

    python benchmarks/grammar_engines.py [MODEL] [-r 5] [--samples 3]

MODEL is a .llmr file (or anything llmrun.load takes); without one, SmolLM2-135M-Instruct
(49152 tokens) q4_0, converted into a temporary folder from the checkpoint the tests keep in
the asset cache. The schemas are the tests' 20 (tests/data/json_schemas.json), each with an
example instance. For each engine and schema:

- compile: the time from the schema to something that masks (llguidance: a matcher; outlines-core:
  a regex, then an index over the whole vocabulary);
- mask: the time of one token's mask, written as a bitmask of the vocabulary, at each token of
  the example (json.dumps's style, tokenised by the model's tokenizer), which must be allowed all
  the way: medians of -r walks;
- enforced: the model's answers to the schema's prompt under the engine's masks (one greedy,
  --samples more at temperature 1 with seeds 0, 1, ...), each validated with jsonschema: an
  engine that accepts a schema but lets invalid text through has not covered it.

Both engines and jsonschema need to be installed (pip install llguidance outlines-core jsonschema).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import numpy as np

import llmrun
from llmrun import _kernels
from llmrun.chat import chat_ids
from llmrun.generation import Decoding
from llmrun.grammar import JSON_STYLE, Grammar

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "tests" / "data" / "json_schemas.json"
MAX_TOKENS = 300


def default_model(tmp: str) -> str:
    assets = Path(os.environ.get("LLMRUN_TEST_ASSETS", Path.home() / ".cache" / "llmrun-test-assets"))
    hf = assets / "smollm2-hf-float32"
    if not hf.is_dir():
        sys.exit(f"{hf} is not there: give a .llmr model, or run the SmolLM2 tests once to make it")
    from llmrun.models import convert
    path = os.path.join(tmp, "smollm2-q4_0.llmr")
    convert(str(hf), path, "q4_0")
    return path


def installed_mib(dist: str) -> float:
    return sum(f.locate().stat().st_size for f in importlib.metadata.files(dist) if f.locate().exists()) / 2**20


class LLGuidance:
    name, dist = "llguidance", "llguidance"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        Grammar.from_json_schema(tokenizer, {})  # the vocabulary, set up once per tokenizer

    def compile(self, schema):
        return Grammar.from_json_schema(self.tokenizer, schema)

    def state(self, compiled):
        return compiled.constraint().matcher

    def fill(self, matcher, bits):
        matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)

    def advance(self, matcher, token):
        if not matcher.consume_token(token):
            raise ValueError(matcher.get_error())

    def finished(self, matcher):
        return matcher.is_stopped()


class OutlinesCore:
    name, dist = "outlines-core", "outlines_core"

    def __init__(self, tokenizer):
        import outlines_core
        self.oc = outlines_core
        self.eos = tokenizer.eos_ids[0]
        special = set(tokenizer.eos_ids) | {tokenizer.bos_id}
        if tokenizer.kind == "bpe":  # added tokens (<|im_start|>...) are not text
            added = json.loads(tokenizer.to_json()).get("added_tokens", [])
            special |= {t["id"] for t in added if t.get("special")}
        pieces: dict[bytes, list[int]] = {}
        for i in range(tokenizer.vocab_size):
            if i not in special:
                pieces.setdefault(tokenizer.token_bytes(i), []).append(i)
        self.vocabulary = outlines_core.Vocabulary(self.eos, pieces)

    def compile(self, schema):
        # one optional space where json.dumps writes one, the nearest to llguidance's JSON_STYLE
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?")
        return self.oc.Index(regex, self.vocabulary)

    def state(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, guide, bits):
        guide.write_mask_into(bits.ctypes.data, bits.size, 4)

    def advance(self, guide, token):
        guide.advance(token, return_tokens=False)

    def finished(self, guide):
        return guide.get_tokens() == [self.eos]


class EngineGrammar:
    """Either engine's compiled schema as llmrun's Decoding takes a grammar: constraint() gives
    each sequence an object with mask(logits), advance(token) and finished."""

    def __init__(self, engine, compiled, vocab_size: int):
        self.engine, self.compiled, self.words = engine, compiled, (vocab_size + 31) // 32

    def constraint(self):
        grammar = self

        class Constraint:
            def __init__(self):
                self.state, self.bits = grammar.engine.state(grammar.compiled), np.zeros(grammar.words, np.int32)

            def mask(self, logits):
                grammar.engine.fill(self.state, self.bits)
                allowed = np.unpackbits(self.bits.view(np.uint8), count=len(logits), bitorder="little").view(bool)
                return np.where(allowed, logits, np.float32(-np.inf))

            def advance(self, token):
                grammar.engine.advance(self.state, token)

            @property
            def finished(self):
                return grammar.engine.finished(self.state)

        return Constraint()


def mask_walk(engine, compiled, ids, bits, rounds: int) -> list[float]:
    """Each token's median mask time over `rounds` walks through `ids`, all of which must be allowed."""
    per_token = [[] for _ in ids]
    for _ in range(rounds):
        state = engine.state(compiled)
        for i, token in enumerate(ids):
            t0 = time.perf_counter()
            engine.fill(state, bits)
            per_token[i].append(time.perf_counter() - t0)
            if not bits[token // 32] >> (token % 32) & 1:
                raise ValueError(f"token {i} of the example is masked")
            engine.advance(state, token)
    return [statistics.median(t) for t in per_token]


def answers_valid(model, engine, compiled, case, samples: int) -> tuple[int, int]:
    """(valid, finished) of the model's answers to the case's prompt under the engine's masks."""
    ids = chat_ids(model, [{"role": "user", "content": case["prompt"]}])
    grammar = EngineGrammar(engine, compiled, model.config.vocab_size)
    valid = finished = 0
    for temperature, seed in [(0, None)] + [(1.0, s) for s in range(samples)]:
        records = []
        d = Decoding(model, MAX_TOKENS, grammar=grammar, temperature=temperature, seed=seed, top_k=0, top_p=1.0)
        cache = model.new_cache(len(ids) + MAX_TOKENS)
        d.begin(cache, len(ids))
        logits = model.forward(ids, cache, last_only=True)[-1]
        while not records or not records[-1].finish_reason:
            records.append(d.step(logits))
            logits = model.forward([records[-1].token], cache)[-1]
        if records[-1].finish_reason != "stop":
            continue
        finished += 1
        try:
            jsonschema.validate(json.loads("".join(r.text for r in records)), case["schema"],
                                format_checker=jsonschema.FormatChecker())
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    return valid, finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=3, help="sampled answers per schema, besides the greedy one")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    _kernels.set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = llmrun.load(args.model or default_model(tmp))
    tokenizer = model.tokenizer
    cases = json.loads(SCHEMAS.read_text())
    bits = np.zeros((tokenizer.vocab_size + 31) // 32, np.int32)
    print(f"vocabulary: {tokenizer.vocab_size} tokens; {len(cases)} schemas; mask times: medians of {args.rounds} "
          f"walks; answers: 1 greedy + {args.samples} sampled a schema\n")
    summary = []
    for engine_class in (LLGuidance, OutlinesCore):
        t0 = time.perf_counter()
        engine = engine_class(tokenizer)
        setup = time.perf_counter() - t0
        print(f"## {engine.name} {importlib.metadata.version(engine.dist)}: vocabulary set up in {setup * 1e3:.0f} ms, "
              f"{installed_mib(engine.dist):.1f} MiB installed\n")
        print("| schema | compile ms | example tokens | mask µs (median) | mask µs (max) | valid answers |\n"
              "|---|---|---|---|---|---|")
        compiled_n, enforced, compile_times, mask_times, answers = 0, 0, [], [], [0, 0]
        for case in cases:
            t0 = time.perf_counter()
            try:
                compiled = engine.compile(case["schema"])
            except Exception as e:  # noqa: BLE001 (what the engine cannot take is the measurement)
                print(f"| {case['name']} | refused: {str(e).splitlines()[0][:80]} | | | | |")
                continue
            compile_times.append(time.perf_counter() - t0)
            compiled_n += 1
            try:
                medians = mask_walk(engine, compiled, tokenizer.encode(json.dumps(case["example"]),
                                                                       add_special_tokens=False), bits, args.rounds)
                mask_times += medians
                masks = f"{len(medians)} | {statistics.median(medians) * 1e6:.1f} | {max(medians) * 1e6:.0f}"
            except Exception as e:  # noqa: BLE001
                masks = f"wrong: {str(e)[:60]} | | "
            valid, finished = answers_valid(model, engine, compiled, case, args.samples)
            answers[0] += valid
            answers[1] += finished
            enforced += valid == finished
            print(f"| {case['name']} | {compile_times[-1] * 1e3:.1f} | {masks} | {valid}/{finished} |")
        summary.append(
            f"{engine.name}: compiles {compiled_n}/{len(cases)} schemas, enforces {enforced} (valid answers "
            f"{answers[0]}/{answers[1]} finished); compile median {statistics.median(compile_times) * 1e3:.1f} ms, "
            f"max {max(compile_times) * 1e3:.0f} ms; mask a token median {statistics.median(mask_times) * 1e6:.1f} µs, "
            f"mean {statistics.mean(mask_times) * 1e6:.1f} µs, max {max(mask_times) * 1e6:.0f} µs; "
            f"vocabulary {setup * 1e3:.0f} ms")
        print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
