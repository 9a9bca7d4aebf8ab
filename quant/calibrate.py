"""Calibrated 4-bit quantisation: scales chosen to minimise the error that matters.

A weight's error costs in proportion to how large the activations it multiplies are. Run the
model over a calibration text and keep, for every matrix, the mean square of each input column
(the "importance" of that column, as llama.cpp's imatrix does). Then, block by block, choose the
q4_0 scale that minimises sum_j w_j (x_j - d q_j)^2 with w_j the importance of the block's
columns: for each of a few candidate scales, round, then fit d by weighted least squares, and
keep the best. q4_1 (x = d q + m) likewise, fitting d and m together. The blocks stay q4_0 /
q4_1 blocks (same size, same kernels).
"""
from __future__ import annotations

import numpy as np

from .reference import _blocks, _pack_nibbles, _to_bytes
from .types import Q4_0, Q4_1, QType

# Inverse scales tried per block: -(8 + k / 10) / max for k in -9 .. 9, around plain q4_0's -8 / max.
CANDIDATES = np.arange(-9, 10, dtype=np.float32) / np.float32(10)


def importance(model, token_chunks, say=None) -> dict[str, np.ndarray]:
    """Mean square of each input column of every matrix, float64 [cols] by tensor name, over
    the calibration chunks (each run from an empty cache through the Python graph, whose matmul
    calls are watched)."""
    from llmrun import model as graph
    sums, counts = {}, {}
    real = graph.ops.matmul

    def watched(w, x):
        x64 = x.astype(np.float64)
        sums[w.name] = sums.get(w.name, 0.0) + (x64 * x64).sum(axis=0)
        counts[w.name] = counts.get(w.name, 0) + x.shape[0]
        return real(w, x)

    graph.ops.matmul = watched
    try:
        for i, chunk in enumerate(token_chunks):
            model.forward(chunk, model.new_cache(len(chunk)), reference=True)
            if say:
                say(f"calibrating: chunk {i + 1}/{len(token_chunks)}")
    finally:
        graph.ops.matmul = real
    return {name: sums[name] / counts[name] for name in sums}


def _blocks_and_weights(x: np.ndarray, col_importance: np.ndarray, t: QType):
    x = np.ascontiguousarray(x, dtype=np.float32)
    b = _blocks(x, t.block_size).astype(np.float64)  # [rows, nb, 32]
    w = _blocks(np.broadcast_to(col_importance.astype(np.float32), x.shape), t.block_size).astype(np.float64)
    return b, w + 1e-6 * w.mean(axis=-1, keepdims=True) + 1e-30  # no column wholly ignored


def importance_of_text(model, text: str, n_chunks: int = 16, n_ctx: int = 512, say=None) -> tuple[dict, int]:
    """importance() over the first n_chunks chunks of n_ctx tokens of `text`; and the tokens used."""
    from llmrun.errors import LlmrunError
    ids = model.tokenizer.encode(text)
    pieces = [ids[i:i + n_ctx] for i in range(0, len(ids), n_ctx)][:n_chunks]
    if not pieces or len(pieces[0]) < 2:
        raise LlmrunError("too little text to calibrate on")
    return importance(model, pieces, say), sum(map(len, pieces))


def quantize_q4_0_weighted(x: np.ndarray, col_importance: np.ndarray) -> np.ndarray:
    """float32 [rows, n] -> q4_0 bytes [rows, row_bytes], each block's scale chosen to minimise
    the importance-weighted squared error (module docstring)."""
    b, w = _blocks_and_weights(x, col_importance, Q4_0)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    signed_max = np.take_along_axis(b, idx, axis=-1)
    safe_max = np.where(signed_max == 0, 1.0, signed_max)
    best_err = np.full(b.shape[:-1] + (1,), np.inf)
    best_d, best_q = np.zeros_like(best_err), np.zeros_like(b)
    for k in CANDIDATES:
        iscale = -(8.0 + float(k)) / safe_max
        q = np.clip(np.round(b * iscale), -8, 7)
        wq = w * q
        den = (wq * q).sum(axis=-1, keepdims=True)
        d = np.where(den > 0, (wq * b).sum(axis=-1, keepdims=True) / np.where(den > 0, den, 1.0), 0.0)
        d = d.astype(np.float16).astype(np.float64)  # the scale as stored
        err = (w * (b - d * q) ** 2).sum(axis=-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d = np.where(better, d, best_d)
        best_q = np.where(better, q, best_q)
    return _to_bytes([best_d.astype(np.float16), _pack_nibbles(best_q + 8)], x.shape[:-1])


def quantize_q4_1_weighted(x: np.ndarray, col_importance: np.ndarray) -> np.ndarray:
    """float32 [rows, n] -> q4_1 bytes: per block, for each candidate step (max - min) / (15 + k/10),
    round, then fit d and m by weighted least squares (a 2x2 system), keep the best."""
    b, w = _blocks_and_weights(x, col_importance, Q4_1)
    lo, hi = b.min(axis=-1, keepdims=True), b.max(axis=-1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    best_err = np.full(lo.shape, np.inf)
    best_d, best_m, best_q = np.zeros_like(lo), lo.copy(), np.zeros_like(b)
    sw, swx = w.sum(axis=-1, keepdims=True), (w * b).sum(axis=-1, keepdims=True)
    for k in CANDIDATES:
        q = np.clip(np.round((b - lo) * ((15.0 + float(k)) / span)), 0, 15)
        swq, swqq, swxq = (w * q).sum(-1, keepdims=True), (w * q * q).sum(-1, keepdims=True), (w * b * q).sum(-1, keepdims=True)
        det = sw * swqq - swq * swq
        ok = det > 1e-300 * np.maximum(sw * swqq, 1e-300)
        d = np.where(ok, (sw * swxq - swq * swx) / np.where(ok, det, 1.0), 0.0)
        m = np.where(ok, (swqq * swx - swq * swxq) / np.where(ok, det, 1.0), swx / sw)
        d, m = d.astype(np.float16).astype(np.float64), m.astype(np.float16).astype(np.float64)  # as stored
        err = (w * (b - d * q - m) ** 2).sum(axis=-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d, best_m, best_q = np.where(better, d, best_d), np.where(better, m, best_m), np.where(better, q, best_q)
    return _to_bytes([best_d.astype(np.float16), best_m.astype(np.float16), _pack_nibbles(best_q)], x.shape[:-1])
