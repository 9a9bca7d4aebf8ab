"""Continuous batching: many generations share each forward.

The engine owns `parallel` slots, each a KV cache. A request waits in the queue until a slot
is free, then runs its prompt (in chunks of at most `batch_size` tokens a step, so a long prompt
never stalls the others for long) and decodes. Every step is one Model.forward_batch over all
the busy slots: one read of the weights serves every sequence. A request that finishes or is
cancelled frees its slot at once; the slot keeps its cache, so a follow-up whose prompt starts
the same way (the next turn of a chat) runs only what is new.

    with Engine(model, parallel=4) as engine:
        for r in engine.submit(ids, max_tokens=64, temperature=0):
            print(r.text, end="")
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Iterator

from .errors import LlmrunError, SettingError
from .generation import Decoding, GenerationResponse, check_prompt, common_prefix
from .model import KVCache, Model, Segment


class QueueFull(LlmrunError):
    """Every slot is busy and the queue holds as many requests as it may."""


class Cancelled(LlmrunError):
    """The request was cancelled (its client went away) before it finished."""


class Request:
    """A generation submitted to the engine. Iterate it for its GenerationResponses (the last has
    finish_reason set); cancel() it from any thread to stop it and free its slot."""

    def __init__(self, decoding: Decoding, prompt: list[int]):
        self.decoding, self.prompt = decoding, prompt
        self.cached = 0  # prompt tokens found in the slot's cache, not run again
        self.records: queue.SimpleQueue = queue.SimpleQueue()  # GenerationResponse, or an exception
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def next(self, timeout: float | None = None) -> GenerationResponse:
        """The next record, waiting up to `timeout` seconds (queue.Empty if none came)."""
        r = self.records.get(timeout=timeout)
        if isinstance(r, BaseException):
            raise r
        return r

    def __iter__(self) -> Iterator[GenerationResponse]:
        while True:
            r = self.next()
            yield r
            if r.finish_reason:
                return


class Slot:
    def __init__(self, cache: KVCache):
        self.cache = cache
        self.request: Request | None = None
        self.pending: list[int] = []  # prompt tokens not yet run
        self.token: int | None = None  # the last token drawn, to run next
        self.freed_at = 0.0


class Engine:
    """Runs submitted requests on `parallel` slots of `n_ctx` positions each, on its own thread."""

    def __init__(self, model: Model, parallel: int = 4, n_ctx: int | None = None, max_queue: int = 64,
                 batch_size: int = 512):
        if parallel < 1 or batch_size < 1 or max_queue < 0:
            raise SettingError("parallel and batch_size need to be at least 1, max_queue at least 0")
        self.model, self.max_queue, self.batch_size = model, max_queue, batch_size
        # the default: the trained context, or what fits in memory for every slot (said in context_note)
        self.context_note = None if n_ctx else model.default_context(parallel)[1]
        self.slots = [Slot(model.new_cache(n_ctx or model.default_context(parallel)[0])) for _ in range(parallel)]
        self.n_ctx = self.slots[0].cache.n_ctx
        self.waiting: deque[Request] = deque()
        self.wake = threading.Condition()
        self.closed = False
        self.steps = 0  # forwards run, for the curious (and the tests)
        self.thread = threading.Thread(target=self._run, name="llmrun-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], max_tokens: int = 256, stop=None, **sampling) -> Request:
        """Queue a generation of up to `max_tokens` after `prompt` (token ids). Settings are checked
        here, so a bad one raises at once (SettingError, ContextError), as does a full queue."""
        check_prompt(prompt, self.n_ctx)
        r = Request(Decoding(self.model, max_tokens, stop, **sampling), list(prompt))
        with self.wake:
            if self.closed:
                raise LlmrunError("the engine is closed")
            self._prune()
            free = sum(s.request is None for s in self.slots)  # each takes one waiting request next step
            if len(self.waiting) >= free + self.max_queue:
                raise QueueFull(f"all {len(self.slots)} slots are busy and {self.max_queue} requests wait: "
                                "try again shortly")
            self.waiting.append(r)
            self.wake.notify()
        return r

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine's thread; requests still running or waiting end with Cancelled."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join()

    def status(self) -> dict:
        """How busy the engine is: each slot's state and cache use, and the requests waiting."""
        with self.wake:
            self._prune()
            return {"waiting": len(self.waiting),
                    "slots": [{"id": i, "state": "idle" if s.request is None else "prompt" if s.pending else "generating",
                               "n_ctx": s.cache.n_ctx, "n_cached": s.cache.n} for i, s in enumerate(self.slots)]}

    def _prune(self) -> None:
        """Forget waiting requests cancelled before they had a slot (their clients left): they
        hold no place in the queue. With the lock held."""
        self.waiting = deque(r for r in self.waiting if not r.cancelled.is_set())

    # --- the engine's thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.closed and not self.waiting and all(s.request is None for s in self.slots):
                    self.wake.wait()
                if self.closed:
                    break
                self._admit()
            self._drop_cancelled()
            busy = [s for s in self.slots if s.request is not None]
            if busy:
                self._step(busy)
        for s in self.slots:
            if s.request is not None:
                s.request.records.put(Cancelled("the server is shutting down"))
        for r in self.waiting:
            r.records.put(Cancelled("the server is shutting down"))

    def _admit(self) -> None:
        """Give waiting requests free slots, each the slot whose cache shares the longest prefix
        with its prompt (else the one free longest): that prefix is not run again."""
        while self.waiting:
            free = [s for s in self.slots if s.request is None]
            if not free:
                return
            r = self.waiting.popleft()
            if r.cancelled.is_set():
                continue
            best = max(free, key=lambda s: (common_prefix(s.cache.tokens, r.prompt), -s.freed_at))
            keep = min(common_prefix(best.cache.tokens, r.prompt), len(r.prompt) - 1)  # the last must run
            best.cache.truncate(keep)
            r.cached = keep
            r.decoding.begin(best.cache, len(r.prompt) - keep)
            best.request, best.pending, best.token = r, list(r.prompt[keep:]), None

    def _free(self, s: Slot) -> None:
        s.request, s.pending, s.token = None, [], None
        s.freed_at = time.monotonic()

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            if s.request is not None and s.request.cancelled.is_set():
                s.request.records.put(Cancelled("cancelled"))
                self._free(s)

    def _step(self, busy: list[Slot]) -> None:
        """One forward: a token for each decoding slot, and prompt chunks up to batch_size."""
        batch, budget = [], self.batch_size
        for s in busy:
            if s.pending:
                if budget == 0:
                    continue
                chunk, s.pending = s.pending[:budget], s.pending[budget:]
                budget -= len(chunk)
                batch.append((s, Segment(chunk, s.cache, last_only=True)))
            else:
                batch.append((s, Segment([s.token], s.cache, last_only=True)))
        try:
            most = self.model.backend.max_segments or len(batch)  # 1 where a GPU cannot batch the model
            segments = [seg for _, seg in batch]
            logits = [x for i in range(0, len(segments), most) for x in self.model.forward_batch(segments[i:i + most])]
        except Exception as e:  # noqa: BLE001 (handed to the requests' threads, which answer it)
            for s, _ in batch:
                s.request.records.put(e)
                s.cache.truncate(0)
                self._free(s)
            return
        self.steps += 1
        for (s, _), x in zip(batch, logits):
            if s.pending:
                continue  # a prompt chunk: the logits that count come with its last one
            try:
                r = s.request.decoding.step(x[-1])
            except Exception as e:  # noqa: BLE001
                r = e
            s.request.records.put(r)
            if isinstance(r, Exception) or r.finish_reason:
                self._free(s)
            else:
                s.token = r.token
