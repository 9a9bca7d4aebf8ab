"""Sampling the next token from logits."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _kernels
from .errors import SettingError


class Sampler:
    """Repeat penalty, then greedy (temperature 0) or top-k → temperature → softmax → top-p → min-p → draw.

    `seed` stays fourth so `Sampler(temperature, top_k, top_p, seed)` keeps working; the newer
    options are keyword-only, so no positional call can bind a seed to them by mistake.
    """

    def __init__(self, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None, *,
                 min_p: float = 0.0, repeat_penalty: float = 1.0, repeat_window: int = 64):
        for ok, need in ((temperature >= 0, "temperature >= 0 (0 is greedy)"), (top_k >= 0, "top_k >= 0 (0 disables)"),
                         (0 < top_p <= 1, "0 < top_p <= 1 (1 disables)"), (0 <= min_p < 1, "0 <= min_p < 1 (0 disables)"),
                         (repeat_penalty > 0, "repeat_penalty > 0 (1 disables)"),
                         (repeat_window >= 0, "repeat_window >= 0 (0 disables)"),
                         (seed is None or seed >= 0, "seed >= 0")):
            if not ok:
                raise SettingError(f"need {need}")
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        self.repeat_penalty, self.repeat_window = repeat_penalty, repeat_window
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, recent: Sequence[int] = ()) -> int:
        """Draw the next token id; `recent` is the ids seen so far (prompt + generated), for the penalty."""
        ids, p = self._candidates(logits, recent)
        return int(ids[self.rng.choice(len(ids), p=p)])

    def probabilities(self, logits: np.ndarray, recent: Sequence[int] = ()) -> np.ndarray:
        """The distribution `__call__` draws from, over the whole vocabulary (0 outside the kept set)."""
        ids, p = self._candidates(logits, recent)
        out = np.zeros(len(logits))  # [V] float64
        out[ids] = p
        return out

    def _candidates(self, logits: np.ndarray, recent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The kept token ids and their renormalised probabilities (float64, summing to 1)."""
        z = self._penalised(logits, recent)  # [V] float64
        if self.temperature == 0:
            return np.array([np.argmax(z)]), np.ones(1)
        if 0 < self.top_k < len(z):
            ids = top_ids(z, self.top_k)
            p = _softmax(z[ids] / self.temperature)
        elif self.top_p < 1:
            ids, p = self._nucleus(z)
        else:
            ids = np.arange(len(z))
            p = _softmax(z / self.temperature)
        if self.top_p < 1:
            # smallest prefix with mass >= top_p (capped: rounding may leave the total a hair below)
            keep = min(int(np.searchsorted(np.cumsum(p), self.top_p)) + 1, len(p))
            ids, p = ids[:keep], p[:keep]
        if self.min_p > 0:
            kept = p >= self.min_p * p.max()  # always holds the most likely token, since min_p < 1
            ids, p = ids[kept], p[kept]
        return ids, p / p.sum()

    def _nucleus(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-p without top-k: the most likely ids, largest first, enough of them to hold top_p
        of the mass, and their probabilities over the whole vocabulary. The k best for a
        growing k (to 1024): sorting a vocabulary of 49k took 3 ms a token, longer than the forward."""
        w = _softmax(z / self.temperature)
        for k in (KERNEL_K, 256, 1024):
            if k >= len(z) // 16:
                break
            ids = top_ids(z, k)
            if w[ids].sum() >= self.top_p:
                return ids, w[ids]
        ids = np.argsort(-z, kind="stable")  # a flat distribution: much of the vocabulary
        return ids, w[ids]

    def _penalised(self, logits: np.ndarray, recent: Sequence[int]) -> np.ndarray:
        """A float64 copy of `logits` with each distinct id of the last `repeat_window` made less likely."""
        z = np.array(logits, dtype=np.float64)  # copy: the caller's logits stay as they were
        if self.repeat_penalty != 1 and self.repeat_window and len(recent):
            seen = np.unique(np.asarray(recent[-self.repeat_window:], dtype=np.int64))  # once per id, as llama.cpp
            # dividing a negative logit would raise it, so llama.cpp multiplies those instead
            z[seen] = np.where(z[seen] > 0, z[seen] / self.repeat_penalty, z[seen] * self.repeat_penalty)
        return z


KERNEL_K = 64  # the C top-k inserts into a sorted row, O(V k) at worst (ascending logits): beyond, a partition


def top_ids(z: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest of z (float64), largest first, a tie to the lower id. Up to
    KERNEL_K in C, once per token of every sequence: about 20 us for 49k logits, where numpy's
    argpartition of the row took 80 to 330 us (more when its buffers fault in)."""
    if k > KERNEL_K:
        ids = np.flatnonzero(~np.isnan(z))  # NaN is never kept
        if k < len(ids):  # what beats the k-th largest, then the lowest ids equal to it
            kth = -np.partition(-z[ids], k - 1)[k - 1]
            above = np.flatnonzero(z > kth)
            ids = np.concatenate([above, np.flatnonzero(z == kth)[:k - len(above)]])
        return ids[np.lexsort((ids, -z[ids]))]
    ids = np.empty(k, np.int32)
    return ids[:_kernels.top_k(ids, z)]


def _softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max())
    return p / p.sum()
