"""`llmrun bench`: the report's shape and fields (speed itself is measured, never asserted)."""
from __future__ import annotations

import json

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


def test_bench_bad_flags(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    for args in (["-t", "one"], ["-o", "xml"]):
        r = run_cli("bench", tmp_path / "hf", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
