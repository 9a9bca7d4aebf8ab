"""Logit quality of each weight type against the transformers reference for SmolLM2-135M.

    python benchmarks/quality.py HF_DIR [--reference ../shared/reference/reference.npz] [--types f32 q8_0 q4_0]

For every type: convert HF_DIR, run the three reference prompts, and print per prompt the
max |Δlogit| at the last position (absolute and relative to max |logit|), KL(reference || ours)
and whether the argmax agrees.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import llmrun
from llmrun.models import convert


def log_softmax(z):
    z = z.astype(np.float64) - z.max()
    return z - np.log(np.exp(z).sum())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("--reference", default=os.path.join(here, "..", "..", "shared", "reference", "reference.npz"))
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0", "q4_1", "q4_0"])
    a = ap.parse_args()
    ref = np.load(a.reference)
    print(f"{'type':6} {'prompt':6} {'max|Δ|':>9} {'rel':>9} {'KL':>10} argmax")
    with tempfile.TemporaryDirectory() as tmp:
        for t in a.types:
            path = os.path.join(tmp, f"{t}.llmr")
            convert(a.hf_dir, path, t)
            model = llmrun.load(path)
            for p in ("p0", "p1", "p2"):
                want = ref[f"{p}_logits_last"]
                got = model.logits(ref[f"{p}_ids"].tolist())[-1]
                lp, lq = log_softmax(want), log_softmax(got)
                kl = float((np.exp(lp) * (lp - lq)).sum())
                d = float(np.abs(got - want).max())
                same = "same" if got.argmax() == want.argmax() else "DIFFERENT"
                print(f"{t:6} {p:6} {d:9.5f} {d / np.abs(want).max():9.2e} {kl:10.2e} {same}")


if __name__ == "__main__":
    main()
