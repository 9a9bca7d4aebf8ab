"""A quantisation sweep: one model in several types, each measured for size, quality against the
highest-precision type (perplexity, KL divergence, top-1 agreement) and speed (pp / tg), written
as a Markdown table, CSV, JSON and, with matplotlib (`pip install 'llmrun[plot]'`), a PNG of
quality and speed against bits per weight."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Callable

import numpy as np

from .atomic import atomic_file
from .errors import LlmrunError

COLUMNS = [("type", "type", "{}"), ("size_mib", "size MiB", "{:.1f}"), ("bpw", "bits/weight", "{:.2f}"),
           ("ppl", "PPL", "{:.4f}"), ("ppl_err", "± PPL", "{:.4f}"), ("kld_mean", "KLD mean", "{:.5f}"),
           ("kld_p99", "KLD p99", "{:.4f}"), ("top1_agreement", "top-1 %", "{:.2f}"),
           ("pp_ts", "pp t/s", "{:.1f}"), ("tg_ts", "tg t/s", "{:.1f}")]


def bits_per_weight(model) -> float:
    """Bits per parameter over every tensor of the file (norms and embeddings included)."""
    f = model.file
    n_bytes = sum(i.nbytes for i in f.tensors.values())
    n_params = sum(math.prod(i.shape) for i in f.tensors.values())
    return 8.0 * n_bytes / n_params


def sweep(src: str, type_names: list[str], text: str, out_dir: str, n_ctx: int = 512, n_chunks: int | None = None,
          n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
          say: Callable[[str], None] = print, calibration: str | None = None, calibration_chunks: int = 16) -> list[dict]:
    """Quantise `src` to each type or k-quant mix (kept in out_dir and reused), measure each, return
    the rows, highest precision first; the KLD columns are against that first row. With a
    `calibration` text, every type or mix with a calibrated quantiser (quant/calibrate.py: the
    4- and 5-bit types and the k-quants) also comes calibrated on it, as a row "q4_0-cal",
    "q4_k_m-cal", ..."""
    import llmrun
    from . import _kernels
    from .bench import bench
    from .models import quantize
    from .perplexity import perplexity
    from .quant.calibrate import weighted_quantizer
    from .quant.policy import target
    policies = {p.name: p for p in map(target, type_names)}  # a bad name fails here, before any work
    policies = sorted(policies.values(), key=lambda p: -p.type.bits_per_weight)
    if not policies:
        raise LlmrunError("give at least one type")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(os.path.normpath(src)))[0]
    threads = threads or _kernels.get_threads()
    variants = []
    for p in policies:
        variants.append((p.name, p, False))
        if calibration is not None and weighted_quantizer(p.type):
            variants.append((p.name + "-cal", p, True))
    rows, base, stats = [], None, None
    for label, policy, calibrated in variants:
        path = os.path.join(out_dir, f"{stem}-{label}.llmr")
        if not os.path.exists(path):
            policy = dataclasses.replace(policy, allow_requantize=True)
            if calibrated:  # the activations measured once, on the source's own import
                from .quant.calibrate import importance_of_text
                if stats is None:
                    say("calibrating")
                    stats = importance_of_text(llmrun.load(src), calibration, calibration_chunks, n_ctx)
                policy = dataclasses.replace(policy, importance=stats[0], calibration=f"{stats[1]} tokens")
            say(f"quantising {src} to {label} -> {path}")
            quantize(src, path, policy)
        model = llmrun.load(path)
        tokens = model.tokenizer.encode(text)
        say(f"{label}: perplexity")
        run = perplexity(model, tokens, n_ctx, n_chunks, keep_top=base is None, base=base)
        if base is None:
            base = {"n_ctx": n_ctx, "tokens": run.tokens, "nll": run.nll, "top_ids": run.top_ids,
                    "top_logp": run.top_logp}
            # against itself: what a second run would measure (tests/test_perplexity.py shows it)
            run.kld, run.same_top, run.base_nll = np.zeros_like(run.nll), np.ones(len(run.nll), bool), run.nll
        row = {"type": label, "file": path, "size_mib": os.path.getsize(path) / 2 ** 20,
               "bpw": bits_per_weight(model), **run.report()}
        say(f"{label}: speed")
        for r in bench(model, os.path.basename(path), n_prompt, n_gen, [threads], 1):
            row[f"{r.test[:2]}_ts"] = r.avg_ts
        row["threads"] = threads
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) if key in r else "" for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out_dir: str, title: str) -> list[str]:
    """report.md, report.csv, report.json and (with matplotlib) report.png in out_dir; returns
    the paths written."""
    written = []
    with atomic_file(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(f"# {title}\n\n" + markdown(rows))
    with atomic_file(os.path.join(out_dir, "report.csv"), "w") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    with atomic_file(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rows, f, indent=1)
    written += [os.path.join(out_dir, n) for n in ("report.md", "report.csv", "report.json")]
    png = plot(rows, os.path.join(out_dir, "report.png"), title)
    return written + ([png] if png else [])


def plot(rows: list[dict], path: str, title: str) -> str | None:
    """Two panels against bits per weight: quality (KLD mean on a log scale, the base row left out
    as it is 0 against itself), speed (pp, tg); calibrated rows ("-cal") drawn apart from the
    plain ones, each series in order of size. None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = {"plain": sorted((r for r in rows if not r["type"].endswith("-cal")), key=lambda r: r["bpw"]),
              "calibrated": sorted((r for r in rows if r["type"].endswith("-cal")), key=lambda r: r["bpw"])}
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(12, 4.6))
    for (name, group), marker, color in zip(series.items(), ("o-", "^-"), ("tab:red", "tab:green")):
        scored = [r for r in group if r["kld_mean"] > 0]
        if scored:
            quality.plot([r["bpw"] for r in scored], [r["kld_mean"] for r in scored], marker, color=color,
                         label=f"{name}: KLD mean vs {rows[0]['type']}")
        for r in scored:
            quality.annotate(r["type"], (r["bpw"], r["kld_mean"]), textcoords="offset points", xytext=(4, 4),
                             fontsize=8)
        for key, label, style in (("pp_ts", "pp", "o"), ("tg_ts", "tg", "s")):
            timed = [r for r in group if key in r]
            if timed:
                speed.plot([r["bpw"] for r in timed], [r[key] for r in timed], style + ("-" if name == "plain" else ":"),
                           label=f"{label}, {name}")
    quality.set_yscale("log")
    quality.set_xlabel("bits per weight")
    quality.set_ylabel("KL divergence (nats, log scale)")
    quality.set_title("quality")
    quality.legend(fontsize=8)
    speed.set_xlabel("bits per weight")
    speed.set_ylabel("tokens/s")
    speed.set_title(f"speed ({rows[0].get('threads', '?')} threads)")
    speed.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
