"""Chat templates: the model's own Jinja template (Hugging Face compatible), rendered with jinja2."""
from __future__ import annotations

import functools
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from typing import Iterator

from .atomic import atomic_file
from .errors import ContextError, LlmrunError
from .generation import GenerationResponse, common_prefix, generate


RENDER_SECONDS = 2.0  # chat templates render in milliseconds; one that runs longer is refused
TEMPLATE_MAX_INT = 1 << 20  # bound on a number in `*`, `**`, `%`-widths and calls: no template needs more
FORMAT_SPEC = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d*))?")  # a %-format's width and precision


def _huge(value) -> bool:
    return isinstance(value, int) and abs(value) > TEMPLATE_MAX_INT


def _huge_format(fmt) -> bool:
    """A %-format string with a width or precision over the bound ('%999999999d')."""
    return isinstance(fmt, str) and any(len(n) > 7 or int(n) > TEMPLATE_MAX_INT
                                        for spec in FORMAT_SPEC.findall(fmt) for n in spec if n)


def _bounded_filter(name: str, f):
    """A jinja2 filter that refuses huge numbers (`center(10**9)`, `'%999999999d' | format`)."""
    @functools.wraps(f)  # keeps jinja2's pass_context/pass_environment marks
    def checked(*args, **kwargs):
        values = (*args, *kwargs.values())
        if any(map(_huge, values)) or name == "format" and any(map(_huge_format, values)):
            raise LlmrunError(f"the chat template calls {name} with a number over {TEMPLATE_MAX_INT}: refused")
        return f(*args, **kwargs)
    return checked


@lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """jinja2's sandbox (no Python internals, no mutation of what it is given), and no
        huge numbers: `'x' * 10**9`, `9**9**9` and `'x'.ljust(10**9)` are refused before they run."""
        intercepted_binops = frozenset(["*", "**", "%"])

        def call_binop(self, context, operator, left, right):
            if (_huge(left) or _huge(right) or operator == "**" and isinstance(right, int) and right > 64
                    or operator == "%" and _huge_format(left)):
                raise LlmrunError(f"the chat template computes {left!r:.40} {operator} {right!r:.40}: too large")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature)
            if any(map(_huge, (*args, *kwargs.values()))):
                raise LlmrunError("the chat template calls a function with a number over "
                                  f"{TEMPLATE_MAX_INT}: refused")
            return super().call(__context, __obj, *args, **kwargs)

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`, which transformers reads to mark the assistant's
        tokens: its body renders as it is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise LlmrunError(f"the chat template refused the conversation: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # Sandboxed: a template comes from a model file, which may come from anywhere. Set up as
    # transformers' apply_chat_template sets up its own (utils/chat_template_utils.py), so that a
    # template renders here as it does there.
    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson  # json.dumps as it is (jinja2's own tojson escapes < > & ')
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except (jinja2.TemplateError, RecursionError, MemoryError) as e:
        raise LlmrunError(f"the model's chat template does not parse: {e}") from None


def _render(template, seconds: float, context: dict) -> str:
    """template.render(**context), refused once it has run `seconds`: a loop in a template
    from a file must not hang the program. The deadline is checked on every line the template
    runs (sys.settrace, on the template's own frames only)."""
    deadline = time.monotonic() + seconds

    def each_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise LlmrunError(f"the chat template ran for over {seconds:g} s: refused")
        return each_line

    def each_call(frame, event, arg):
        return each_line if frame.f_code.co_filename == "<template>" else None

    before = sys.gettrace()
    sys.settrace(each_call)
    try:
        return template.render(**context)
    finally:
        sys.settrace(before)


def render_chat(model, messages: list[dict], add_generation_prompt: bool = True, template: str | None = None,
                template_kwargs: dict | None = None) -> str:
    """The conversation as the model was trained to see it, ending with the assistant's cue
    (`template` overrides the model's own). `template_kwargs` are more variables for the template,
    as transformers' apply_chat_template(**kwargs) passes them: enable_thinking=False, tools, documents..."""
    template = template or model.chat_template
    if not template:
        raise LlmrunError("this model has no chat template: give one with --chat-template, or use `generate --raw`")
    tok = model.tokenizer
    names = {"bos_token": tok.bos_id, "eos_token": tok.eos_ids[0] if tok.eos_ids else None}
    special = {k: tok.decode([v]) if v is not None else "" for k, v in names.items()}
    try:
        # as apply_chat_template: the special tokens, tools and documents (None unless given), the
        # caller's variables over them, then the conversation
        context = {**special, "tools": None, "documents": None, **(template_kwargs or {}),
                   "messages": messages, "add_generation_prompt": add_generation_prompt}
        return _render(_compile(template), RENDER_SECONDS, context)
    except LlmrunError:
        raise
    except Exception as e:  # a template's own error (bad field access and the like)
        raise LlmrunError(f"the chat template failed: {e}") from None


def chat_ids(model, messages: list[dict], template_kwargs: dict | None = None) -> list[int]:
    """Token ids of the rendered conversation. The template writes any BOS itself, so the
    tokenizer adds no special tokens of its own."""
    text = render_chat(model, messages, template_kwargs=template_kwargs)
    return model.tokenizer.encode(text, add_special_tokens=False)


@dataclass
class Settings:
    """What shapes a reply; saved with the conversation."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_window: int = 64
    seed: int | None = None
    max_tokens: int = 1024

    def sampling(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "max_tokens"}


@dataclass
class TurnStats:
    evaluated: int = 0  # prompt tokens run this turn (only what the cache lacked)
    prompt_tps: float = 0.0
    generated: int = 0
    generation_tps: float = 0.0
    ttft: float = 0.0  # seconds from the turn's start to its first token
    context_used: int = 0
    context_size: int = 0
    finish_reason: str | None = None


class ChatSession:
    """A conversation with a model. The KV cache outlives turns: each turn renders the whole
    conversation, keeps the cached prefix it shares with it, and runs only the rest."""

    def __init__(self, model, system: str | None = None, template: str | None = None, n_ctx: int | None = None,
                 overflow: str = "shift", settings: Settings | None = None, stop=(),
                 template_kwargs: dict | None = None):
        if overflow not in ("shift", "stop"):
            raise ValueError(f"context overflow must be 'shift' or 'stop', not {overflow!r}")
        self.model, self.template, self.overflow, self.stop = model, template, overflow, list(stop)
        self.template_kwargs = template_kwargs  # more variables for the template (enable_thinking=False...)
        self.prompt = ""  # the conversation as last rendered
        self.settings = settings or Settings()
        self.cache = model.new_cache(n_ctx)
        self.system = system
        self.messages: list[dict] = []
        self.stats = TurnStats(context_size=self.cache.n_ctx)
        self.dropped_turns = 0  # oldest turns let go to fit the context (overflow "shift")

    def conversation(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def prompt_ids(self) -> list[int]:
        text = render_chat(self.model, self.conversation(), template=self.template,
                           template_kwargs=self.template_kwargs)
        self.prompt = text  # the last one rendered: whether it opened a <think> for the reply
        return self.model.tokenizer.encode(text, add_special_tokens=False)

    def reasoning_split(self) -> "ReasoningSplit | None":
        """A splitter for the reply being streamed, where the template reasons."""
        if not reasons(self.template or self.model.chat_template):
            return None
        return ReasoningSplit(opens_reasoning(self.prompt))

    def _fit(self) -> list[int]:
        """The prompt for the next reply, dropping the oldest turns (never the system message
        or the newest user message) until it leaves room to answer."""
        room = min(self.settings.max_tokens, self.cache.n_ctx // 4)
        ids = self.prompt_ids()
        while len(ids) + room > self.cache.n_ctx:
            if self.overflow == "stop" or len(self.messages) <= 1:
                raise ContextError(f"the conversation ({len(ids)} tokens) leaves no room to answer in the "
                                   f"context of {self.cache.n_ctx}: /clear it, or raise --ctx")
            del self.messages[:2 if self.messages[0]["role"] == "user" and len(self.messages) > 2 else 1]
            self.dropped_turns += 1
            ids = self.prompt_ids()
        return ids

    def say(self, text: str) -> Iterator[GenerationResponse]:
        """Add a user message and stream the reply."""
        self.messages.append({"role": "user", "content": text})
        return self._reply()

    def regenerate(self) -> Iterator[GenerationResponse]:
        """Drop the last reply and answer the same message again."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise LlmrunError("there is no message to answer again")
        return self._reply()

    def _reply(self) -> Iterator[GenerationResponse]:
        start = time.perf_counter()
        try:
            ids = self._fit()
        except LlmrunError:
            self.messages.pop()  # the message that did not fit
            raise
        keep = common_prefix(self.cache.tokens, ids)
        keep = min(keep, len(ids) - 1)  # the last prompt token must run: its logits pick the first reply token
        self.cache.truncate(keep)
        self.stats = TurnStats(evaluated=len(ids) - keep, context_size=self.cache.n_ctx)
        s = self.settings
        reply = ""
        try:
            for r in generate(self.model, ids[keep:], max_tokens=min(s.max_tokens, self.cache.n_ctx - len(ids)),
                              stop=self.stop, cache=self.cache, **s.sampling()):
                if not self.stats.generated:
                    self.stats.ttft = time.perf_counter() - start
                reply += r.text
                self.stats.prompt_tps, self.stats.generated = r.prompt_tps, r.generation_tokens
                self.stats.generation_tps, self.stats.finish_reason = r.generation_tps, r.finish_reason
                yield r
        finally:  # a reply cut short by Ctrl-C is kept as far as it got
            self.messages.append({"role": "assistant", "content": reply})
            self.cache.truncate(self.cache.n)
            self.stats.context_used = self.cache.n

    def clear(self) -> None:
        self.messages.clear()
        self.cache.truncate(0)

    def save(self, path: str) -> None:
        state = {"system": self.system, "messages": self.messages, "settings": asdict(self.settings)}
        with atomic_file(path, "w") as f:
            f.write(json.dumps(state, ensure_ascii=False, indent=1))

    def load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            messages = state["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in messages):
                raise ValueError("each message needs a role and a content")
            settings = Settings(**state.get("settings", {}))
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise LlmrunError(f"{path}: not a saved conversation ({e})") from None
        self.system, self.messages, self.settings = state.get("system"), messages, settings



# --- reasoning models: <think> ... </think> ------------------------------------------------------

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def reasons(template: str | None) -> bool:
    """Whether a chat template knows the <think> ... </think> form (Qwen3, SmolLM3, DeepSeek-R1
    distills): only then is a reply split into reasoning and content."""
    return bool(template) and THINK_CLOSE in template


def opens_reasoning(prompt: str) -> bool:
    """Whether the template's generation prompt opened a <think> for the model (DeepSeek-R1's
    distills end it with "<think>\n"): the reply then starts with reasoning, without the tag. Only
    the prompt's end counts: a message that merely mentions the tag opens nothing."""
    return prompt.rstrip().endswith(THINK_OPEN)


class ReasoningSplit:
    """A reply streamed in pieces, split into its reasoning (between <think> and </think>, the
    opening tag at the start of the reply or already in the prompt) and its content (the rest),
    as OpenAI-style servers give them (reasoning_content, content). Text that may be the start of
    a tag is held back until the next piece says; the newlines that follow a tag are dropped, as
    the templates that write these tags drop them when they render the reply back."""

    def __init__(self, reasoning: bool = False):
        self.state = "reasoning" if reasoning else "start"
        self.held = ""
        self.skip_newlines = reasoning

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) that `text` makes certain."""
        reasoning, content, text = [], [], self.held + text
        self.held = ""
        while text:
            if self.skip_newlines:
                text = text.lstrip("\n")
                self.skip_newlines = bool(not text)
                if not text:
                    break
            if self.state == "start":
                stripped = text.lstrip()
                if stripped.startswith(THINK_OPEN):
                    text, self.state, self.skip_newlines = stripped[len(THINK_OPEN):], "reasoning", True
                elif THINK_OPEN.startswith(stripped):  # perhaps the tag, cut short
                    self.held = text
                    break
                else:
                    self.state = "content"
            elif self.state == "reasoning":
                end = text.find(THINK_CLOSE)
                if end >= 0:
                    reasoning.append(text[:end])
                    text, self.state, self.skip_newlines = text[end + len(THINK_CLOSE):], "content", True
                else:
                    keep = _partial_suffix(text, THINK_CLOSE)
                    reasoning.append(text[:len(text) - keep])
                    self.held = text[len(text) - keep:]
                    break
            else:
                content.append(text)
                break
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is still held, at the reply's end."""
        held, self.held = self.held, ""
        return (held, "") if self.state == "reasoning" else ("", held)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
