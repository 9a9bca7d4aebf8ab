"""Run a fuzz target (tests/fuzz/targets.py) over its corpus and on mutations of it.

    python tests/fuzz/run.py TARGET --seconds 1200              # atheris, coverage-guided
    python tests/fuzz/run.py TARGET --seconds 10 --mutate       # our mutator (the test suite's run)
    python tests/fuzz/run.py TARGET --replay FILE...            # run inputs once (a crash to debug)

TARGET is llmr, gguf, hf, tokenizer or template. The atheris run needs `pip install atheris`
(the `fuzz` extra); it reads tests/fuzz/corpus/TARGET and keeps what it discovers in
.fuzz-work/TARGET (ignored by git), so a later run goes on from there. A crash, a hang (over
--hang seconds on one input), or any exception but LlmrunError stops the run; the input is
left in .fuzz-work/TARGET-crash-*; copy it into the corpus as crash-<what> once fixed, so the
suite replays it for good. Prints executions and seconds at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))


class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang("one input ran longer than the hang limit")


def corpus(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((HERE / "corpus" / target).iterdir())]


def keep_crash(target: str, data: bytes) -> Path:
    work = ROOT / ".fuzz-work"
    work.mkdir(exist_ok=True)
    path = work / f"{target}-crash-{hashlib.sha1(data).hexdigest()[:12]}"
    path.write_bytes(data)
    return path


def run_mutations(fn, target: str, seconds: float, hang: int, seed: int) -> int:
    """Replay the corpus, then mutate it until `seconds` have passed. The input about to run
    is written to .fuzz-work/TARGET-current first, so a segfault leaves it behind."""
    from mutate import mutate
    seeds = corpus(target)
    rng = random.Random(f"{target}-{seed}")
    current = ROOT / ".fuzz-work" / f"{target}-current"
    current.parent.mkdir(exist_ok=True)
    signal.signal(signal.SIGALRM, _on_alarm)
    inputs = iter(seeds)
    end, n = time.monotonic() + seconds, 0
    while True:
        data = next(inputs, None)
        if data is None:
            if time.monotonic() > end:
                break
            data = mutate(rng, rng.choice(seeds), seeds)
        current.write_bytes(data)
        signal.alarm(hang)
        try:
            fn(data)
        except BaseException:
            print(f"{target}: input {n} failed; kept as {keep_crash(target, data)}", file=sys.stderr)
            raise
        finally:
            signal.alarm(0)
        n += 1
    current.unlink()
    return n


def run_atheris(fn, target: str, seconds: int, hang: int, rss_mb: int) -> None:
    import atheris
    work = ROOT / ".fuzz-work" / target
    work.mkdir(parents=True, exist_ok=True)
    seeds = HERE / "corpus" / target
    max_len = 2 * max(p.stat().st_size for p in seeds.iterdir())
    args = [sys.argv[0], str(work), str(seeds), f"-max_total_time={seconds}", f"-timeout={hang}",
            f"-max_len={max_len}", f"-artifact_prefix={ROOT / '.fuzz-work'}/{target}-",
            "-print_final_stats=1", f"-rss_limit_mb={rss_mb}"]
    atheris.Setup(args, fn)
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--mutate", action="store_true", help="our mutator instead of atheris")
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="run these inputs once each")
    ap.add_argument("--hang", type=int, default=20, help="seconds one input may take")
    ap.add_argument("--seed", type=int, default=0, help="the mutator's seed")
    ap.add_argument("--rss-mb", type=int, default=4096, help="atheris: memory at which the run stops as a failure")
    args = ap.parse_args()
    if args.mutate or args.replay:
        import targets
        fn = targets.TARGETS[args.target]
        start = time.monotonic()
        if args.replay:
            for path in args.replay:
                fn(Path(path).read_bytes())
            n = len(args.replay)
        else:
            n = run_mutations(fn, args.target, args.seconds, args.hang, args.seed)
        print(f"{args.target}: {n} executions in {time.monotonic() - start:.1f} s, no failure")
        return
    import atheris
    import targets
    fn = targets.TARGETS[args.target]
    for data in corpus(args.target):  # loads every module the target imports lazily
        fn(data)
    atheris.instrument_all()  # coverage of every Python function loaded so far (ours, jinja2's)
    run_atheris(fn, args.target, int(args.seconds), args.hang, args.rss_mb)


if __name__ == "__main__":
    main()
