"""Generation: tokenize → prefill → decode loop → sampler → streaming detokeniser.

`generate()` is the one loop that chat, generate and bench consume. Its per-token work (draw,
detokenise, stop strings, finish reason) is `Decoding`, which the server's engine
(llmrun.batching) drives for many sequences at once, one forward for all of them per step:
a loop that owns the forward cannot batch, so the loop and the per-sequence state are apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import ContextError, SettingError
from .grammar import Grammar, as_grammar
from .model import KVCache, Model
from .sampling import Sampler, top_ids
from .tokenizer import StreamDecoder


MAX_LOGPROBS = 20  # alternatives a token's log-probability may come with, as OpenAI allows


@dataclass
class TokenLogprob:
    """A drawn token's log-probability under the model (its logits' log-softmax, before any
    sampling setting), with the `n` most likely tokens' (id, log-probability), most likely first."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class GenerationResponse:
    text: str  # the new piece of text (possibly empty while a character is incomplete)
    token: int | None  # the token just sampled (None on the closing record of a stop string)
    prompt_tokens: int  # tokens processed in the prefill
    prompt_tps: float  # prefill speed, tokens/s
    generation_tokens: int  # tokens sampled so far
    generation_tps: float  # decode speed, tokens/s
    finish_reason: str | None = None  # "stop" (EOS, a stop string, a grammar complete), "length", or None
    logprob: TokenLogprob | None = None  # asked for with Decoding(logprobs=n); none for end-of-text


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    for n in range(min(len(text), max(map(len, stops)) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return n
    return 0


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many ids a and b share from the start (what a cache holding a can keep for b)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_prompt(ids: list[int], n_ctx: int, used: int = 0) -> None:
    """Refuse an empty prompt, or one a context of n_ctx positions, `used` of them taken, has no room for."""
    if not ids:
        raise SettingError("the prompt is empty")
    if used + len(ids) > n_ctx:
        raise ContextError(f"the prompt is {len(ids)} tokens and {used} are in use, but the context holds "
                           f"{n_ctx}: shorten the prompt or raise the context size")


class Decoding:
    """One sequence's generation after its prompt: draws each token from the logits (only among
    those its grammar allows next, if it has one), turns the tokens into text (holding back what
    might begin a stop string) and says when it is done. generate() drives one; the server's
    engine drives several, one forward for all per step, each with its own grammar or none.
    The settings are checked when it is made; begin() binds it to the cache its prompt runs in."""

    def __init__(self, model: Model, max_tokens: int = 256, stop: str | list[str] | None = None,
                 logprobs: int | None = None, grammar: Grammar | None = None, **sampling):
        self.sampler = Sampler(**sampling)
        if max_tokens < 1:
            raise SettingError(f"max_tokens is {max_tokens}: generate at least one token")
        if logprobs is not None and (isinstance(logprobs, bool) or not 0 <= logprobs <= MAX_LOGPROBS):
            raise SettingError(f"logprobs is {logprobs}: ask for 0 to {MAX_LOGPROBS} alternatives")
        self.logprobs = logprobs
        self.max_tokens = max_tokens
        self.stops = [stop] if isinstance(stop, str) else list(stop or [])
        self.eos = set(model.tokenizer.eos_ids)
        self.detok = StreamDecoder(model.tokenizer)
        self.text, self.sent = "", 0  # generated text so far, and how much of it has been given out
        self.n = 0  # tokens drawn
        self.prompt_tps = 0.0
        self.finish_reason: str | None = None
        # where this sequence is in its grammar (structured output): which tokens may come next
        self.constraint = grammar.constraint() if grammar is not None else None

    def begin(self, cache: KVCache, prompt_tokens: int) -> None:
        """The prompt's `prompt_tokens` tokens start running in `cache` now."""
        self.cache, self.prompt_tokens = cache, prompt_tokens
        self.t0 = time.perf_counter()  # the prompt's start, then the first token's

    def step(self, logits: np.ndarray) -> GenerationResponse:
        """Draw the next token from `logits` [V] (the last position's, after the prompt or the
        previous token ran) and say what it adds; the record has finish_reason set when done."""
        if self.n == 0:
            self.prompt_tps = self.prompt_tokens / (time.perf_counter() - self.t0)
        allowed = self.constraint.mask(logits) if self.constraint else logits
        token = self.sampler(allowed, self.cache.tokens)
        self.n += 1
        # decode speed: the n - 1 forwards since the first token (which came with the prompt)
        tps = (self.n - 1) / (time.perf_counter() - self.t0) if self.n > 1 else 0.0
        if self.n == 1:
            self.t0 = time.perf_counter()
        if token in self.eos:
            return self._record(self.text[self.sent:], token, tps, "stop")
        lp = None if self.logprobs is None else _logprob(logits, token, self.logprobs)  # the model's own
        if self.constraint:
            self.constraint.advance(token)
        self.text += self.detok.push(token)
        # a stop string cannot start in text given out: what might begin one is held back
        hit = min((i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            return self._record(self.text[self.sent:hit], token, tps, "stop", lp)
        done = self.constraint is not None and self.constraint.finished  # complete: nothing may follow
        if done or self.n == self.max_tokens or self.cache.n >= self.cache.n_ctx:
            self.text += self.detok.flush()
            return self._record(self.text[self.sent:], token, tps, "stop" if done else "length", lp)
        upto = len(self.text) - (_held_back(self.text, self.stops) if self.stops else 0)
        piece, self.sent = self.text[self.sent:upto], upto
        return self._record(piece, token, tps, None, lp)

    def _record(self, text: str, token: int, tps: float, finish_reason: str | None = None,
                logprob: TokenLogprob | None = None) -> GenerationResponse:
        self.finish_reason = finish_reason
        return GenerationResponse(text, token, self.prompt_tokens, self.prompt_tps, self.n, tps, finish_reason, logprob)


def _logprob(logits: np.ndarray, token: int, n: int) -> TokenLogprob:
    z = logits.astype(np.float64)
    z -= z.max()
    z -= np.log(np.exp(z).sum())  # log-softmax
    return TokenLogprob(token, float(z[token]), [(int(i), float(z[i])) for i in top_ids(z, n)])


def generate(model: Model, prompt, max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0, repeat_window: int = 64,
             seed: int | None = None, stop: str | list[str] | None = None,
             cache: KVCache | None = None, logprobs: int | None = None, json_schema: dict | str | None = None,
             grammar: str | Grammar | None = None) -> Iterator[GenerationResponse]:
    """Stream a continuation of `prompt` (text, or a list of token ids).

    Yields a record per sampled token with the new text; the last record has finish_reason
    set. With `cache`, the prompt continues from what the cache already holds (chat turns);
    the repeat penalty looks back over everything in the cache. With `logprobs` (0 to 20), each
    record but an end-of-text one carries its token's log-probability and that many alternatives.
    With `json_schema` (a dict or its JSON text; {"type": "object"} is any object) or `grammar`
    (Lark text, or a llmrun.grammar.Grammar), every token drawn keeps the text inside it, and the
    generation stops where the text is complete (needs llguidance: `pip install 'llmrun[agents]'`).
    """
    d = Decoding(model, max_tokens, stop, logprobs, as_grammar(model.tokenizer, json_schema, grammar),
                 temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repeat_penalty=repeat_penalty, repeat_window=repeat_window, seed=seed)
    ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    cache = cache if cache is not None else model.new_cache(min(model.config.max_seq_len, max(len(ids), 1) + max_tokens))
    check_prompt(ids, cache.n_ctx, cache.n)
    d.begin(cache, len(ids))
    logits = model.forward(ids, cache, last_only=True)[-1]  # [V]
    while True:
        r = d.step(logits)
        yield r
        if r.finish_reason:
            return
        logits = model.forward([r.token], cache)[-1]  # [V]
