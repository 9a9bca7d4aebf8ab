"""Aggregate decode speed of `llmrun serve` under C concurrent streaming clients, end to end:
HTTP, SSE, the engine's continuous batching and the model together.

    python benchmarks/serve_clients.py [MODEL.llmr] [-c 1,2,4] [--parallel 4] [-t 2] [-n 128] [-s 5] [-r 3]
                                       [--backend cpu|cuda|webgpu]

Without MODEL: SmolLM2-135M-Instruct q4_0, converted into a temporary folder as in
batch_decode.py. The script starts one server (--port 0) and, for each C, runs C threads, each
with its own openai client, that send streamed /v1/completions requests back to back (max_tokens
-n, temperature 0.8, a seed per request, a story opening numbered by that seed as the prompt;
with --prompt-ids N, N random token ids instead, for a model whose vocabulary is not a real one,
such as benchmarks/synthetic.py's). The rate is taken in a window of -s seconds that opens once
every client has its first token, so all C stream throughout it: tokens arriving in the window
over its length, each request's usage count (include_usage) spread over its chunks. (Counting
a fixed number of requests a client instead would end with a tail in which fewer than C
stream.) Prints aggregate tokens/s, its ratio to the first C, tokens/s per client, mean time to
first token (prefill included: new requests keep arriving) and mean tokens a request
(end-of-text can stop one before -n). Medians of -r rounds, each round every C in turn, after a
warm-up with every slot busy. The server is stopped at the end, on an error and on Ctrl-C; its
log goes to a temporary file, whose tail is shown if the run fails.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_decode import default_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# story openings that stop mid-sentence: SmolLM2 ends a short complete one early with end-of-text
PROMPTS = [
    "The rain had not stopped for three days. Anna stood at the window of the old house, watching the river rise, and",
    "Captain Reyes looked at the map again. The island was not where it should have been, and the crew were",
    "When the last train left the station, Tom realised he had missed it. He walked out into the empty town, where",
    "The dragon slept on a hill of gold at the heart of the mountain. Every hundred years, a young thief",
    "My grandmother kept a wooden box under her bed, and nobody was allowed to open it. The summer I turned ten,",
    "The letter arrived on a Tuesday morning, written in a hand that Elena had not seen for twenty years. It said",
]


def wait_ready(proc: subprocess.Popen, log) -> tuple[str, str]:
    """The server's base URL and the model's name in the API, once it listens."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"serving (\S+) at (http://\S+/v1)", Path(log.name).read_text())
        if m:
            return m.group(2), m.group(1)
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def one_request(client, name: str, prompt, n: int, seed: int, first=lambda: None) -> tuple[list[float], float, int]:
    """One streamed request: the arrival time of each chunk that carries text (calling first()
    at the first), its start, and the completion tokens its usage chunk counts."""
    start = time.perf_counter()
    times, tokens = [], None
    stream = client.completions.create(model=name, prompt=prompt, max_tokens=n, temperature=0.8, seed=seed,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
            if len(times) == 1:
                first()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return times, start, tokens


def run_round(url: str, name: str, clients: int, seconds: float, n: int, seed0: int,
              prompt_ids: int = 0) -> tuple[float, float, float]:
    """Aggregate tokens/s while all `clients` threads stream, mean time to first token and mean
    tokens a request. Each thread sends requests back to back; the window opens when every
    thread has its first token and stays open `seconds`; the threads then finish the request
    they are in. A request's tokens are spread over its chunks (a token whose text is not
    complete yet comes with the next chunk), and those in the window are counted."""
    results, errors = [], []
    started = threading.Semaphore(0)  # a release per thread, at its first token
    done = threading.Event()

    def worker(k: int):
        i, streamed = 0, []

        def first():  # this client's first token (a request may end before any text)
            if not streamed:
                streamed.append(True)
                started.release()

        try:  # a client per thread, closed when it is done rather than whenever it is collected
            with openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600) as client:
                while not done.is_set():
                    j = seed0 + 1000 * k + i
                    # a number first, so the server's prefix cache cannot skip the prompt: TTFT has its prefill
                    prompt = f"({j}) {PROMPTS[j % len(PROMPTS)]}"
                    if prompt_ids:
                        prompt = random.Random(j).choices(range(1000, 30000), k=prompt_ids)
                    results.append(one_request(client, name, prompt, n, j, first))
                    i += 1
        except Exception as e:  # reported by the main thread, so that a failure stops the run
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""  # openai hides it
            errors.append(f"client {k}, request {i}: {type(e).__name__}: {e}{cause}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    waiting = clients
    while waiting and not errors:
        waiting -= started.acquire(timeout=0.1)
    opened = time.perf_counter()
    while not errors and time.perf_counter() - opened < seconds:
        time.sleep(0.05)
    closed = time.perf_counter()
    done.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    counted = sum(sum(opened <= t < closed for t in times) * tokens / max(len(times), 1)
                  for times, _, tokens in results)
    ttft = [times[0] - start for times, start, _ in results if times]
    return counted / (closed - opened), statistics.mean(ttft), statistics.mean(tok for _, _, tok in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a .llmr file (default: SmolLM2-135M q4_0)")
    ap.add_argument("-c", "--clients", default="1,2,4", help="concurrent client counts, comma-separated")
    ap.add_argument("--parallel", type=int, default=4, help="the server's slots")
    ap.add_argument("-t", "--threads", type=int, default=2, help="the server's compute threads")
    ap.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens asked of each request")
    ap.add_argument("-s", "--seconds", type=float, default=5.0, help="each round's window, in seconds")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--prompt-ids", type=int, default=0, help="send N random token ids as each prompt, not text")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "webgpu"], help="the server's backend")
    a = ap.parse_args()
    counts = [int(c) for c in a.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "server.log"), "w") as log:
        # the log is a file, not a pipe: the server writes a line per request, and a pipe nobody
        # drains would stall it
        proc = subprocess.Popen([sys.executable, "-m", "llmrun.cli.main", "serve", a.model or default_model(tmp),
                                 "--port", "0", "--parallel", str(a.parallel), "--threads", str(a.threads),
                                 "--backend", a.backend],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url, name = wait_ready(proc, log)
            print(f"{a.model or 'SmolLM2-135M q4_0'}: {url}, {a.backend}, {a.parallel} slots, {a.threads} threads, "
                  f"{a.seconds:g} s windows of requests of {a.max_tokens} tokens, median of {a.repetitions}", flush=True)
            # warm-up, a request in every slot: a slot's first use commits its KV cache's first pages
            # and the kernels' scratch, which is start-up, not serving
            run_round(url, name, a.parallel, 1, a.max_tokens, 0, a.prompt_ids)
            # rounds of every C in turn, so that a neighbour's load or a clock change falls on all alike
            speed, ttft, length = ({c: [] for c in counts} for _ in range(3))
            for r in range(a.repetitions):
                for c in counts:  # seeds fixed by round and request: a run makes the same tokens each time
                    s, t, n = run_round(url, name, c, a.seconds, a.max_tokens, 100000 * (r + 1), a.prompt_ids)
                    speed[c].append(s)
                    ttft[c].append(t)
                    length[c].append(n)
            # tok/req: end-of-text can stop a reply before -n tokens; the speeds count what was made
            print(f"{'clients':>7} {'tok/s':>8} {f'vs C={counts[0]}':>7} {'tok/s/client':>12} {'TTFT ms':>8} "
                  f"{'tok/req':>7}")
            base = statistics.median(speed[counts[0]])
            for c in counts:
                s = statistics.median(speed[c])
                print(f"{c:7d} {s:8.1f} {s / base:7.2f} {s / c:12.1f} {statistics.median(ttft[c]) * 1e3:8.1f} "
                      f"{statistics.median(length[c]):7.1f}")
        except Exception:  # the server's side of a failure; Ctrl-C needs no log
            log.flush()
            print(f"server log (tail):\n{Path(log.name).read_text()[-2000:]}", file=sys.stderr)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
