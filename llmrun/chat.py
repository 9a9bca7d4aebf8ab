"""Chat templates: the model's own Jinja template (Hugging Face compatible), rendered with jinja2."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from .errors import LlmrunError


@lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise LlmrunError(f"the chat template refused the conversation: {message}")

    # Sandboxed: a template comes from a model file, which may come from anywhere.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise LlmrunError(f"the model's chat template does not parse: {e}") from None


def render_chat(model, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The conversation as the model was trained to see it, ending with the assistant's cue."""
    if not model.chat_template:
        raise LlmrunError("this model has no chat template; use a raw prompt (`--raw`)")
    tok = model.tokenizer
    names = {"bos_token": tok.bos_id, "eos_token": tok.eos_ids[0] if tok.eos_ids else None}
    special = {k: tok.decode([v]) if v is not None else "" for k, v in names.items()}
    return _compile(model.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **special)


def chat_ids(model, messages: list[dict]) -> list[int]:
    """Token ids of the rendered conversation. The template writes any BOS itself, so the
    tokenizer adds no special tokens of its own."""
    return model.tokenizer.encode(render_chat(model, messages), add_special_tokens=False)
