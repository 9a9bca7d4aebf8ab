"""Generation: tokenize → prefill → decode loop → sampler → streaming detokeniser.

`generate()` is the one loop that chat, generate, bench and the server consume.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from .errors import ContextError, SettingError
from .model import KVCache, Model
from .sampling import Sampler
from .tokenizer import StreamDecoder


@dataclass
class GenerationResponse:
    text: str  # the new piece of text (possibly empty while a character is incomplete)
    token: int | None  # the token just sampled (None on the closing record of a stop string)
    prompt_tokens: int  # tokens processed in the prefill
    prompt_tps: float  # prefill speed, tokens/s
    generation_tokens: int  # tokens sampled so far
    generation_tps: float  # decode speed, tokens/s
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", or None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    for n in range(min(len(text), max(map(len, stops)) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return n
    return 0


def generate(model: Model, prompt, max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0, repeat_window: int = 64,
             seed: int | None = None, stop: str | list[str] | None = None,
             cache: KVCache | None = None) -> Iterator[GenerationResponse]:
    """Stream a continuation of `prompt` (text, or a list of token ids).

    Yields a record per sampled token with the new text; the last record has finish_reason
    set. With `cache`, the prompt continues from what the cache already holds (chat turns);
    the repeat penalty looks back over everything in the cache.
    """
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                      repeat_penalty=repeat_penalty, repeat_window=repeat_window, seed=seed)
    if max_tokens < 1:
        raise SettingError(f"max_tokens is {max_tokens}: generate at least one token")
    ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise SettingError("the prompt is empty")
    cache = cache if cache is not None else model.new_cache(min(model.config.max_seq_len, len(ids) + max_tokens))
    if cache.n + len(ids) > cache.n_ctx:
        raise ContextError(f"the prompt is {len(ids)} tokens and {cache.n} are in use, but the context holds "
                           f"{cache.n_ctx}: shorten the prompt or raise the context size")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    eos = set(model.tokenizer.eos_ids)
    detok = StreamDecoder(model.tokenizer)

    t0 = time.perf_counter()
    logits = model.forward(ids, cache, last_only=True)[-1]  # [V]
    prompt_tps = len(ids) / (time.perf_counter() - t0)
    text, sent = "", 0  # generated text so far, and how much of it has been yielded
    n = 0
    while True:
        token = sampler(logits, cache.tokens)
        n += 1
        # decode speed: the n - 1 forwards since the first token (which came with the prompt)
        tps = (n - 1) / (time.perf_counter() - t0) if n > 1 else 0.0
        if n == 1:
            t0 = time.perf_counter()
        if token in eos:
            yield GenerationResponse(text[sent:], token, len(ids), prompt_tps, n, tps, "stop")
            return
        text += detok.push(token)
        # a stop string cannot start in yielded text: what might begin one is held back
        hit = min((i for i in (text.find(s, sent) for s in stops) if i >= 0), default=-1)
        if hit >= 0:
            yield GenerationResponse(text[sent:hit], token, len(ids), prompt_tps, n, tps, "stop")
            return
        if n == max_tokens or cache.n >= cache.n_ctx:
            text += detok.flush()
            yield GenerationResponse(text[sent:], token, len(ids), prompt_tps, n, tps, "length")
            return
        upto = len(text) - (_held_back(text, stops) if stops else 0)
        yield GenerationResponse(text[sent:upto], token, len(ids), prompt_tps, n, tps)
        sent = upto
        logits = model.forward([token], cache)[-1]  # [V]
