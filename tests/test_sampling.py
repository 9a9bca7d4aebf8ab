"""The token sampler: exact distributions for each filter, draws that follow them, repeat penalty, validation."""
import numpy as np
import pytest

from llmrun import _kernels
from llmrun.sampling import KERNEL_K, Sampler, top_ids

# Logits whose softmax at temperature 1 is q, with the ids shuffled so "most likely" is not "lowest id".
Q = np.array([0.05, 0.4, 0.1, 0.2, 0.25])  # sorted by p: ids 1 (0.4), 4 (0.25), 3 (0.2), 2 (0.1), 0 (0.05)
LOGITS = np.log(Q).astype(np.float32) + 3.0  # float32 as the model gives; the shift must not matter


def draws(sampler, logits, n, recent=()):
    return np.array([sampler(logits, recent) for _ in range(n)])


def assert_follows(tokens, expected, sigmas=5.0):
    """Empirical frequencies within `sigmas` standard errors per bin; impossible tokens never drawn."""
    counts = np.bincount(tokens, minlength=len(expected))
    n = len(tokens)
    se = np.sqrt(n * expected * (1 - expected))
    assert np.all(counts[expected == 0] == 0), counts
    assert np.all(np.abs(counts - n * expected) <= sigmas * se + 1e-9), (counts / n, expected)


def test_no_filters_is_softmax_of_scaled_logits():
    s = Sampler(temperature=0.5, top_k=0, top_p=1.0)
    expected = Q ** 2 / (Q ** 2).sum()  # softmax(log q / 0.5) ∝ q²
    np.testing.assert_allclose(s.probabilities(LOGITS), expected, rtol=0, atol=1e-6)  # float32 logits
    np.testing.assert_allclose(s.probabilities(np.log(Q) * 0.5), Q, rtol=0, atol=1e-12)


def test_top_p_distribution_exact_and_sampled():
    # mass in order: 0.4, 0.65, 0.85 → 0.7 needs the first three (ids 1, 4, 3)
    s = Sampler(temperature=1.0, top_k=0, top_p=0.7, seed=1)
    expected = np.array([0, 0.4, 0, 0.2, 0.25]) / 0.85
    np.testing.assert_allclose(s.probabilities(np.log(Q)), expected, rtol=0, atol=1e-12)
    assert_follows(draws(s, np.log(Q), 20000), expected)


def test_top_p_keeps_at_least_the_best_token():
    s = Sampler(temperature=1.0, top_k=0, top_p=0.01)
    np.testing.assert_allclose(s.probabilities(np.log(Q)), [0, 1, 0, 0, 0], rtol=0, atol=1e-12)


def test_min_p_distribution_exact_and_sampled():
    # threshold 0.3 * 0.4 = 0.12 keeps ids 1, 4, 3 and drops 2 (0.1) and 0 (0.05)
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3, seed=2)
    expected = np.array([0, 0.4, 0, 0.2, 0.25]) / 0.85
    np.testing.assert_allclose(s.probabilities(np.log(Q)), expected, rtol=0, atol=1e-12)
    assert_follows(draws(s, np.log(Q), 20000), expected)
    # min-p sees the distribution after temperature: at T=0.5 p ∝ q², and 0.3 * 0.16 = 0.048 now drops id 3 too
    s = Sampler(temperature=0.5, top_k=0, top_p=1.0, min_p=0.3)
    expected = np.array([0, 0.16, 0, 0, 0.0625]) / 0.2225
    np.testing.assert_allclose(s.probabilities(np.log(Q)), expected, rtol=0, atol=1e-12)


def test_top_k_then_top_p_then_min_p_chain():
    s = Sampler(temperature=1.0, top_k=4, top_p=0.9, min_p=0.55, seed=3)
    # top-k 4 drops id 0; renormalised over 0.95: 0.4/0.95 = 0.421, cumulative 0.684, 0.895, 1.0 → top-p 0.9
    # keeps all four; min-p threshold 0.55 * 0.421 = 0.232 keeps ids 1 (0.421) and 4 (0.263)
    expected = np.array([0, 0.4, 0, 0, 0.25]) / 0.65
    np.testing.assert_allclose(s.probabilities(np.log(Q)), expected, rtol=0, atol=1e-12)
    assert_follows(draws(s, np.log(Q), 20000), expected)


def test_top_k_on_a_large_vocabulary_keeps_the_k_largest():
    logits = np.random.default_rng(0).standard_normal(150_000).astype(np.float32)
    p = Sampler(temperature=1.0, top_k=40, top_p=1.0).probabilities(logits)
    best = np.argsort(-logits)[:40]
    assert set(np.flatnonzero(p)) == set(best)
    z = logits[best].astype(np.float64)
    np.testing.assert_allclose(p[best], np.exp(z - z.max()) / np.exp(z - z.max()).sum(), rtol=0, atol=1e-12)


def reference_top_k(x, k):
    """The k largest of x, largest first, a tie to the lower index, NaN left out."""
    order = [i for i in np.lexsort((np.arange(len(x)), -x)) if not np.isnan(x[i])]
    return order[:k]


@pytest.mark.parametrize("n, k", [(1, 1), (5, 3), (5, 5), (5, 9), (1000, 1), (1000, 40), (49152, 40), (300, 300)])
def test_top_k_kernel_against_a_sort(n, k):
    rng = np.random.default_rng(n * 1000 + k)
    rows = [rng.standard_normal(n),
            rng.integers(-3, 4, n).astype(np.float64),  # many ties
            np.sort(rng.standard_normal(n)),  # every new value the best so far
            np.sort(rng.standard_normal(n))[::-1].copy()]
    spiked = rng.standard_normal(n)
    spiked[rng.integers(0, n, max(n // 7, 1))] = np.nan
    spiked[rng.integers(0, n, max(n // 11, 1))] = -np.inf
    spiked[rng.integers(0, n, max(n // 13, 1))] = np.inf
    rows.append(spiked)
    for x in rows:
        ids = np.full(k, -1, np.int32)
        kept = _kernels.top_k(ids, x)
        assert ids[:kept].tolist() == reference_top_k(x, k)


def test_top_k_kernel_refuses_wrong_buffers():
    with pytest.raises(ValueError, match="float64"):
        _kernels.top_k(np.zeros(3, np.int32), np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="int32"):
        _kernels.top_k(np.zeros(3, np.int64), np.zeros(10))
    assert _kernels.top_k(np.zeros(0, np.int32), np.zeros(10)) == 0
    x = np.zeros(10)
    with pytest.raises(ValueError, match="overlap"):
        _kernels.top_k(x.view(np.int32)[:2], x)


@pytest.mark.parametrize("k", [KERNEL_K, KERNEL_K + 1, 300, 5000, 49152, 60000])
def test_top_ids_past_the_kernel_partitions_alike(k):
    """Above KERNEL_K (where the kernel's insertions could cost V * k) a partition: the same ids, in the same order."""
    rng = np.random.default_rng(k)
    for x in (rng.standard_normal(49152), rng.integers(-3, 4, 49152).astype(np.float64), np.arange(49152.0)):
        assert top_ids(x, k).tolist() == reference_top_k(x, k)


def test_top_k_among_ties_keeps_the_lowest_ids():
    logits = np.zeros(100)
    logits[[7, 50, 90]] = 1.0
    p = Sampler(temperature=1.0, top_k=5, top_p=1.0).probabilities(logits)
    assert np.flatnonzero(p).tolist() == [0, 1, 7, 50, 90]


@pytest.mark.parametrize("scale", [8.0, 4.0, 3.5, 3.0, 1.0, 0.01])  # nuclei of 1 to 46k ids
@pytest.mark.parametrize("top_p", [0.5, 0.95])
def test_top_p_alone_on_a_large_vocabulary_is_the_sorted_prefix(scale, top_p):
    logits = (np.random.default_rng(int(scale * 100)).standard_normal(49152) * scale).astype(np.float32)
    got = Sampler(temperature=0.8, top_k=0, top_p=top_p).probabilities(logits)
    z = logits.astype(np.float64) / 0.8  # the definition: sort all, softmax over all, smallest prefix with top_p
    order = np.argsort(-z, kind="stable")
    p = np.exp(z[order] - z.max())
    p /= p.sum()
    keep = np.searchsorted(np.cumsum(p), top_p) + 1
    expected = np.zeros(len(z))
    expected[order[:keep]] = p[:keep] / p[:keep].sum()
    assert np.count_nonzero(got) == keep
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_fixed_seed_reproduces_and_seeds_differ():
    logits = np.zeros(1000)  # uniform: any two seeds would have to agree by chance 50 times
    run = lambda seed: draws(Sampler(temperature=1.0, top_k=0, top_p=1.0, seed=seed), logits, 50).tolist()
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_1_is_greedy_and_temperature_0_is_argmax():
    rng = np.random.default_rng(0)
    top1 = Sampler(temperature=1.5, top_k=1, top_p=0.95, seed=0)
    greedy = Sampler(temperature=0)
    for _ in range(200):
        logits = rng.standard_normal(500).astype(np.float32) * 3
        assert top1(logits) == greedy(logits) == int(np.argmax(logits))
    one_hot = greedy.probabilities(LOGITS)
    assert one_hot[1] == 1 and one_hot.sum() == 1


def test_repeat_penalty_positive_and_negative_logits():
    logits = np.array([2.0, -1.0, 0.5, 0.0, 1.0])
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=2.0)
    # id 0 (positive) is divided, id 1 (negative) multiplied; repeated ids count once
    z = np.array([1.0, -2.0, 0.5, 0.0, 1.0])
    expected = np.exp(z) / np.exp(z).sum()
    got = s.probabilities(logits, recent=[0, 1, 0, 0])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    base = s.probabilities(logits)
    assert got[0] < base[0] and got[1] < base[1]
    assert np.all(got[2:] > base[2:])  # untouched logits gain only the mass the penalised ones lost
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, 0.0, 1.0])  # the caller's array is not modified


def test_repeat_penalty_window():
    logits = np.array([2.0, -1.0, 0.5, 0.0, 1.0])
    recent = [0, 1, 2, 3]
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=2.0, repeat_window=2)
    z = np.array([2.0, -1.0, 0.25, 0.0, 1.0])  # only ids 2 and 3 are in the last two; 0 * 2 is still 0
    np.testing.assert_allclose(s.probabilities(logits, recent), np.exp(z) / np.exp(z).sum(), rtol=0, atol=1e-12)
    for off in (Sampler(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=2.0, repeat_window=0),
                Sampler(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0)):
        np.testing.assert_array_equal(off.probabilities(logits, recent), off.probabilities(logits))


def test_repeat_penalty_applies_before_greedy():
    logits = np.array([3.0, 2.0, -5.0])
    assert Sampler(temperature=0)(logits, recent=[0]) == 0
    assert Sampler(temperature=0, repeat_penalty=2.0)(logits, recent=[0]) == 1  # 3 / 2 < 2


def test_positional_call_of_generate_still_binds_seed():
    a, b = Sampler(1.0, 0, 1.0, 5), Sampler(temperature=1.0, top_k=0, top_p=1.0, seed=5)
    logits = np.zeros(100)
    assert draws(a, logits, 20).tolist() == draws(b, logits, 20).tolist()
    with pytest.raises(TypeError):
        Sampler(1.0, 0, 1.0, 5, 0.1)  # min_p and the rest are keyword-only


@pytest.mark.parametrize("kwargs, word", [
    (dict(temperature=-0.1), "temperature"), (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.01), "top_p"), (dict(top_p=float("nan")), "top_p"),
    (dict(min_p=-0.1), "min_p"), (dict(min_p=1.0), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"), (dict(repeat_penalty=-1.0), "repeat_penalty"),
    (dict(repeat_window=-1), "repeat_window"),
])
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Sampler(**kwargs)


def test_valid_edge_arguments():
    Sampler(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=0.5, repeat_window=0)
