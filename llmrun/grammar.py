"""Structured output: a grammar that constrains sampling token by token, so that what a model
writes follows a JSON schema (or any Lark grammar) by construction, even from a 135M model.

The grammar engine is llguidance (docs/server.md says why it, and not outlines-core): from a
JSON schema or a Lark grammar it builds a matcher that gives, before each token, the set of
tokens that keep the text inside the grammar, in tens of microseconds for a vocabulary of 49k,
with no compile step per schema worth caching. A `Grammar` is checked and compiled once; each
sequence that follows it holds its own `Constraint` (its place in the grammar) in its
`Decoding`, so batched requests with different grammars decode side by side.

    g = Grammar.from_json_schema(model.tokenizer, {"type": "object", "properties": {...}})
    for r in generate(model, prompt, grammar=g): ...
"""
from __future__ import annotations

import json
import re
import threading
import weakref

import numpy as np

from .errors import LlmrunError

INSTALL = "pip install 'llmrun[agents]'"

# JSON as models mostly saw it written (json.dumps's own style): one space after ':' and ',',
# no line breaks. Free whitespace would let a small model pad an answer with it for ever.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


# What a token the grammar does not allow has taken off its logit: finite, so the arithmetic stays
# exact, and far below any logit, so no sampler gives it any probability (exp(-1e30) is 0).
MASKED = np.float32(1e30)


class GrammarError(LlmrunError):
    """A schema or grammar the engine refuses; the message says why."""


class GrammarUnavailable(LlmrunError):
    """The grammar engine is not installed."""


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GrammarUnavailable(f"structured output needs the llguidance package: {INSTALL}") from None
    return llguidance


_engine_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_engine_tokenizers_lock = threading.Lock()


def engine_tokenizer(tokenizer):
    """The tokenizer as llguidance sees it: every token's bytes, which tokens are special, the
    end-of-text ids. Made once per tokenizer (0.2 s for 49k tokens) and kept while it lives."""
    llg = _llguidance()
    with _engine_tokenizers_lock:
        made = _engine_tokenizers.get(tokenizer)
        if made is None:
            eos = list(tokenizer.eos_ids) or None
            if tokenizer.kind == "bpe":  # llguidance reads a tokenizer.json itself, added tokens and all
                made = llg.LLTokenizer(tokenizer.to_json(), eos_token=eos)
            else:
                made = llg.LLTokenizer(llg.TokenizerWrapper(_Pieces(tokenizer)), eos_token=eos)
            _engine_tokenizers[tokenizer] = made
    return made


class _Pieces:
    """A sentencepiece vocabulary in the form llguidance's TokenizerWrapper takes: each token's
    bytes, and a tokenize(text) whose tokens spell exactly the text, which the engine relies on."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.special_token_ids = tokenizer.special_ids()
        self.eos_token_id = tokenizer.eos_ids[0] if tokenizer.eos_ids else None
        self.bos_token_id = tokenizer.bos_id
        special = set(self.special_token_ids)
        self.ids = {b: i for i, b in reversed(list(enumerate(self.tokens))) if b and i not in special}
        self.longest = max(map(len, self.ids), default=1)

    def __call__(self, text: bytes) -> list[int]:
        ids = self.tokenizer.encode(text.decode(errors="replace"), add_special_tokens=False)
        if b"".join(self.tokens[i] for i in ids) == text:
            return ids
        # sentencepiece wrote something else (its word-start space before the text, or the
        # replacement character for a split one): the longest pieces that spell it, left to right
        out, at = [], 0
        while at < len(text):
            n = next((n for n in range(min(self.longest, len(text) - at), 0, -1) if text[at:at + n] in self.ids), 0)
            if not n:  # a byte no piece holds: nothing spells it
                return out
            out.append(self.ids[text[at:at + n]])
            at += n
        return out


class Grammar:
    """A grammar checked and compiled for one tokenizer. Each sequence that follows it takes
    its own `constraint()`; one Grammar may serve many sequences, from any thread."""

    def __init__(self, tokenizer, grammar: str, what: str = "the grammar"):
        """`grammar` is llguidance's own form (Grammar.from_json_schema and from_lark make it)."""
        llg = _llguidance()
        self.tokenizer = engine_tokenizer(tokenizer)
        self.start = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if self.start.is_error():
            raise GrammarError(f"{what} is not usable: {_one_line(self.start.get_error())}")

    @classmethod
    def from_json_schema(cls, tokenizer, schema: dict | str) -> "Grammar":
        """Text that is JSON valid against `schema` (a dict, or its JSON text): {"type": "object"}
        is any JSON object."""
        llg = _llguidance()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise GrammarError(f"the JSON schema is not JSON: {e}") from None
        if not isinstance(schema, dict):
            raise GrammarError(f"a JSON schema must be an object, not {json.dumps(schema)[:40]}")
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)
        except (ValueError, TypeError) as e:
            raise GrammarError(f"the JSON schema is not usable: {e}") from None
        return cls(tokenizer, grammar, "the JSON schema")

    @classmethod
    def from_lark(cls, tokenizer, text: str) -> "Grammar":
        """Text in the language of a Lark grammar (llguidance's dialect: `start` is the top rule;
        `%json {...}` embeds a JSON schema)."""
        return cls(tokenizer, _llguidance().LLMatcher.grammar_from_lark(text), "the Lark grammar")

    def constraint(self) -> "Constraint":
        return Constraint(self.start.deep_copy(), self.tokenizer.vocab_size)


def _one_line(message: str) -> str:
    """The engine's message without the source lines and carets it draws under them."""
    lines = (line.strip() for line in message.splitlines())
    return " ".join(line for line in lines if re.search(r"[A-Za-z]", line) and not re.match(r"\d+ \|", line))


def as_grammar(tokenizer, json_schema=None, grammar=None) -> Grammar | None:
    """The Grammar that generate()'s `json_schema` (a dict or its JSON text) or `grammar` (Lark
    text, or a Grammar) ask for: at most one of them."""
    if json_schema is not None and grammar is not None:
        raise GrammarError("give a JSON schema or a grammar, not both")
    if json_schema is not None:
        return Grammar.from_json_schema(tokenizer, json_schema)
    if isinstance(grammar, str):
        return Grammar.from_lark(tokenizer, grammar)
    return grammar


class Constraint:
    """One sequence's place in a grammar: which tokens may come next (mask), the token drawn
    (advance), and whether the grammar is complete and allows nothing more (finished)."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.bits = np.zeros((vocab_size + 31) // 32, np.int32)  # a bit per token: may it come next

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` [V] with every token the grammar does not allow next pushed down by
        MASKED, out of any sampler's reach (the end-of-text token is allowed where the grammar is
        complete)."""
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        # 1 for allowed, 0 for not; ids past the tokenizer's (a model's padded vocabulary) read 0
        allowed = np.unpackbits(self.bits.view(np.uint8), count=len(logits), bitorder="little")
        if self.matcher.is_error() or not allowed.any():
            raise GrammarError(f"the grammar allows no next token: {self._error() or 'it is stuck'}")
        # arithmetic, not np.where: a mask that alternates often costs np.where ten times as much
        return logits + (allowed.astype(np.float32) - 1) * MASKED

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"the grammar failed after token {token}: {self._error()}")

    def _error(self) -> str:
        """The engine's reason, without the parser state it dumps after it. A grammar that forces
        endless text ('start: "a" start') runs into the engine's limits here, on its first tokens."""
        return self.matcher.get_error().split("\n<state>", 1)[0].strip()

    @property
    def finished(self) -> bool:
        """The text is complete and the grammar allows nothing more (no end-of-text needed)."""
        return self.matcher.is_stopped()
