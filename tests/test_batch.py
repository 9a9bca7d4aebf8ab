"""Model.forward_batch: several sequences, each with its own KV cache and position, in one forward
pass (a server's continuous batching). Every op but RoPE and attention works on each row alone
with the same arithmetic whatever rows run beside it (matmul quantises and multiplies each
activation row on its own; its tile and X16 kernels equal the one-token dot bit for bit), and
RoPE and attention run per segment with that segment's positions and cache; so a batch gives
each segment exactly the logits and cache rows it gets alone, and the tests hold it to that."""
from __future__ import annotations

import numpy as np
import pytest

import llmrun
from llmrun.backends import cpu
from llmrun.errors import ContextError, SettingError
from llmrun.model import Segment
from llmrun.models import convert
from llmrun.quant.layout import ROWS, X16
from llmrun.quant.types import TYPES as QTYPES

from conftest import make_hf_checkpoint

TYPES = list(QTYPES)  # every type the CPU runs (quant/types.py)
# Rows of 256 (hidden and FFN widths), so that a super-block type's (q4_k's) matrices are its
# own rather than the f16 that narrower rows fall back to.
WIDTHS = dict(hidden_size=256, intermediate_size=256)
VARIANTS = {
    "llama": dict(),  # tied head, 4 query heads on 2 kv heads
    "qwen2-bias": dict(arch="Qwen2ForCausalLM", model_type="qwen2", bias=True, tied=False,
                       rope={"rope_theta": 1000000.0}),
}
N_CTX = 32


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"batch-{request.param}")
    make_hf_checkpoint(d / "hf", **WIDTHS, **VARIANTS[request.param])
    return d


@pytest.fixture(scope="module", params=TYPES)
def model(request, checkpoint):
    out = checkpoint / f"{request.param}.llmr"
    convert(str(checkpoint / "hf"), str(out), request.param)
    m = llmrun.load(out)
    wq = m.file.tensors["layers.0.wq"]
    assert wq.type.name == request.param  # the type under test, not a fallback
    assert wq.layout == (X16 if wq.type.x16 else ROWS)  # 256 rows: X16 wherever the type has it
    return m


def _clone(model, cache):
    twin = model.new_cache(cache.n_ctx)
    twin.k[:], twin.v[:], twin.n, twin.tokens = cache.k, cache.v, cache.n, list(cache.tokens)
    return twin


def _assert_same_cache(a, b):
    np.testing.assert_array_equal(a.k, b.k)
    np.testing.assert_array_equal(a.v, b.v)
    assert a.n == b.n and a.tokens == b.tokens


def _snapshot(cache):
    return cache.k.copy(), cache.v.copy(), cache.n, list(cache.tokens)


def _assert_unchanged(cache, snapshot):
    k, v, n, tokens = snapshot
    np.testing.assert_array_equal(cache.k, k)
    np.testing.assert_array_equal(cache.v, v)
    assert cache.n == n and cache.tokens == tokens


def _four_caches(model):
    """Two caches after a prefill of their own (5 and 3 tokens), two fresh."""
    caches = [model.new_cache(N_CTX) for _ in range(4)]
    model.forward([3, 17, 250, 99, 4], caches[0])
    model.forward([120, 7, 64], caches[1])
    return caches


def test_batch_equals_each_segment_alone(model):
    """Segments of different lengths and positions (a decode step after a prefill, a prompt
    continued, two fresh prompts), asking all, the last, or some logits: each gets bit for bit
    the logits and cache rows of forward() alone; then batched greedy decode stays equal too."""
    batched = _four_caches(model)
    alone = [_clone(model, c) for c in batched]
    batch = [Segment([31], batched[0]),
             Segment([200, 5, 9, 11], batched[1], last_only=True),
             Segment([1, 2, 3, 4, 5, 6, 7], batched[2], logits_from=2),
             Segment([42], batched[3])]
    got = model.forward_batch(batch)
    want = [model.forward(s.tokens, c, s.last_only, logits_from=s.logits_from) for s, c in zip(batch, alone)]
    assert [g.shape for g in got] == [(1, 320), (1, 320), (5, 320), (1, 320)]
    for g, w, b, a in zip(got, want, batched, alone):
        np.testing.assert_array_equal(g, w)
        _assert_same_cache(b, a)

    for _ in range(3):  # greedy decode, all four in one call per step
        next_ids = [int(g[-1].argmax()) for g in got]
        got = model.forward_batch([Segment([t], c) for t, c in zip(next_ids, batched)])
        want = [model.forward([t], c) for t, c in zip(next_ids, alone)]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    for b, a in zip(batched, alone):
        _assert_same_cache(b, a)


def test_one_segment_is_forward(model):
    """Model.forward is forward_batch of one segment, and both equal the Python graph."""
    a, b = model.new_cache(N_CTX), model.new_cache(N_CTX)
    [got] = model.forward_batch([Segment([5, 6, 7, 8], a, logits_from=1)])
    np.testing.assert_array_equal(got, model.forward([5, 6, 7, 8], b, logits_from=1, reference=True))
    _assert_same_cache(a, b)


def test_a_segment_that_fills_its_context_exactly(model):
    """A segment ending on its cache's last row beside one in a larger cache: no row is written
    past a cache's end, and each still equals its run alone."""
    small, large = model.new_cache(6), model.new_cache(N_CTX)
    model.forward([9, 8, 7], small)
    twins = [_clone(model, small), _clone(model, large)]
    got = model.forward_batch([Segment([1, 2, 3], small), Segment([4, 5], large, last_only=True)])
    want = [model.forward([1, 2, 3], twins[0]), model.forward([4, 5], twins[1], last_only=True)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    _assert_same_cache(small, twins[0])
    _assert_same_cache(large, twins[1])


# --- refusals: each leaves every cache as it was ------------------------------------------------

@pytest.fixture(scope="module")
def q8_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch-errors")
    make_hf_checkpoint(d / "hf")
    convert(str(d / "hf"), str(d / "q8_0.llmr"), "q8_0")
    return llmrun.load(d / "q8_0.llmr")


def test_empty_batch_is_refused(q8_model):
    with pytest.raises(ValueError, match="at least one segment"):
        q8_model.forward_batch([])


def test_same_cache_twice_is_refused(q8_model):
    caches = _four_caches(q8_model)
    before = [_snapshot(c) for c in caches]
    with pytest.raises(SettingError, match="cache appears twice"):
        q8_model.forward_batch([Segment([1], caches[0]), Segment([2], caches[1]), Segment([3], caches[0])])
    for c, s in zip(caches, before):
        _assert_unchanged(c, s)


def test_caches_sharing_memory_are_refused_by_the_kernels(q8_model):
    """Two cache objects over one array are not the same object, but the binding sees the
    overlap before any row is written."""
    a, b = q8_model.new_cache(8), q8_model.new_cache(8)
    b.store.v = a.store.v
    with pytest.raises(ValueError, match=r"segments\[0\] and segments\[1\] share cache memory"):
        q8_model.forward_batch([Segment([1], a), Segment([2], b)])
    assert a.n == b.n == 0 and not a.k.any() and not a.v.any()


def test_a_segment_past_its_context_is_refused(q8_model):
    caches = _four_caches(q8_model)
    short = q8_model.new_cache(6)
    q8_model.forward([1, 2, 3, 4], short)
    caches.insert(1, short)
    before = [_snapshot(c) for c in caches]
    with pytest.raises(ContextError, match="4 \\+ 3 tokens do not fit in the context of 6"):
        q8_model.forward_batch([Segment([1], caches[0]), Segment([5, 6, 7], short), Segment([2, 3], caches[2])])
    for c, s in zip(caches, before):
        _assert_unchanged(c, s)


@pytest.mark.parametrize("bad", [-1, 320])
def test_a_bad_token_id_in_any_segment_writes_nothing(q8_model, bad):
    caches = _four_caches(q8_model)
    before = [_snapshot(c) for c in caches]
    batch = [Segment([1], caches[0]), Segment([2, 3], caches[1]), Segment([4, 5, bad], caches[2]),
             Segment([6], caches[3])]
    with pytest.raises(SettingError, match=f"token id {bad} is out of range"):
        q8_model.forward_batch(batch)
    for c, s in zip(caches, before):
        _assert_unchanged(c, s)


def test_the_kernels_check_every_segments_ids_before_writing(q8_model):
    """The kernels read each id once, while another thread may change it: an id out of range in
    the last segment is found before the first segment's cache rows are written."""
    caches = _four_caches(q8_model)
    before = [_snapshot(c) for c in caches]
    segments = [(np.array(ids, np.int32), c.n, c.k, c.v, 0)
                for ids, c in zip([[1], [2, 3], [4, 5], [6, 7, 320]], caches)]
    with pytest.raises(ValueError, match=r"segments\[3\]\.tokens\[2\] = 320 is out of range \[0, 320\)"):
        cpu.forward_batch(q8_model.backend.graph, segments, q8_model.config.vocab_size)
    for c, s in zip(caches, before):
        _assert_unchanged(c, s)


def test_a_batch_larger_than_the_backend_takes_is_refused(q8_model, monkeypatch):
    """A GPU backend runs one sequence a call (max_segments 1): a larger batch is refused, not
    run one by one behind the caller's back, and before anything runs."""
    a, b = q8_model.new_cache(8), q8_model.new_cache(8)
    monkeypatch.setattr(q8_model.backend, "max_segments", 1)
    with pytest.raises(SettingError, match="the cpu backend runs 1 sequence\\(s\\) a call, not 2"):
        q8_model.forward_batch([Segment([1], a), Segment([2], b)])
    assert a.n == b.n == 0 and not a.k.any() and not b.k.any()


# --- the real model -------------------------------------------------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
STEPS = 16


def test_smollm2_greedy_decode_batched_equals_alone(smollm2_q4_0):
    """SmolLM2-135M q4_0: four prompts prefilled as segments of one call, then decoded 16 steps
    with all four in one forward_batch per step, give each prompt the tokens (and logits, bit for
    bit) it gets decoded alone."""
    model = llmrun.load(smollm2_q4_0)
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # the segments differ in length and position

    alone = []
    for ids in prompts:
        cache = model.new_cache(len(ids) + STEPS)
        logits, out = model.forward(ids, cache, last_only=True)[-1], []
        for _ in range(STEPS):
            out.append(int(logits.argmax()))
            logits = model.forward([out[-1]], cache)[-1]
        alone.append((out, logits))

    caches = [model.new_cache(len(ids) + STEPS) for ids in prompts]
    logits = [x[-1] for x in model.forward_batch([Segment(ids, c, last_only=True) for ids, c in zip(prompts, caches)])]
    batched = [[] for _ in prompts]
    for _ in range(STEPS):
        for out, x in zip(batched, logits):
            out.append(int(x.argmax()))
        logits = [x[-1] for x in model.forward_batch([Segment([out[-1]], c) for out, c in zip(batched, caches)])]
    for (want, want_logits), got, got_logits in zip(alone, batched, logits):
        assert got == want
        np.testing.assert_array_equal(got_logits, want_logits)


def test_a_fresh_cache_commits_only_what_is_written(smollm2_q4_0):
    """A server holds several long-context caches: the first tokens into one commit a few
    small pages per layer, not the 2 MiB huge pages numpy's own zeros would ask for (~120 MiB
    each for SmolLM2's 30 layers)."""
    def rss_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    model = llmrun.load(smollm2_q4_0)
    model.forward([1, 2, 3], model.new_cache(64))  # the scratch buffers, once
    caches = [model.new_cache(8192) for _ in range(4)]
    before = rss_kib()
    for c in caches:
        model.forward([1, 2, 3], c, last_only=True)
    assert rss_kib() - before < 16 * 1024


def test_smollm2_batch_is_the_same_on_any_thread_count(smollm2_q4_0):
    """Four sequences' attention runs as one job split over the threads (and on one thread, as
    a loop): the logits of a batched decode step do not depend on the thread count."""
    from llmrun import _kernels
    model = llmrun.load(smollm2_q4_0)
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    before = _kernels.get_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            _kernels.set_threads(threads)
            caches = [model.new_cache(64) for _ in prompts]
            model.forward_batch([Segment(ids, c, last_only=True) for ids, c in zip(prompts, caches)])
            results.append(model.forward_batch([Segment([7], c) for c in caches]))
    finally:
        _kernels.set_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
