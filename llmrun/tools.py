"""Tool calls: the tools a request offers are rendered by the model's own chat template, and the
calls the model writes back are read into OpenAI's tool_calls, in the format that template
teaches the model (found in the template's text):

| format | a call, as the model writes it | templates |
|---|---|---|
| hermes | `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one after another | Hermes 2 / 3, Qwen 2.5, Qwen3 |
| llama3 | `{"name": ..., "parameters": {...}}`, the whole reply, or after `<|python_tag|>` | Llama 3.1, 3.2, 3.3 |
| mistral | `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` | Mistral 7B v0.3, Nemo |
| mistral-args | `[TOOL_CALLS]name[ARGS]{...}`, once per call | Mistral Small 3.2, Magistral |

A forced choice (`tool_choice` "required", or a named function) is a grammar (llmrun.grammar)
of that same format whose JSON is each tool's own schema, so what the model writes is a valid
call by construction.
"""
from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass

from .errors import LlmrunError
from .grammar import JSON_STYLE, Grammar, GrammarError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for a function's name


class ToolError(LlmrunError):
    """Tools or tool calls that cannot be used as given; the message says why."""


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = ""

    def __post_init__(self):
        # 9 letters and digits: what Mistral's templates demand of an id, and any client takes
        if not (isinstance(self.id, str) and re.fullmatch(r"[A-Za-z0-9]{9}", self.id)):
            self.id = uuid.uuid4().hex[:9]

    def openai(self, index: int | None = None) -> dict:
        """As OpenAI writes a call: the arguments as JSON text (with its place in a streamed delta)."""
        call = {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}
        return call if index is None else {"index": index, **call}


def _json_values(text: str) -> list | None:
    """The JSON values `text` holds one after another (apart by whitespace, ',' or ';'), or None
    if anything else is in it."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at] in " \t\r\n,;":
            at += 1
        if at == len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            return None
        values.append(value)


def _call(value, arguments_key: str) -> ToolCall | None:
    """A call from a JSON object {"name": ..., arguments_key: {...} or its JSON text}."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(arguments_key, value.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text, as OpenAI does
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], arguments, value.get("id", ""))


class ToolFormat:
    """How one family of templates has its model write calls: where they start (`starts`),
    how to read them (parse), and a grammar that allows only valid ones (grammar)."""
    name: str
    starts: tuple[str, ...]  # text that opens the calls
    arguments_key = "arguments"

    def begins_calls(self, reply: str) -> int:
        """Where the calls begin in the reply so far (-1: not yet)."""
        found = [i for i in (reply.find(s) for s in self.starts) if i >= 0]
        return min(found, default=-1)

    def parse(self, text: str) -> tuple[list[ToolCall], str] | None:
        """The calls in `text` (from where they begin to the reply's end) and any text between
        or after them, or None if it is not calls after all (then it is all content)."""
        raise NotImplementedError

    def grammar(self, tokenizer, tools: list[dict], parallel: bool) -> Grammar:
        """Text that is one call (or, `parallel`, one or more) of one of `tools`, in this format."""
        raise NotImplementedError

    def _schema(self, tools: list[dict]) -> str:
        """The JSON schema of one call of one of `tools`, for a grammar's %json."""
        calls = [{"type": "object", "additionalProperties": False, "required": ["name", self.arguments_key],
                  "properties": {"name": {"const": t["function"]["name"]},
                                 self.arguments_key: t["function"]["parameters"]}} for t in tools]
        return json.dumps({"anyOf": calls, "x-guidance": JSON_STYLE})


def _literal(tokenizer, text: str) -> str:
    """`text` in a Lark grammar: the token itself where the vocabulary has it as one token (a
    template's special marker, as the model was trained to write it), else the string."""
    i = tokenizer.token_to_id(text)
    return f"<[{i}]>" if i is not None and tokenizer.decode([i]) == text else json.dumps(text)


def _compile(tokenizer, lark: str) -> Grammar:
    try:
        return Grammar.from_lark(tokenizer, lark)
    except GrammarError as e:
        raise ToolError(f"the tools' parameters cannot constrain a call: {e}") from None


class Hermes(ToolFormat):
    name, starts = "hermes", ("<tool_call>",)
    CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)

    def parse(self, text):
        calls = [_call(v, "arguments") for p in self.CALL.findall(text) for v in (_json_values(p) or [None])]
        rest = self.CALL.sub("", text)  # what the model wrote between or after its calls
        return (calls, rest if rest.strip() else "") if calls and None not in calls else None

    def grammar(self, tokenizer, tools, parallel):
        newline = json.dumps("\n")
        call = (f'{_literal(tokenizer, "<tool_call>")} {newline} %json {self._schema(tools)} {newline} '
                f'{_literal(tokenizer, "</tool_call>")}')
        more = f" ({newline} call)*" if parallel else ""
        return _compile(tokenizer, f"start: call{more}\ncall: {call}")


class Llama3(ToolFormat):
    name, starts, arguments_key = "llama3", ("<|python_tag|>", "{"), "parameters"
    PYTHON_CALL = re.compile(r"^\s*([A-Za-z_][\w.]*)\.call\((.*)\)\s*$", re.S)

    def begins_calls(self, reply):
        # a JSON call is the whole reply; the python tag may come after some text
        return 0 if reply.lstrip().startswith("{") else reply.find("<|python_tag|>")

    def parse(self, text):
        text = text.strip().removeprefix("<|python_tag|>")
        values = _json_values(text)
        if values is None:
            return self._python_call(text)
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        calls = [_call(v, "parameters") for v in values]
        return (calls, "") if calls and None not in calls else None

    def _python_call(self, text):
        """A built-in tool's call as Llama 3.1 writes it: `brave_search.call(query="...")`."""
        m = self.PYTHON_CALL.match(text)
        if not m:
            return None
        try:
            call = ast.parse(f"f({m.group(2)})", mode="eval").body
            arguments = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return None
        return None if call.args else ([ToolCall(m.group(1), arguments)], "")

    def grammar(self, tokenizer, tools, parallel):
        # Llama 3's templates take one call a reply (they refuse a conversation with more)
        return _compile(tokenizer, f"start: %json {self._schema(tools)}")


class Mistral(ToolFormat):
    name, starts = "mistral", ("[TOOL_CALLS]",)

    def parse(self, text):
        values = _json_values(text.strip().removeprefix("[TOOL_CALLS]"))
        if not values or not isinstance(values[0], list) or len(values) > 1:
            return None
        calls = [_call(v, "arguments") for v in values[0]]
        return (calls, "") if calls and None not in calls else None

    def grammar(self, tokenizer, tools, parallel):
        calls = json.loads(self._schema(tools))
        array = {"type": "array", "items": {"anyOf": calls["anyOf"]}, "minItems": 1, "x-guidance": JSON_STYLE}
        if not parallel:
            array["maxItems"] = 1
        return _compile(tokenizer, f'start: {_literal(tokenizer, "[TOOL_CALLS]")} %json {json.dumps(array)}')


class MistralArgs(ToolFormat):
    name, starts = "mistral-args", ("[TOOL_CALLS]",)
    CALL = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z0-9_.-]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9]+)\s*)?\[ARGS\]")

    def parse(self, text):
        text, calls = text.strip(), []
        marks = list(self.CALL.finditer(text))
        if not marks or marks[0].start() != 0:
            return None
        for m, after in zip(marks, marks[1:] + [None]):
            values = _json_values(text[m.end():after.start() if after else len(text)])
            if not values or len(values) != 1 or not isinstance(values[0], dict):
                return None
            calls.append(ToolCall(m.group(1), values[0], m.group(2) or ""))
        return calls, ""

    def grammar(self, tokenizer, tools, parallel):
        style = {"x-guidance": JSON_STYLE}
        names = [f'{json.dumps(t["function"]["name"])} {_literal(tokenizer, "[ARGS]")} '
                 f'%json {json.dumps({**t["function"]["parameters"], **style})}' for t in tools]
        call = f'{_literal(tokenizer, "[TOOL_CALLS]")} ({" | ".join(names)})'
        return _compile(tokenizer, f'start: call{"+" if parallel else ""}\ncall: {call}')


def renders_tools(template: str | None) -> bool:
    """Whether a chat template uses the `tools` it is given at all."""
    return bool(template) and re.search(r"\btools\b", template) is not None


def tool_format(template: str | None) -> ToolFormat | None:
    """The call format a chat template teaches its model, or None where it renders no tools or
    in a form not read here (Qwen3-Coder's XML, Granite's, DeepSeek's)."""
    if not renders_tools(template):
        return None
    if "[TOOL_CALLS]" in template:
        return MistralArgs() if "[ARGS]" in template else Mistral()
    if "<tool_call>" in template and "<function=" not in template:
        return Hermes()
    if "<|start_header_id|>" in template and ("ipython" in template or "<|python_tag|>" in template):
        return Llama3()
    return None


class ToolCallSplit:
    """A reply streamed in pieces, split into its content and its tool calls. Content is given
    out as it comes, but for what may begin a call, held back until the next piece says; once the
    calls begin, the rest is kept and read at the reply's end (calls, or content after all)."""

    def __init__(self, fmt: ToolFormat, parallel: bool = True):
        self.fmt, self.parallel = fmt, parallel
        self.reply = ""  # all the text so far
        self.sent = 0  # how much of it went out as content
        self.calls_at = -1  # where the calls begin

    def feed(self, text: str) -> str:
        """The content that `text` makes certain."""
        self.reply += text
        if self.calls_at < 0:
            self.calls_at = self.fmt.begins_calls(self.reply)
        upto = self.calls_at if self.calls_at >= 0 else len(self.reply) - self._held()
        piece = self.reply[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece

    def _held(self) -> int:
        """How much of the reply's end might still be the start of a call."""
        if isinstance(self.fmt, Llama3) and not self.reply.strip():
            return len(self.reply)  # a reply of whitespace so far may yet be a JSON call
        return max((n for s in self.fmt.starts for n in range(min(len(s) - 1, len(self.reply)), 0, -1)
                    if s.startswith(self.reply[-n:])), default=0)

    def flush(self) -> tuple[str, list[ToolCall]]:
        """(the content still held, the calls) at the reply's end."""
        parsed = self.fmt.parse(self.reply[self.calls_at:]) if self.calls_at >= 0 else None
        if parsed is None:  # no calls, or text that only looked like them: content
            rest, self.sent = self.reply[self.sent:], len(self.reply)
            return rest, []
        calls, between = parsed
        rest = self.reply[self.sent:self.calls_at] + between
        self.sent = len(self.reply)
        return rest, calls if self.parallel else calls[:1]


def check_tools(tools) -> list[dict]:
    """OpenAI's `tools` checked and made whole, as templates take them: [{"type": "function",
    "function": {"name", "description", "parameters"}}], parameters an object schema."""
    if not isinstance(tools, list):
        raise ToolError("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}")
    out, names = [], set()
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not TOOL_NAME.match(f["name"]):
            raise ToolError(f"tools[{i}] needs a function with a name of letters, digits, '_', '.' or '-' "
                            "(at most 64)")
        if f["name"] in names:
            raise ToolError(f"tools[{i}]: the name {f['name']!r} is given twice")
        names.add(f["name"])
        parameters = f.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict) or not isinstance(f.get("description", ""), str):
            raise ToolError(f"tools[{i}].function: 'parameters' must be a JSON schema object, 'description' a string")
        # a description left out is empty: templates print it as they find it (Hermes 3's with '+')
        out.append({"type": "function", "function": {**f, "description": f.get("description", ""),
                                                      "parameters": parameters}})
    return out


def check_tool_calls(calls, i: int) -> list[dict]:
    """An assistant message's tool_calls as templates take them: each call's arguments as an
    object (OpenAI sends them as JSON text; most templates print them with tojson)."""
    if not isinstance(calls, list):
        raise ToolError(f"messages[{i}].tool_calls must be a list")
    out = []
    for call in calls:
        f = call.get("function") if isinstance(call, dict) else None
        arguments = f.get("arguments", "{}") if isinstance(f, dict) else None
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            arguments = None
        if not (isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(arguments, dict)
                and isinstance(call.get("id", ""), str)):
            raise ToolError(f"messages[{i}].tool_calls: each needs an id and a function with a name and "
                            "arguments (a JSON object, as text)")
        out.append({"id": call.get("id", ""), "type": "function", "function": {"name": f["name"], "arguments": arguments}})
    return out
