"""The bounded fuzz run: every parser of untrusted input (tests/fuzz/targets.py) on its corpus
(seeds, and every input that once found a bug), then on mutations of it for a few seconds.

Each target runs in a process of its own, so a segfault or a sanitizer abort fails the test
with the input that caused it instead of killing the suite. The long coverage-guided run is
`python tests/fuzz/run.py TARGET --seconds 1200` (docs/security.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
TARGETS = ("llmr", "gguf", "hf", "tokenizer", "template")
SECONDS = float(os.environ.get("LLMRUN_FUZZ_SECONDS", "8"))  # per target: five of them, under a minute


def test_every_target_has_seeds():
    for target in TARGETS:
        assert len(list((FUZZ / "corpus" / target).glob("seed-*"))) >= 2, target


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target, tmp_path):
    r = subprocess.run([sys.executable, str(FUZZ / "run.py"), target, "--mutate", "--seconds", str(SECONDS),
                        "--hang", "30"], capture_output=True, text=True, timeout=SECONDS + 300, cwd=tmp_path)
    assert r.returncode == 0, f"{target} failed (exit {r.returncode}):\n{r.stderr[-4000:]}"
    executions = int(r.stdout.split(": ")[1].split()[0])
    seeds = len(list((FUZZ / "corpus" / target).iterdir()))
    assert executions > seeds, r.stdout  # the corpus, and mutations beyond it
