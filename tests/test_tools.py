"""Tool calls in `llmrun serve` (llmrun/tools.py): tools rendered by the model's own chat template,
the model's calls read back into OpenAI tool_calls (streamed and not), results going back
through the template as role "tool" messages, and tool_choice "required" or a named function
making a valid call by construction.

Each format's round trip runs on a tiny random model whose sampling is replaced by scripted
replies (the `script` fixture), under the real templates of ../shared/templates (skipped where
that is absent) and one of our own (always); then SmolLM2 calls for real through the openai
client, and a small agent loop runs to its end."""
from __future__ import annotations

import ast
import io
import json
import operator
import threading

import jsonschema
import openai
import pytest

import llmrun
import llmrun.generation
from llmrun.batching import Engine
from llmrun.server import Server as HTTPServer
from llmrun.tools import Hermes, Llama3, Mistral, MistralArgs, ToolCallSplit

from conftest import SHARED, make_hf_checkpoint
from test_serve import KEY, Server

TEMPLATES = SHARED / "templates"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 12, "description": "the city"},
                                  "unit": {"enum": ["celsius", "fahrenheit"], "description": "the unit"}}}}}
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Work out an arithmetic expression.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["expression"],
                   "properties": {"expression": {"type": "string", "maxLength": 24,
                                                 "description": "numbers and + - * / ( )"}}}}}
TOOLS = [WEATHER, CALCULATOR]

# A tool-calling template of our own, in the Hermes form, so the round trip runs without ../shared.
OWN_TEMPLATE = """\
{%- if tools %}<|system|>
You can call these functions: {{ tools | tojson }}
To call one, write <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
{% endif %}
{%- for m in messages %}
{%- if m.role == "tool" %}<|tool|>
<tool_response>{{ m.content }}</tool_response>
{%- elif m.tool_calls %}<|assistant|>
{%- for c in m.tool_calls %}
<tool_call>{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}</tool_call>
{%- endfor %}
{%- else %}<|{{ m.role }}|>
{{ m.content }}
{%- endif %}
{% endfor %}
{%- if add_generation_prompt %}<|assistant|>
{% endif %}"""

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
# Per template: what the model writes to call get_weather(city="Paris"), and what the next prompt
# must hold of that call and of its result ("22 C, sunny"), as the template renders them back.
ROUND_TRIPS = {
    "own": (f"Let me look.\n<tool_call>{json.dumps(CALL)}</tool_call>",
            [f"<tool_call>{json.dumps(CALL)}</tool_call>", "<|tool|>\n<tool_response>22 C, sunny</tool_response>"]),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": (
        f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>",
        [f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>", "<tool_response>\n22 C, sunny\n</tool_response>"]),
    "Qwen-Qwen2.5-7B-Instruct.jinja": (
        f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>",
        [f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>", "<|im_start|>user\n<tool_response>\n22 C, sunny\n</tool_response>"]),
    "Qwen-Qwen3-0.6B.jinja": (
        f"<think>\nThe weather needs a tool.\n</think>\n\n<tool_call>\n{json.dumps(CALL)}\n</tool_call>",
        [f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>", "<|im_start|>user\n<tool_response>\n22 C, sunny\n</tool_response>"]),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        ['{"name": "get_weather", "parameters": {"city": "Paris"}}',
         '<|start_header_id|>ipython<|end_header_id|>\n\n"22 C, sunny"<|eot_id|>']),  # a string is iterable: tojson
    "meta-llama-Llama-3.2-3B-Instruct.jinja": (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        ['{"name": "get_weather", "parameters": {"city": "Paris"}}',
         '<|start_header_id|>ipython<|end_header_id|>\n\n"22 C, sunny"<|eot_id|>']),  # a string is iterable: tojson
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": (
        f"[TOOL_CALLS][{json.dumps(CALL)}]",
        ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "{id}"}]',
         '[TOOL_RESULTS]{"content": 22 C, sunny, "call_id": "{id}"}[/TOOL_RESULTS]']),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        ['[TOOL_CALLS]get_weather[CALL_ID]{id}[ARGS]{"city": "Paris"}', "[TOOL_RESULTS]{id}[TOOL_CONTENT]22 C, sunny[/TOOL_RESULTS]"]),
}
REAL = [name for name in ROUND_TRIPS if name != "own"]


def template(name: str) -> str:
    if name == "own":
        return OWN_TEMPLATE
    if not (TEMPLATES / name).exists():
        pytest.skip(f"{TEMPLATES} is absent (the real templates are on the team's machines and in CI)")
    return (TEMPLATES / name).read_text()


# --- a tiny model served in this process, its sampling scripted -------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random LLaMA with room for a template's tool instructions (a byte-level vocabulary
    spells them a token a byte)."""
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("tools")
    make_hf_checkpoint(d / "hf", max_position_embeddings=8192)
    convert(str(d / "hf"), str(d / "tiny.llmr"), "f32")
    return llmrun.load(d / "tiny.llmr")


@pytest.fixture(scope="module")
def served(tiny):
    """`tiny` served by llmrun.server in this process (so a test can script its sampling):
    an openai client for it."""
    with Engine(tiny, parallel=2, n_ctx=8192) as engine:
        server = HTTPServer(("127.0.0.1", 0), tiny, engine, "tiny", log=io.StringIO())
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="-", max_retries=0)
        server.shutdown()
        server.server_close()
    assert "Traceback" not in server.log.getvalue(), server.log.getvalue()


class Script:
    """Replies written in advance in place of sampling: each generation writes the next reply's
    tokens, then the end of text, and keeps the prompt it answered (`prompts`)."""

    def __init__(self, model, monkeypatch):
        self.model, self.replies, self.prompts = model, [], []
        monkeypatch.setattr(llmrun.generation, "Sampler", self.sampler)

    def sampler(self, **settings):
        tokens = self.model.tokenizer.encode(self.replies.pop(0), add_special_tokens=False) + [self.model.tokenizer.eos_ids[0]]
        script, start = self, len(tokens)

        def draw(logits, recent=()):
            if len(tokens) == start:
                script.prompts.append(self.model.tokenizer.decode(list(recent)))
            return tokens.pop(0)
        return draw


@pytest.fixture
def script(tiny, monkeypatch):
    return Script(tiny, monkeypatch)


@pytest.fixture
def with_template(tiny, monkeypatch):
    def use(name):
        monkeypatch.setattr(tiny, "chat_template", template(name))
    return use


def _ask(client, messages, stream=False, **kw):
    """(message as a dict to send back, finish_reason), streamed deltas gathered as a client does."""
    kw = {"model": "tiny", "messages": messages, "max_tokens": 300, **kw}
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.model_dump(exclude_none=True), r.choices[0].finish_reason
    message, finish, calls = {"role": "assistant"}, None, {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        delta = chunk.choices[0].delta
        for key in ("content", "reasoning_content"):
            if getattr(delta, key, None):
                message[key] = message.get(key, "") + getattr(delta, key)
        for tc in delta.tool_calls or ():
            call = calls.setdefault(tc.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] += tc.id or ""
            call["function"]["name"] += tc.function.name or ""
            call["function"]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish


USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_call_result_answer_round_trip(served, script, with_template, name, stream):
    """The scripted call comes back as OpenAI's tool_calls (finish_reason tool_calls); its result,
    sent as a role "tool" message, reaches the model through the template, beside the call as
    the template writes it; the final answer is plain content."""
    with_template(name)
    call_text, rendered = ROUND_TRIPS[name]
    script.replies += [call_text, "It is 22 C and sunny in Paris."]
    first, finish = _ask(served, USER, stream, tools=TOOLS)
    assert finish == "tool_calls" and len(first["tool_calls"]) == 1, first
    call = first["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"].isalnum() and len(call["id"]) == 9
    if name == "own":
        assert first["content"] == "Let me look.\n"
    if name.startswith("Qwen-Qwen3"):
        assert first["reasoning_content"].strip() == "The weather needs a tool."  # (the split keeps a newline)
    result = {"role": "tool", "tool_call_id": call["id"], "content": "22 C, sunny"}
    answer, finish = _ask(served, USER + [first, result], stream, tools=TOOLS)
    assert answer["content"] == "It is 22 C and sunny in Paris." and finish == "stop" and "tool_calls" not in answer
    for piece in rendered:
        assert piece.replace("{id}", call["id"]) in script.prompts[1], script.prompts[1]
    assert "get_weather" in script.prompts[0]  # the tools were rendered for the model


def test_tools_without_description_or_parameters(served, script, with_template):
    """OpenAI lets a function leave out its description and parameters; Hermes 3's template
    prints both, so they are filled in (empty) before it sees them."""
    with_template("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja")
    script.replies.append("<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>")
    message, finish = _ask(served, USER, tools=[{"type": "function", "function": {"name": "ping"}}])
    assert finish == "tool_calls" and message["tool_calls"][0]["function"] == {"name": "ping", "arguments": "{}"}
    assert '"name": "ping", "description": "ping() - ' in script.prompts[0]


def test_parallel_calls_and_parallel_tool_calls_false(served, script, with_template):
    with_template("own")
    two = f"<tool_call>{json.dumps(CALL)}</tool_call>\n<tool_call>" + \
        json.dumps({"name": "calculator", "arguments": {"expression": "6*7"}}) + "</tool_call>"
    script.replies += [two, two, two]
    for stream in (False, True):
        message, finish = _ask(served, USER, stream, tools=TOOLS)
        assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "calculator"]
        assert len({c["id"] for c in message["tool_calls"]}) == 2 and finish == "tool_calls"
    message, finish = _ask(served, USER, tools=TOOLS, parallel_tool_calls=False)
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]


def test_text_that_only_looks_like_a_call_is_content(served, script, with_template):
    with_template("own")
    script.replies += ["Use <tool_call> tags to call tools.", "<tool_call>{not json}</tool_call>"]
    for want in script.replies[:]:
        message, finish = _ask(served, USER, stream=True, tools=TOOLS)
        assert message == {"role": "assistant", "content": want} and finish == "stop"


def test_tool_choice_none_shows_no_tools_and_reads_no_calls(served, script, with_template):
    with_template("own")
    script.replies.append(f"<tool_call>{json.dumps(CALL)}</tool_call>")
    message, finish = _ask(served, USER, tools=TOOLS, tool_choice="none")
    assert message["content"] == f"<tool_call>{json.dumps(CALL)}</tool_call>" and finish == "stop"
    assert "get_weather" not in script.prompts[0]


# --- a forced choice: a valid call by construction, even from random weights ---------------------

@pytest.mark.parametrize("name", ["own", *REAL])
@pytest.mark.parametrize("choice", ["required", "calculator"])
def test_forced_choice_makes_a_valid_call(served, with_template, name, choice):
    """The tiny random model, sampled, made to call: a call of the right format, to a tool
    offered (the one named), with arguments valid against its parameters."""
    with_template(name)
    tool_choice = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    for seed in range(2):
        message, finish = _ask(served, USER, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False,
                               temperature=1.0, seed=seed)
        assert finish == "tool_calls" and len(message["tool_calls"]) == 1, message
        call = message["tool_calls"][0]["function"]
        tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call["name"])
        assert choice == "required" or call["name"] == choice
        jsonschema.validate(json.loads(call["arguments"]), tool["parameters"])


@pytest.mark.parametrize("fmt, pieces, content, calls", [
    (Hermes(), ["Sure.\n<tool", "_call>\n{\"name\": \"f\", ", "\"arguments\": {}}\n</tool_call>"], "Sure.\n", ["f"]),
    (Hermes(), ["<tool", "box> is a word"], "<toolbox> is a word", []),
    (Hermes(), ["<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", "\nThen I will answer."],
     "\nThen I will answer.", ["f"]),
    (Llama3(), ["  ", "{\"name\": \"f\", \"parameters\": {\"a\": 1}}"], "", ["f"]),
    (Llama3(), ["{", "\"not\": \"a call\"}"], "{\"not\": \"a call\"}", []),
    (Llama3(), ["Let me search. <|python", "_tag|>brave_search.call(query=\"x\")"], "Let me search. ", ["brave_search"]),
    (Mistral(), ["[TOOL_", "CALLS][{\"name\": \"f\", \"arguments\": {}}, {\"name\": \"g\", \"arguments\": {}}]"], "", ["f", "g"]),
    (MistralArgs(), ["[TOOL_CALLS]f[ARGS]{\"a\": 1}", "[TOOL_CALLS]g[ARGS]{}"], "", ["f", "g"]),
])
def test_calls_read_from_streamed_pieces(fmt, pieces, content, calls):
    split, got = ToolCallSplit(fmt), ""
    for piece in pieces:
        got += split.feed(piece)
    rest, found = split.flush()
    assert got + rest == content and [c.name for c in found] == calls


# --- what cannot be done is a 400 ------------------------------------------------------------------

@pytest.mark.parametrize("params, param, message", [
    ({"tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice", "not among the tools"),
    ({"tool_choice": "sometimes"}, "tool_choice", "must be"),
    ({"tools": [{"type": "function"}]}, "tools", "needs a function with a name"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "given twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools", "JSON schema object"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}], "tool_choice": "required"},
     "tools", "Invalid type: foo"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"response_format": {"type": "json_object"}}, "response_format", "cannot both"),
    ({"messages": USER + [{"role": "tool", "content": "22 C"}]}, "messages", "tool_call_id"),
    ({"messages": USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "abc", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "messages", "arguments"),
])
def test_bad_tool_requests_are_400(served, with_template, params, param, message):
    with_template("own")
    with pytest.raises(openai.BadRequestError, match=message) as e:
        served.chat.completions.create(**{"model": "tiny", "messages": USER, "tools": TOOLS, "max_tokens": 4, **params})
    assert e.value.param == param and e.value.body["type"] == "invalid_request_error"


def test_templates_that_cannot_take_tools_are_400(served, tiny, monkeypatch):
    for text, message in ((tiny.chat_template, "does not render tools"),
                          ("{{ tools | tojson }}{% for m in messages %}{{ m.content }}{% endfor %}", "does not read")):
        monkeypatch.setattr(tiny, "chat_template", text)
        with pytest.raises(openai.BadRequestError, match=message) as e:
            served.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, max_tokens=4)
        assert e.value.param == "tools"
    with pytest.raises(openai.BadRequestError, match="tools are for /v1/chat/completions"):
        served.completions.create(model="tiny", prompt="the", max_tokens=4, extra_body={"tools": TOOLS})


def test_a_template_that_refuses_the_conversation_is_400(served, with_template):
    """Llama 3.1's template takes one call a message: two in the history is its refusal, a 400."""
    with_template("meta-llama-Llama-3.1-8B-Instruct.jinja")
    calls = [{"id": f"call{i}abcd", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
             for i in range(2)]
    with pytest.raises(openai.BadRequestError, match="single tool-calls") as e:
        served.chat.completions.create(model="tiny", max_tokens=4, tools=TOOLS, messages=USER + [
            {"role": "assistant", "content": None, "tool_calls": calls}])
    assert e.value.param == "messages"


# --- SmolLM2, for real ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_tools(smollm2_q4_0, tmp_path_factory):
    """SmolLM2 served with Qwen 2.5's template (ChatML, as SmolLM2's own, but with tools)."""
    qwen = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"
    if not qwen.exists():
        pytest.skip(f"{TEMPLATES} is absent")
    s = Server(smollm2_q4_0, tmp_path_factory.mktemp("tools-serve"), "--parallel", "2", "--ctx-size", "2048",
               "--api-key", KEY, "--chat-template", qwen)
    yield s
    assert "Traceback" not in s.stop()


def test_smollm2_required_call_round_trips(smollm2_tools):
    client, kw = smollm2_tools.client(), dict(model="smollm2-q4_0", temperature=0, max_tokens=200, tools=TOOLS)
    for stream in (False, True):
        message, finish = _ask(client, USER, stream, tool_choice="required", parallel_tool_calls=False, **kw)
        assert finish == "tool_calls" and len(message["tool_calls"]) == 1
        call = message["tool_calls"][0]
        tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call["function"]["name"])
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["parameters"])
    result = {"role": "tool", "tool_call_id": call["id"], "content": "22 C, sunny"}
    answer, finish = _ask(client, USER + [message, result], **kw)
    assert answer["content"] and finish in ("stop", "length")


def _calculate(expression: str) -> str:
    """+ - * / and brackets over numbers, nothing else."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.USub: operator.neg}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.operand))
        raise ValueError(expression)
    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return f"error: cannot work out {expression!r}"


def test_smollm2_agent_loop_runs_to_its_answer(smollm2_tools):
    """An agent as one writes it against the openai client: it offers get_weather and a
    calculator, forces a call on its first turn, runs what the model calls, sends the results
    back, and lets the model go on (at most four turns, the last with tool_choice "none") until
    it answers in words."""
    client = smollm2_tools.client()
    run = {"get_weather": lambda city, unit="celsius": f"18 degrees {unit}, light rain in {city}",
           "calculator": lambda expression: _calculate(expression)}
    messages = [{"role": "user", "content": "What is the weather in London, and what is 12 * 7?"}]
    called = []
    for turn in range(4):
        choice = "required" if turn == 0 else "auto" if turn < 3 else "none"
        r = client.chat.completions.create(model="smollm2-q4_0", messages=messages, tools=TOOLS, tool_choice=choice,
                                           temperature=0, max_tokens=150)
        message = r.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            break
        assert r.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            called.append(call.function.name)
            result = run[call.function.name](**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    assert called and called[0] in run
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] and not messages[-1].get("tool_calls")
