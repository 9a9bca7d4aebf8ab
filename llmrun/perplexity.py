"""Perplexity, and KL divergence against a base model's saved log-probabilities, by llama.cpp's
method (its tools/perplexity), so the numbers compare with what its users quote.

The text is tokenised whole (with BOS if the model adds one) and cut into chunks of n_ctx
tokens; a chunk's first token becomes BOS where the model adds one; each chunk runs from an
empty cache, and only its second half is scored: the logits at positions first = n_ctx // 2 ..
n_ctx - 2 predict the tokens after them, so every scored token has at least n_ctx / 2 tokens of
context. PPL = exp(mean NLL), its error exp(mean) * sqrt(var(NLL) / (N - 1)).

Saved log-probabilities (`save`) keep, per scored position, the base model's TOP_K (32) most likely
tokens and their log-probabilities (float64), and its NLL of the true token. KL(base || model)
is then computed over those K tokens plus one bucket for the rest of the vocabulary, which is a
lower bound of the full KL (merging outcomes never raises it) and equal to it when the rest
carries no mass; with K = 32 the rest is typically under 1% of the probability. A model against
its own saved run gives exactly 0 (the same logits, the same float64 steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import LlmrunError

TOP_K = 32
FORMAT = "llmrun-logits-1"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 [n, V] -> float64 log-probabilities."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def chunks(tokens: list[int], n_ctx: int, n_chunks: int | None, bos: int | None) -> list[list[int]]:
    """The chunks llama.cpp scores: whole n_ctx-token pieces, the first token BOS if given."""
    if n_ctx < 4:
        raise LlmrunError(f"context {n_ctx} is too small to score (at least 4 tokens)")
    if len(tokens) < 2 * n_ctx:
        raise LlmrunError(f"the text is {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at "
                          f"least {2 * n_ctx}: give a longer text or a smaller -c")
    n = len(tokens) // n_ctx if n_chunks is None else min(n_chunks, len(tokens) // n_ctx)
    out = []
    for i in range(n):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


def mean_and_error(values: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error (llama.cpp's sqrt(var / (N - 1)))."""
    m = float(values.mean())
    return m, float(math.sqrt(max(float((values ** 2).mean()) - m * m, 0.0) / max(len(values) - 1, 1)))


@dataclass
class Run:
    """What a perplexity run measured, per scored position (N = chunks * (n_ctx - 1 - n_ctx // 2))."""
    n_ctx: int
    tokens: np.ndarray  # int32 [chunks, n_ctx], as evaluated
    nll: np.ndarray  # float64 [N]
    top_ids: np.ndarray | None = None  # int32 [N, TOP_K], kept for saving
    top_logp: np.ndarray | None = None  # float64 [N, TOP_K]
    kld: np.ndarray | None = None  # float64 [N] against a base
    same_top: np.ndarray | None = None  # bool [N]: the base's most likely token is ours too
    base_nll: np.ndarray | None = None  # float64 [N]

    @property
    def ppl(self) -> tuple[float, float]:
        m, e = mean_and_error(self.nll)
        return math.exp(m), math.exp(m) * e

    def report(self) -> dict:
        ppl, err = self.ppl
        out = {"n_ctx": self.n_ctx, "chunks": int(self.tokens.shape[0]), "scored": int(len(self.nll)),
               "ppl": ppl, "ppl_err": err}
        if self.kld is not None:
            kld_mean, kld_err = mean_and_error(self.kld)
            base_ppl = math.exp(self.base_nll.mean())
            d_mean, d_err = mean_and_error(self.nll - self.base_nll)  # ln(ppl / base ppl), paired
            delta = ppl - base_ppl
            # Δ by the delta method on the paired per-token terms (ppl * nll - base_ppl * base_nll)
            lin = ppl * self.nll - base_ppl * self.base_nll
            delta_err = float(math.sqrt(max(float(lin.var()), 0.0) / max(len(lin) - 1, 1)))
            base_err = base_ppl * mean_and_error(self.base_nll)[1]
            out.update({
                "base_ppl": base_ppl, "base_ppl_err": base_err,
                "ppl_ratio": math.exp(d_mean), "ppl_ratio_err": math.exp(d_mean) * d_err,
                "ppl_delta": delta, "ppl_delta_err": delta_err,
                "kld_mean": kld_mean, "kld_mean_err": kld_err, "kld_median": float(np.median(self.kld)),
                "kld_p99": float(np.percentile(self.kld, 99)), "kld_max": float(self.kld.max()),
                "top1_agreement": float(self.same_top.mean() * 100.0),
            })
        return out


def _kl_top(base_ids: np.ndarray, base_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(base || ours) over the base's top tokens plus one bucket for the rest, per row."""
    ours = np.take_along_axis(logp, base_ids.astype(np.int64), axis=1)
    p = np.exp(base_logp)
    kl = (p * (base_logp - ours)).sum(axis=1)
    p_rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    q_rest = np.clip(1.0 - np.exp(ours).sum(axis=1), 1e-300, 1.0)
    rest = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-300)) - np.log(q_rest)), 0.0)
    return np.maximum(kl + rest, 0.0)


def perplexity(model, tokens: list[int], n_ctx: int = 512, n_chunks: int | None = None, batch: int | None = None,
               keep_top: bool = False, base: dict | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> Run:
    """Score `tokens` chunk by chunk (see the module's docstring). `batch` tokens per forward
    call (default: the whole chunk; the logits do not depend on it). `base`: a saved run
    (load()) to compute KL divergence against; `keep_top` keeps what save() writes.
    `progress(chunks done, chunks, running PPL)` follows each chunk."""
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    pieces = chunks(tokens, n_ctx, n_chunks, bos)
    if base is not None:
        if int(base["n_ctx"]) != n_ctx or base["tokens"].shape[0] < len(pieces) or \
                not np.array_equal(base["tokens"][:len(pieces)], np.array(pieces, dtype=np.int32)):
            raise LlmrunError("the saved log-probabilities are of another text, context size or tokenizer; "
                              "save them again with the same -f and -c")
        if int(base["top_ids"].max()) >= model.config.vocab_size:
            raise LlmrunError("the saved log-probabilities are of a model with a larger vocabulary")
    first = n_ctx // 2
    batch = batch or n_ctx
    if batch < 1:
        raise LlmrunError(f"batch size must be at least 1, got {batch}")
    nll, top_ids, top_logp, kld, same_top = [], [], [], [], []
    for i, chunk in enumerate(pieces):
        cache = model.new_cache(n_ctx)
        logits = []  # of positions first .. n_ctx - 1: the head runs on no more rows than scored
        for s in range(0, n_ctx, batch):
            piece = chunk[s:s + batch]
            out = model.forward(piece, cache, logits_from=min(max(first - s, 0), len(piece) - 1))
            if s + len(piece) > first:
                logits.append(out)
        logp = log_softmax(np.concatenate(logits)[:n_ctx - 1 - first])  # [n_ctx - 1 - first, V]
        targets = np.asarray(chunk[first + 1:], dtype=np.int64)
        nll.append(-logp[np.arange(len(targets)), targets])
        rows = slice(i * len(targets), (i + 1) * len(targets))
        if keep_top:
            k = min(TOP_K, logp.shape[1])
            ids = np.argpartition(-logp, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(logp, ids, axis=1), axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
            top_ids.append(ids.astype(np.int32))
            top_logp.append(np.take_along_axis(logp, ids, axis=1))
        if base is not None:
            kld.append(_kl_top(base["top_ids"][rows], base["top_logp"][rows], logp))
            same_top.append(logp.argmax(axis=1) == base["top_ids"][rows][:, 0])
        if progress:
            progress(i + 1, len(pieces), math.exp(np.concatenate(nll).mean()))
    n_scored = len(pieces) * (n_ctx - 1 - first)
    run = Run(n_ctx, np.array(pieces, dtype=np.int32), np.concatenate(nll))
    if keep_top:
        run.top_ids, run.top_logp = np.concatenate(top_ids), np.concatenate(top_logp)
    if base is not None:
        run.kld, run.same_top = np.concatenate(kld), np.concatenate(same_top)
        run.base_nll = base["nll"][:n_scored]
    return run


def save(path: str, run: Run) -> None:
    """Write a run's top log-probabilities for later KL divergence (atomically; numpy .npz)."""
    from .atomic import atomic_file
    with atomic_file(path) as f:
        np.savez(f, format=np.array(FORMAT), n_ctx=np.array(run.n_ctx), tokens=run.tokens, nll=run.nll,
                 top_ids=run.top_ids, top_logp=run.top_logp)


def load(path: str) -> dict:
    """A saved run, checked: a clear error for anything else."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise LlmrunError(f"{path}: not a file of saved log-probabilities ({e})") from None
    if str(data.get("format", "")) != FORMAT or not {"n_ctx", "tokens", "nll", "top_ids", "top_logp"} <= set(data):
        raise LlmrunError(f"{path}: not a file of saved log-probabilities from `llmrun perplexity --save-logits`")
    n = data["nll"].shape[0]
    k = data["top_ids"].shape[-1]
    if data["top_ids"].shape != (n, k) or data["top_logp"].shape != (n, k) or not 1 <= k <= TOP_K or \
            data["tokens"].ndim != 2:
        raise LlmrunError(f"{path}: saved log-probabilities with inconsistent shapes; save them again")
    return data
