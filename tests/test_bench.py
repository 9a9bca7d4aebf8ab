"""`llmrun bench`: the report's shape and fields (speed itself is measured, never asserted)."""
from __future__ import annotations

import json

import llmrun
from llmrun.bench import bench

from conftest import make_hf_checkpoint, run_cli


def test_bench_reports_pp_and_tg_per_thread_count(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    r = run_cli("bench", tmp_path / "hf", "-p", "16", "-n", "8", "-t", "1,2", "-r", "2", "-o", "json", check=True)
    rows = json.loads(r.stdout)
    assert [(x["test"], x["threads"]) for x in rows] == [("pp16", 1), ("tg8", 1), ("pp16", 2), ("tg8", 2)]
    for x in rows:
        assert x["avg_ts"] > 0 and x["stddev_ts"] >= 0 and x["model_bytes"] > 0
        assert x["type"] == "f16" and x["kv_type"] == "f32" and x["isa"]
        assert (x["gb_s"] is None) == x["test"].startswith("pp")
    md = run_cli("bench", tmp_path / "hf", "-p", "8", "-n", "4", "-t", "1", "-r", "1", check=True).stdout.splitlines()
    assert md[0].startswith("| model") and len(md) == 4 and "pp8" in md[2] and "tg4" in md[3]
    csv = run_cli("bench", tmp_path / "hf", "-p", "0", "-n", "4", "-t", "1", "-r", "1", "-o", "csv", check=True)
    assert csv.stdout.splitlines()[0].startswith("model,size") and len(csv.stdout.splitlines()) == 2


def test_bench_at_a_depth(tmp_path):
    """-d D: each test starts from a cache already holding D tokens (llama-bench's "@ dD")."""
    make_hf_checkpoint(tmp_path / "hf")
    r = run_cli("bench", tmp_path / "hf", "-p", "8", "-n", "4", "-t", "1", "-r", "2", "-d", "40", "-o", "json",
                check=True)
    rows = json.loads(r.stdout)
    assert [x["test"] for x in rows] == ["pp8 @ d40", "tg4 @ d40"] and all(x["avg_ts"] > 0 for x in rows)

    model = llmrun.load(tmp_path / "hf")
    starts = []  # (tokens, the cache's positions before) of every forward
    forward = model.forward
    model.forward = lambda ids, cache, **kw: starts.append((len(ids), cache.n)) or forward(ids, cache, **kw)
    bench(model, "hf", n_prompt=8, n_gen=3, repetitions=2, depth=40)
    pp, tg = [s for s in starts if s[0] == 8], [s for s in starts if s[0] == 1]
    assert pp == [(8, 40)] * 3  # the warm-up and two runs, each from the 40 tokens of context
    assert tg == [(1, 40), (1, 41), (1, 42)] * 3
    assert sum(n for n, at in starts if n not in (1, 8)) == 2 * 40  # the context, once per test


def test_bench_bad_flags(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    for args in (["-t", "one"], ["-o", "xml"], ["-d", "-1"]):
        r = run_cli("bench", tmp_path / "hf", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
