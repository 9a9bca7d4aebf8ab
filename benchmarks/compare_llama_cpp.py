"""llmrun against llama.cpp on the same model file, runs alternating, medians and ratios.

    LLAMA_BENCH=/path/to/llama-bench python benchmarks/compare_llama_cpp.py MODEL.gguf [-t 1,2] [--rounds 3]

llama-bench reads the GGUF; llmrun benchmarks its own lossless import of it (converted into the
model cache once). Each round runs both tools once per thread count, one after the other, so a
drift in the machine's speed hits both; the table shows the median of the rounds' tokens/s and
llmrun / llama.cpp. llama.cpp is built outside this repository and never committed: its source
ships in the llama-cpp-python sdist (`pip download --no-deps --no-build-isolation --no-binary llama-cpp-python
llama-cpp-python==0.3.36`, unpack, `cmake -B build vendor/llama.cpp && cmake --build build
--target llama-bench`).

Each round also measures the machine's memory read bandwidth (benchmarks/membw.c, compiled here
with the system C compiler: the median of passes over about a second) at each thread count,
just before and just after llmrun's runs, so decode's achieved GB/s (every weight read once per
token) can be set against what the memory gave in the same minute; and the read bandwidth of
each tool's own file's pages (membw over the page cache, after the round's runs): in a virtual
machine memory's speed differs from page to page (on this project's Zen 4 VM the GGUF and its
.llmr read at 27 and 24 GB/s on one core), so each tool's decode is also set against its file's.

`--fresh-pages` takes the page placement out of the comparison: at the start of each round both
files are written anew at the same moment (the GGUF copied into a temporary folder beside it,
under its own name and mtime, which llmrun's cache resolves to the same .llmr; the .llmr
rewritten in place) and dropped from the page cache, so that both tools read pages the machine
has just placed, in the folios their own maps ask for (llmrun.format.drop_cached_pages).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from llmrun.format import drop_cached_pages
from llmrun.store import resolve


def run_json(cmd: list[str]) -> list[dict]:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def build_membw(out_dir: str) -> str:
    exe = os.path.join(out_dir, "membw")
    src = Path(__file__).with_name("membw.c")
    cc = os.environ.get("CC", "cc")
    done = subprocess.run([cc, "-O2", "-mavx2", "-pthread", str(src), "-o", exe], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"cannot build {src} with {cc}:\n{done.stderr[-2000:]}")
    return exe


def read_bandwidth(membw: str, threads: str, file: str | None = None) -> float:
    """The median read GB/s of membw's passes, over fresh memory or over file's cached pages."""
    cmd = [membw, threads] + (["1024", "41", file] if file else [])
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[0])


def rewrite(path: str, dest: str) -> None:
    """Writes path's bytes anew at dest (mtime kept), through a temporary file renamed into place."""
    tmp = dest + ".fresh-pages"
    try:
        shutil.copy2(path, tmp)
        os.replace(tmp, dest)
    finally:  # interrupted or disk full: no copy left beside the file
        if os.path.exists(tmp):
            os.remove(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", default="2")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fresh-pages", action="store_true",
                    help="write both tools' files anew before each round (see the module's text)")
    a = ap.parse_args()
    llama_bench = os.environ.get("LLAMA_BENCH")
    if not llama_bench:
        sys.exit("set LLAMA_BENCH to the llama-bench binary")
    rates: dict[tuple, list[float]] = {}
    gbs: dict[tuple, list[float]] = {}
    membw = build_membw(tempfile.mkdtemp())
    gguf = a.gguf
    fresh_dir = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(a.gguf))) if a.fresh_pages else None
    try:
        for _ in range(a.rounds):
            if fresh_dir:
                gguf = os.path.join(fresh_dir, os.path.basename(a.gguf))
                rewrite(a.gguf, gguf)
                llmr = resolve(gguf)
                rewrite(llmr, llmr)
                for path in (gguf, llmr):  # each read back in the folios its tool's map asks for
                    drop_cached_pages(path)
            run_round(a, llama_bench, membw, gguf, rates, gbs)
    finally:
        if fresh_dir:
            shutil.rmtree(fresh_dir)
    report(a, rates, gbs)


def run_round(a, llama_bench: str, membw: str, gguf: str, rates: dict, gbs: dict) -> None:
    """Both tools once per thread count, with the memory's and the files' read bandwidth."""
    common = ["-p", str(a.n_prompt), "-n", str(a.n_gen), "-r", str(a.repetitions), "-o", "json"]
    for t in a.threads.split(","):
        for row in run_json([llama_bench, "-m", gguf, "-t", t, *common]):
            test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
            rates.setdefault(("llama.cpp", test, int(t)), []).append(row["avg_ts"])
            if not row["n_prompt"]:  # decode reads the model's tensors once per token
                gbs.setdefault(("llama.cpp", int(t)), []).append(row["avg_ts"] * row["model_size"] / 1e9)
        before = read_bandwidth(membw, t)
        for row in run_json([sys.executable, "-m", "llmrun.cli.main", "bench", gguf, "-t", t, *common]):
            rates.setdefault(("llmrun", row["test"], row["threads"]), []).append(row["avg_ts"])
            if row.get("gb_s"):
                gbs.setdefault(("llmrun", row["threads"]), []).append(row["gb_s"])
        gbs.setdefault(("memory", int(t)), []).append((before + read_bandwidth(membw, t)) / 2)
        for tool, path in (("llama.cpp", gguf), ("llmrun", resolve(gguf))):
            gbs.setdefault((tool + " file", int(t)), []).append(read_bandwidth(membw, t, path))


def report(a, rates: dict, gbs: dict) -> None:
    """The medians as two markdown tables: speeds and ratios, then decode against read bandwidth."""
    print(f"| test | threads | llama.cpp t/s | llmrun t/s | llmrun / llama.cpp |")
    print("|---|---|---|---|---|")
    for (tool, test, t), values in sorted(rates.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if tool != "llama.cpp":
            continue
        theirs, ours = statistics.median(values), statistics.median(rates[("llmrun", test, t)])
        print(f"| {test} | {t} | {theirs:.1f} | {ours:.1f} | {ours / theirs:.2f} |")
    if not a.n_gen:
        return
    print()
    print("| threads | memory read GB/s | llmrun decode GB/s | share | .llmr pages GB/s | share "
          "| llama.cpp decode GB/s | GGUF pages GB/s | share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in a.threads.split(","):
        mem, ours, theirs, our_file, their_file = (statistics.median(gbs[(key, int(t))]) for key in (
            "memory", "llmrun", "llama.cpp", "llmrun file", "llama.cpp file"))
        print(f"| {t} | {mem:.1f} | {ours:.1f} | {ours / mem:.0%} | {our_file:.1f} | {ours / our_file:.0%} "
              f"| {theirs:.1f} | {their_file:.1f} | {theirs / their_file:.0%} |")


if __name__ == "__main__":
    main()
