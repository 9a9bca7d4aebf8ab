"""Calibrated quantisation: scales chosen to minimise the error that matters.

A weight's error costs in proportion to how large the activations it multiplies are. Run the
model over a calibration text and keep, for every matrix, the mean square of each input column
(the "importance" of that column, as llama.cpp's imatrix does). Then, block by block, choose the
q4_0 scale that minimises sum_j w_j (x_j - d q_j)^2 with w_j the importance of the block's
columns: for each of a few candidate scales, round, then fit d by weighted least squares, and
keep the best. q4_1 (x = d q + m) likewise, fitting d and m together; q5_0 and q5_1 as q4_0 and
q4_1 with 5-bit quants. The k-quants run llama.cpp's own quantiser with the importance in its
fits and keep, per super-block, whichever variant has the least weighted error (_K_VARIANTS).
The blocks stay the type's blocks (same size, same kernels); q8_0 and the float types are left
as they are (llama.cpp's imatrix leaves q8_0 alone too).
"""
from __future__ import annotations

import numpy as np

from .reference import (_blocks, _pack_nibbles, _pack_q5, _quantize_iq4_nl, _quantize_q2_k, _quantize_q3_k,
                        _quantize_q4_k, _quantize_q5_k, _quantize_q6_k, _sum, _to_bytes)
from .types import IQ4_NL, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, QType

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


def _as_stored(v: np.ndarray) -> np.ndarray:
    """A fitted float64 scale (or min) as the block stores it: float32, then float16, and back."""
    return v.astype(np.float32).astype(np.float16).astype(np.float64)


def _weighted_symmetric(x: np.ndarray, col_importance: np.ndarray, t: QType, half: int, pack) -> np.ndarray:
    """q4_0 (half 8) or q5_0 (half 16): per block, for each candidate inverse scale
    -(half + k / 10) / max, round to -half .. half - 1, fit d by weighted least squares, keep
    the best; `pack` turns (d, q + half) into the block's fields."""
    b, w = _blocks_and_weights(x, col_importance, t)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    signed_max = np.take_along_axis(b, idx, axis=-1)
    safe_max = np.where(signed_max == 0, 1.0, signed_max)
    best_err = np.full(b.shape[:-1] + (1,), np.inf)
    best_d, best_q = np.zeros_like(best_err), np.zeros_like(b)
    for k in CANDIDATES:
        iscale = -(half + float(k)) / safe_max
        q = np.clip(np.round(b * iscale), -half, half - 1)
        wq = w * q
        den = _sum(wq * q)
        d = _as_stored(np.where(den > 0, _sum(wq * b) / np.where(den > 0, den, 1.0), 0.0))
        err = _sum(w * (b - d * q) ** 2)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d = np.where(better, d, best_d)
        best_q = np.where(better, q, best_q)
    return _to_bytes(pack(best_d.astype(np.float16), best_q + half), x.shape[:-1])


def _weighted_affine(x: np.ndarray, col_importance: np.ndarray, t: QType, top: int, pack) -> np.ndarray:
    """q4_1 (top 15) or q5_1 (top 31): per block, for each candidate step (max - min) / (top + k/10),
    round, then fit d and m by weighted least squares (a 2x2 system), keep the best; `pack` turns
    (d, m, q) into the block's fields."""
    b, w = _blocks_and_weights(x, col_importance, t)
    lo, hi = b.min(axis=-1, keepdims=True), b.max(axis=-1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    best_err = np.full(lo.shape, np.inf)
    best_d, best_m, best_q = np.zeros_like(lo), lo.copy(), np.zeros_like(b)
    sw, swx = _sum(w), _sum(w * b)
    for k in CANDIDATES:
        q = np.clip(np.round((b - lo) * ((top + float(k)) / span)), 0, top)
        swq, swqq, swxq = _sum(w * q), _sum(w * q * q), _sum(w * b * q)
        det = sw * swqq - swq * swq
        ok = det > 1e-300 * np.maximum(sw * swqq, 1e-300)
        d = _as_stored(np.where(ok, (sw * swxq - swq * swx) / np.where(ok, det, 1.0), 0.0))
        m = _as_stored(np.where(ok, (swqq * swx - swq * swxq) / np.where(ok, det, 1.0), swx / sw))
        err = _sum(w * (b - d * q - m) ** 2)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d, best_m, best_q = np.where(better, d, best_d), np.where(better, m, best_m), np.where(better, q, best_q)
    return _to_bytes(pack(best_d.astype(np.float16), best_m.astype(np.float16), best_q), x.shape[:-1])


# The 32-value searches the C runs (kernels' quantize_weighted, which refuses any other type).
_SEARCHES_IN_C = (Q4_0, Q4_1, Q5_0, Q5_1)


def _weighted_in_c(x: np.ndarray, col_importance: np.ndarray, t: QType) -> np.ndarray:
    """_weighted_symmetric's or _weighted_affine's bytes for type t by their C twin (kernels'
    quantize_weighted, rows among the threads; tests/test_quantize.py holds the two to the same
    bytes), many times faster: every row's columns weigh alike, so one row's weights serve all."""
    from .. import _kernels
    x = np.ascontiguousarray(x, dtype=np.float32)
    _, w = _blocks_and_weights(x[:1], col_importance, t)
    out = np.empty((*x.shape[:-1], t.row_bytes(x.shape[-1])), np.uint8)
    _kernels.quantize_weighted(out, x, t.id, np.ascontiguousarray(w.reshape(-1)))
    return out


def quantize_q4_0_weighted(x: np.ndarray, col_importance: np.ndarray) -> np.ndarray:
    """float32 [rows, n] -> q4_0 bytes [rows, row_bytes], each block's scale chosen to minimise
    the importance-weighted squared error (module docstring)."""
    return _weighted_symmetric(x, col_importance, Q4_0, 8, lambda d, q: [d, _pack_nibbles(q)])


def quantize_q5_0_weighted(x: np.ndarray, col_importance: np.ndarray) -> np.ndarray:
    """q4_0's search with 5-bit quants (-16 .. 15)."""
    return _weighted_symmetric(x, col_importance, Q5_0, 16, lambda d, q: [d, *_pack_q5(q)])


def quantize_q4_1_weighted(x: np.ndarray, col_importance: np.ndarray) -> np.ndarray:
    """float32 [rows, n] -> q4_1 bytes: d and m fitted to the importance (module docstring)."""
    return _weighted_affine(x, col_importance, Q4_1, 15, lambda d, m, q: [d, m, _pack_nibbles(q)])


def quantize_q5_1_weighted(x: np.ndarray, col_importance: np.ndarray) -> np.ndarray:
    """q4_1's search with 5-bit quants (0 .. 31)."""
    return _weighted_affine(x, col_importance, Q5_1, 31, lambda d, m, q: [d, m, *_pack_q5(q)])


# The k-quants: llama.cpp's own quantisers (quant/reference.py, byte for byte) run with the
# importance multiplying each value's weight in the sub-block fits, a wider search, and the
# super-block's 6-bit (q6_k: 8-bit) scale grid shifted a little; every variant, and the plain
# quantiser's blocks, is scored per super-block by the importance-weighted squared error, and the
# best kept, so no super-block comes out worse (by that measure) than without calibration.
# q2_k and q3_k fit their sub-blocks with each value weighted by its importance times
# sqrt(sigma^2 + x^2), as imatrix quantisers weigh, and put the sub-block scales (q2_k: and mins)
# on the super-block's grid by a search weighted by the sub-blocks' summed weights (q3_k's
# `search`; q2_k's only calibrated fit):
# with their plain fits merely importance-weighted, SmolLM2-135M's 30 w_down matrices in q3_k
# (its q2_k mix), set into llama.cpp's imatrix-calibrated file in place of its own, took the
# mean KLD on Pride and Prejudice from 0.1717 to 0.1957; with `search` to 0.1711. In q2_k
# (the same matrices, --tensor-type w_down=q2_k): llama.cpp's 0.2724; merely weighted 0.3594,
# `search` among the grid variants 0.2817, `search` alone 0.2761 (the weighted error picked the
# grid variants where KLD did not agree). iq4_nl (the 32-value fallback of the q2_k and q3_k
# mixes for rows that are not whole super-blocks) has the importance in its grid fits, times
# each value's square or alone (the first 9% under the plain blocks' weighted error on random
# rows, the second 13%, the best of them and the plain ones per block 14%).
# Each type: its numpy reference (the definition) and the variants; the C runs them (fit_args).
_K_VARIANTS = {
    Q2_K: (_quantize_q2_k, [dict(rmin=-0.9, rdelta=0.05, nstep=36)]),
    Q3_K: (_quantize_q3_k, [dict(search=True), *(dict(grid=g) for g in (0.0, -0.3, 0.3, -0.6))]),
    Q4_K: (_quantize_q4_k, [dict(rmin=-0.9, rdelta=0.05, nstep=36, grid=g) for g in (0.0, -0.3, 0.3)]),
    Q5_K: (_quantize_q5_k, [dict(rmin=-0.9, rdelta=0.05, nstep=36, grid=g) for g in (0.0, -0.3, 0.3)]),
    Q6_K: (_quantize_q6_k, [dict(grid=g) for g in (0.0, -0.3, 0.3, -0.6)]),
    IQ4_NL: (_quantize_iq4_nl, [dict(square=True), dict(square=False)]),
}


def fit_args(fit: dict) -> tuple:
    """A _K_VARIANTS fit as the C takes it (kernels' quantize_k_fit and quantize_k_best): rmin,
    rdelta, nstep, grid, search, square. (A q2_k, q4_k or q5_k variant names its rmin, rdelta and
    nstep: the zeros here are not the reference's defaults.)"""
    return (fit.get("rmin", 0.0), fit.get("rdelta", 0.0), fit.get("nstep", 0), fit.get("grid", 0.0),
            fit.get("search", False), fit.get("square", True))


def quantize_k_weighted(x: np.ndarray, col_importance: np.ndarray, t: QType) -> np.ndarray:
    """float32 [rows, n] -> bytes of `t` (a k-quant, or iq4_nl), calibrated (see _K_VARIANTS): per
    block, of the plain quantiser's block and each variant's fit, the one with the least squared
    error weighted by the columns' importance (summed in order, in double), the first of equals.
    The C does it all (kernels' quantize_k_best, rows among the threads)."""
    from .. import _kernels
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    w = col_importance.astype(np.float64).reshape(-1, t.block_size)  # every row's columns weigh alike
    w = w + 1e-6 * w.mean(axis=-1, keepdims=True) + 1e-30  # no column wholly ignored
    imp32 = (w / w.mean(axis=-1, keepdims=True)).astype(np.float32)  # relative: the fits' weights keep their scale
    fits = [fit_args(f) for f in _K_VARIANTS[t][1]]
    out = np.empty((*x.shape[:-1], t.row_bytes(n)), np.uint8)
    _kernels.quantize_k_best(out, x, t.id, imp32.reshape(n), w.reshape(n), fits)
    return out


def weighted_quantizer(t: QType):
    """The calibrated quantiser for type `t` (a function of the rows and their columns'
    importance), or None where `t` has none (q8_0 and the float types: nothing to gain)."""
    if t in _SEARCHES_IN_C:  # quantize_q4_0_weighted and its kin, in C
        return lambda x, imp: _weighted_in_c(x, imp, t)
    if t in _K_VARIANTS:
        return lambda x, imp: quantize_k_weighted(x, imp, t)
    return None
