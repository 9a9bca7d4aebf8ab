"""How much a quantised file's kernels add to its own quantisation error, for llmrun and llama.cpp.

    LLAMA_CPP_BIN=/path/to/llama.cpp/bin python benchmarks/kquant_fidelity.py FILE.gguf [...] \
        [-f TEXT] [-c 512] [--chunks 20]

A GGUF's blocks stand for exact values: its dequantisation, written as an F32 GGUF by llama-quantize
(`--allow-requantize FILE F32`: ggml's own dequantisers, every value exact in float32), is the
reference each engine is held to. Each engine runs both files by llama.cpp's perplexity method (the
second half of each context-size chunk scored) and reports the mean KL divergence of the file's
next-token distributions from the reference's: what its kernels lose (activations quantised on the
fly, float summation order), with the weights' own error taken out. llmrun runs its lossless import
of each file (`llmrun perplexity --save-logits` / `--kl-divergence`; KL over the reference's top
log-probabilities plus one bucket for the rest), llama.cpp its own `llama-perplexity
--kl-divergence-base` / `--kl-divergence` (full vocabulary). llama.cpp is built outside this
repository and never committed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(out.stderr or out.stdout)[-2000:]}")
    return out.stdout + out.stderr


def llmrun_kld(model: str, reference: str, text: str, ctx: int, chunks: int, tmp: str) -> float:
    base = os.path.join(tmp, os.path.basename(reference) + ".npz")
    if not os.path.exists(base):
        run([sys.executable, "-m", "llmrun.cli.main", "perplexity", reference, "-f", text, "-c", str(ctx),
             "--chunks", str(chunks), "--save-logits", base])
    out = subprocess.run([sys.executable, "-m", "llmrun.cli.main", "perplexity", model, "-f", text, "-c", str(ctx),
                          "--chunks", str(chunks), "--kl-divergence", base, "--output", "json"],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["kld_mean"])  # the JSON's full precision: the table's 6 decimals show 0


def llama_cpp_kld(bin_dir: str, model: str, reference: str, text: str, ctx: int, chunks: int, tmp: str) -> float:
    exe = os.path.join(bin_dir, "llama-perplexity")
    base = os.path.join(tmp, os.path.basename(reference) + ".kld")
    common = ["-f", text, "-c", str(ctx), "--chunks", str(chunks), "-t", "2"]
    if not os.path.exists(base):
        run([exe, "-m", reference, "--kl-divergence-base", base, *common])
    out = run([exe, "-m", model, "--kl-divergence-base", base, "--kl-divergence", *common])
    return float(re.search(r"Mean\s+KLD:\s+([0-9.e+-]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", nargs="+")
    ap.add_argument("-f", "--file", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                         "janeausten", "prideprejudice.txt"))
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    a = ap.parse_args()
    bin_dir = os.environ.get("LLAMA_CPP_BIN")
    if not bin_dir:
        sys.exit("set LLAMA_CPP_BIN to the folder with llama.cpp's llama-quantize and llama-perplexity")
    if not os.path.exists(a.file):
        sys.exit(f"{a.file}: no such text; pass -f")
    print("| file | llmrun mean KLD | llama.cpp mean KLD |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for path in a.gguf:
            reference = os.path.join(tmp, os.path.basename(path).replace(".gguf", "-dequantised-f32.gguf"))
            run([os.path.join(bin_dir, "llama-quantize"), "--allow-requantize", path, reference, "F32"])
            ours = llmrun_kld(path, reference, a.file, a.ctx_size, a.chunks, tmp)
            theirs = llama_cpp_kld(bin_dir, path, reference, a.file, a.ctx_size, a.chunks, tmp)
            print(f"| {os.path.basename(path)} | {ours:.3g} | {theirs:.3g} |", flush=True)
            os.remove(reference)


if __name__ == "__main__":
    main()
