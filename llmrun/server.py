"""An OpenAI-compatible HTTP server over the batching engine (llmrun.batching).

    POST /v1/chat/completions   POST /v1/completions   (streamed as server-sent events, or not)
    GET  /v1/models    GET /health    GET /slots    POST /tokenize    POST /detokenize

The standard library's threaded HTTP server is all it needs: a thread per connection waits on
its request's records while the engine's one thread runs the model, so no dependency is added
(structured output and forced tool calls need the grammar engine: llmrun.grammar).
Chat replies are split into reasoning, content and tool calls (llmrun.chat, llmrun.tools).
Every failure a client can cause is answered as OpenAI answers it, a JSON error with the
right status, and touches no other request.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import os
import queue
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .batching import Engine, QueueFull, Request
from .chat import ReasoningSplit, opens_reasoning, reasons, render_chat
from .errors import ContextError, LlmrunError
from .generation import MAX_LOGPROBS
from .grammar import Grammar, GrammarError, GrammarUnavailable
from .model import Model
from .tools import ToolCallSplit, ToolError, ToolFormat, check_tool_calls, check_tools, renders_tools, tool_format

MAX_BODY = 8 << 20  # bytes of JSON a request may carry
MAX_STOPS = 16
# Longest text a token stands for, as far as the length check goes: text past n_ctx times this
# cannot fit, and is refused before tokenising it (which holds the GIL: ~0.4 s a megabyte).
MAX_CHARS_PER_TOKEN = 32
POLL_SECONDS = 0.25  # how often a waiting handler looks whether its client is still there


class HTTPError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection while its request ran."""


# --- reading a request's parameters ---------------------------------------------------------------

def _field(body: dict, name: str, kinds: tuple, default=None, check=None, need: str = ""):
    """body[name] if it is one of `kinds` (and passes `check`), the default if absent or null, else 400."""
    value = body.get(name)
    if value is None:
        return default
    # JSON true/false are Python ints too: a bool is only taken where a bool is asked for
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds) or (check and not check(value)):
        raise HTTPError(400, f"'{name}' must be {need}, not {json.dumps(value)[:40]}", param=name)
    return value


def _sampling(body: dict, defaults: dict) -> dict:
    num = (int, float)
    # what this server does not do is refused, not silently ignored
    for name in ("frequency_penalty", "presence_penalty"):
        _field(body, name, (int, float), 0, lambda v: v == 0, "0: this server does not apply it (use repeat_penalty)")
    _field(body, "n", (int,), 1, lambda v: v == 1, "1: one choice per request")
    return {
        "temperature": _field(body, "temperature", num, defaults["temperature"], lambda v: 0 <= v <= 2,
                              "a number from 0 to 2"),
        "top_p": _field(body, "top_p", num, defaults["top_p"], lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "top_k": _field(body, "top_k", (int,), defaults["top_k"], lambda v: v >= 0, "a whole number >= 0"),
        "min_p": _field(body, "min_p", num, defaults["min_p"], lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "repeat_penalty": _field(body, "repeat_penalty", num, defaults["repeat_penalty"], lambda v: 0 < v <= 10,
                                 "a number in (0, 10]"),
        "seed": _field(body, "seed", (int,), None, lambda v: v >= 0, "a whole number >= 0"),
    }


def _response_format(body: dict, tokenizer, log) -> Grammar | None:
    """The grammar `response_format` asks the reply to follow: none for text, any JSON object
    for json_object, the schema of json_schema ({"name", "schema", "strict"}) for json_schema."""
    fmt = _field(body, "response_format", (dict,), {"type": "text"}, None, "an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not (isinstance(spec, dict) and isinstance(spec.get("schema", {}), dict)
                and isinstance(spec.get("strict", False), (bool, type(None)))):
            raise HTTPError(400, "a response_format of type json_schema needs 'json_schema': {\"name\": ..., "
                            "\"schema\": {...}, \"strict\": true}", param="response_format")
        schema = spec.get("schema", {"type": "object"})
    else:
        raise HTTPError(400, "'response_format' needs a type of text, json_object or json_schema, not "
                        f"{json.dumps(kind)[:40]}", param="response_format")
    return _constrain(lambda: Grammar.from_json_schema(tokenizer, schema), "response_format", log)


def _constrain(make, param: str, log) -> Grammar:
    """The grammar make() compiles, or a 400 naming `param`: what the engine refuses, or the
    engine's absence, which the log is told too (a 400 all the same, as clients retry a 5xx)."""
    try:
        return make()
    except (GrammarError, ToolError) as e:
        raise HTTPError(400, str(e), param=param) from None
    except GrammarUnavailable as e:
        log.write(f"llmrun: {e}\n")
        raise HTTPError(400, f"this server cannot constrain replies: {e}", param=param, code="unsupported") from None


def _logprobs(body: dict, chat: bool) -> int | None:
    """How many alternatives each token's log-probability comes with, or None for none: chat's
    logprobs (true or false) and top_logprobs, or the completions' logprobs (a count)."""
    need = f"a whole number from 0 to {MAX_LOGPROBS}"
    if not chat:
        return _field(body, "logprobs", (int,), None, lambda v: 0 <= v <= MAX_LOGPROBS, need)
    top = _field(body, "top_logprobs", (int,), None, lambda v: 0 <= v <= MAX_LOGPROBS, need)
    if not _field(body, "logprobs", (bool,), False, None, "true or false"):
        if top is not None:
            raise HTTPError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        return None
    return top or 0


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stops, list) and len(stops) <= MAX_STOPS
                                 and all(isinstance(s, str) and s for s in stops)):
        raise HTTPError(400, f"'stop' must be a string or a list of up to {MAX_STOPS} non-empty strings", param="stop")
    return stops or []


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise HTTPError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise HTTPError(400, f"messages[{i}] needs a role of system, user, assistant or tool", param="messages")
        message = {"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m, i)}
        if m["role"] == "assistant" and m.get("tool_calls"):  # its calls, for the template to render back
            try:
                message["tool_calls"] = check_tool_calls(m["tool_calls"], i)
            except ToolError as e:
                raise HTTPError(400, str(e), param="messages") from None
        if m["role"] == "tool":  # a call's result: which call it answers
            if not isinstance(m.get("tool_call_id"), str):
                raise HTTPError(400, f"messages[{i}], a tool's result, needs the 'tool_call_id' of its call",
                                param="messages")
            message |= {k: m[k] for k in ("tool_call_id", "name") if isinstance(m.get(k), str)}
        out.append(message)
    return out


@dataclass
class _Tools:
    """A request's tools, as its chat template takes them, the format its model calls them in,
    and the choice: `forced`, the tools one of which must be called (tool_choice "required" or
    a named function), or None for the model's own choice."""
    tools: list[dict]
    format: ToolFormat
    forced: list[dict] | None
    parallel: bool


def _tools(body: dict, template: str | None) -> _Tools | None:
    """The tools offered (`tools`, `tool_choice`, `parallel_tool_calls`); None where none may be
    called (no tools, or tool_choice "none": then they are not shown to the model either)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = _field(body, "parallel_tool_calls", (bool,), True, None, "true or false")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise HTTPError(400, "'tool_choice' needs 'tools' to choose from", param="tool_choice")
        return None
    try:
        tools = check_tools(tools)
    except ToolError as e:
        raise HTTPError(400, str(e), param="tools") from None
    names = [t["function"]["name"] for t in tools]
    if choice in (None, "auto", "required"):
        forced = tools if choice == "required" else None
    elif choice == "none":
        return None
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise HTTPError(400, f"tool_choice names the function {json.dumps(name)[:70]}, which is not among the "
                            f"tools ({', '.join(names)})", param="tool_choice")
        forced, parallel = [tools[names.index(name)]], False  # that function, called once
    else:
        raise HTTPError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                        "\"function\": {\"name\": ...}}", param="tool_choice")
    fmt = tool_format(template)
    if fmt is None:
        raise HTTPError(400, "this model's chat template does not render tools" if not renders_tools(template) else
                        "this model's chat template writes tool calls in a form llmrun does not read "
                        "(it reads Hermes and Qwen's <tool_call>, Llama 3's JSON and Mistral's [TOOL_CALLS])",
                        param="tools")
    return _Tools(tools, fmt, forced, parallel)


def _check_length(chars: int, n_ctx: int, param: str) -> None:
    if chars > n_ctx * MAX_CHARS_PER_TOKEN:
        raise HTTPError(400, f"the {param} is {chars} characters, more than a context of {n_ctx} tokens can hold",
                        param=param, code="context_length_exceeded")


def _prompt_ids(body: dict, model: Model, n_ctx: int) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        _check_length(len(prompt), n_ctx, "prompt")
        return model.tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        _check_ids(prompt, model, "prompt")
        return prompt
    raise HTTPError(400, "'prompt' must be a string or a list of token ids (one prompt per request)", param="prompt")


def _check_ids(ids: list, model: Model, param: str) -> None:
    vocab = model.config.vocab_size
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
        raise HTTPError(400, f"'{param}' must hold token ids from 0 to {vocab - 1}", param=param)


# --- the server -----------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], model: Model, engine: Engine, model_id: str,
                 api_key: str | None = None, defaults: dict | None = None, log=sys.stderr):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.model, self.engine, self.model_id, self.api_key, self.log = model, engine, model_id, api_key, log
        self.defaults = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.0, "repeat_penalty": 1.0,
                         **(defaults or {})}
        self.created = int(time.time())
        self.responding = 0  # completions being answered
        self.idle = threading.Condition()
        super().__init__(address, Handler)

    @contextmanager
    def response(self):
        """Count a completion as being answered while in the block."""
        with self.idle:
            self.responding += 1
        try:
            yield
        finally:
            with self.idle:
                self.responding -= 1
                self.idle.notify_all()

    def drain(self, seconds: float) -> None:
        """Wait (up to `seconds`) for the completions being answered to be written out."""
        with self.idle:
            self.idle.wait_for(lambda: self.responding == 0, timeout=seconds)

    def handle_error(self, request, client_address):
        """A client that resets its connection is routine, not worth a traceback in the log."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            traceback.print_exc(file=self.log)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    server_version = "llmrun"
    timeout = 300  # seconds a connection may sit idle (or a client leave a stream unread): its thread then ends

    # --- plumbing ---------------------------------------------------------------------------------

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        # a body left unread by an early refusal would be read as the next request: close instead
        self._unread = self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        self._streaming = False
        try:
            if path != "/health":
                self._authorize()
            route = ROUTES.get(path)
            if route is None:
                if path.startswith("/v1/models/"):
                    return self._model(method, path[len("/v1/models/"):])
                raise HTTPError(404, f"no route {path}: see /v1/models, /v1/chat/completions, /v1/completions",
                                code="unknown_url")
            if method not in route:
                raise HTTPError(405, f"{path} takes {' or '.join(route)}, not {method}")
            route[method](self, self._body() if method == "POST" else None)
        except HTTPError as e:
            self._send_json(e.status, e.body())
        except (ClientGone, ConnectionError, TimeoutError):  # gone, or not reading for `timeout` seconds
            self.close_connection = True
        except Exception:  # a fault of ours: logged here, answered as a 500, and the server goes on
            traceback.print_exc(file=self.server.log)
            self._send_json(500, HTTPError(500, "internal error (see the server's log)", "server_error").body())

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise HTTPError(401, "invalid API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise HTTPError(411 if "Content-Length" not in self.headers else 400,
                            "the request needs a valid Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True  # the unread body would be taken for the next request
            raise HTTPError(413, f"the body is {length} bytes; the most this server takes is {MAX_BODY}",
                            code="request_too_large")
        raw = self.rfile.read(length)
        self._unread = False
        if len(raw) < length:
            raise ClientGone
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def _send_json(self, status: int, obj) -> None:
        if self._unread:
            self.close_connection = True
        if self._streaming:
            # the head went out already: the error becomes the stream's last event
            self._event(json.dumps(obj))
            self._end_stream()
            return
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "1")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, an unknown method) in OpenAI's form."""
        self.close_connection = True
        self._unread, self._streaming = False, False
        self._send_json(code, HTTPError(code, message or self.responses.get(code, ("error",))[0]).body())

    def log_message(self, format, *args):
        self.server.log.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} {format % args}\n")

    def _start_stream(self) -> None:
        """Server-sent events in HTTP/1.1 chunks (the connection stays open), or, to an HTTP/1.0
        client, which knows no chunks, as the body up to the connection's close."""
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._streaming = True

    def _event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload) if self._chunked else payload)

    def _end_stream(self) -> None:
        self._event("[DONE]")
        if self._chunked:
            self.wfile.write(b"0\r\n\r\n")
        self._streaming = False

    def _client_gone(self) -> bool:
        """Whether the client closed its end: its socket reads as ended (or reset)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _records(self, request: Request):
        """The request's records as they come, looking every POLL_SECONDS whether the client left."""
        looked = time.monotonic()
        while True:
            try:
                r = request.next(timeout=POLL_SECONDS)
            except queue.Empty:
                r = None
            if time.monotonic() - looked >= POLL_SECONDS:
                if self._client_gone():
                    raise ClientGone
                looked = time.monotonic()
            if r is None:
                continue
            yield r
            if r.finish_reason:
                return

    # --- the endpoints ----------------------------------------------------------------------------

    def _check_model(self, body: dict) -> None:
        name = _field(body, "model", (str,), None, None, "a string")
        if name is not None and name not in self._model_names():
            raise HTTPError(404, f"the model '{name}' is not served here; this server has '{self.server.model_id}'",
                            param="model", code="model_not_found")

    def _model_names(self) -> set:
        path = self.server.model.path
        return {self.server.model_id, os.path.basename(path), os.path.splitext(os.path.basename(path))[0]}

    def _model_object(self) -> dict:
        return {"id": self.server.model_id, "object": "model", "created": self.server.created, "owned_by": "llmrun",
                "meta": {"n_ctx": self.server.engine.n_ctx, "n_vocab": self.server.model.config.vocab_size}}

    def _model(self, method: str, name: str) -> None:
        if method != "GET":
            raise HTTPError(405, f"/v1/models/{name} takes GET, not {method}")
        if name not in self._model_names():
            raise HTTPError(404, f"the model '{name}' is not served here", code="model_not_found")
        self._send_json(200, self._model_object())

    def models(self, _body) -> None:
        self._send_json(200, {"object": "list", "data": [self._model_object()]})

    def health(self, _body) -> None:
        s = self.server.engine.status()
        idle = sum(slot["state"] == "idle" for slot in s["slots"])
        self._send_json(200, {"status": "ok", "slots_idle": idle, "slots_processing": len(s["slots"]) - idle,
                              "requests_waiting": s["waiting"]})

    def slots(self, _body) -> None:
        self._send_json(200, self.server.engine.status()["slots"])

    def tokenize(self, body: dict) -> None:
        content = body.get("content")
        if not isinstance(content, str):
            raise HTTPError(400, "'content' must be a string", param="content")
        _check_length(len(content), self.server.engine.n_ctx, "content")
        add_special = _field(body, "add_special", (bool,), False, None, "true or false")
        self._send_json(200, {"tokens": self.server.model.tokenizer.encode(content, add_special_tokens=add_special)})

    def detokenize(self, body: dict) -> None:
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            raise HTTPError(400, "'tokens' must be a list of token ids", param="tokens")
        _check_ids(tokens, self.server.model, "tokens")
        self._send_json(200, {"content": self.server.model.tokenizer.decode(tokens)})

    def chat_completions(self, body: dict) -> None:
        self._check_model(body)
        messages = _messages(body)
        _check_length(sum(len(m["content"]) for m in messages), self.server.engine.n_ctx, "messages")
        # variables for the template, as transformers' apply_chat_template takes them ({"enable_thinking": false})
        kwargs = _field(body, "chat_template_kwargs", (dict,), {}, None, "an object")
        model = self.server.model
        tools = _tools(body, model.chat_template)
        grammar = _response_format(body, model.tokenizer, self.server.log)
        if tools and grammar:
            raise HTTPError(400, "a reply cannot both follow 'response_format' and call tools: leave one out, or give "
                            "tool_choice \"none\"", param="response_format")
        if tools and tools.forced:  # a call must come: the format's grammar, each tool's own schema
            grammar = _constrain(lambda: tools.format.grammar(model.tokenizer, tools.forced, tools.parallel),
                                 "tools", self.server.log)
        try:
            prompt = render_chat(model, messages, template_kwargs={**kwargs, **({"tools": tools.tools} if tools else {})})
        except LlmrunError as e:
            raise HTTPError(400, str(e), param="messages") from None
        ids = model.tokenizer.encode(prompt, add_special_tokens=False)
        # a reasoning model's reply is split at <think> ... </think> into reasoning_content and content
        split = ReasoningSplit(opens_reasoning(prompt)) if reasons(model.chat_template) else None
        calls = ToolCallSplit(tools.format, tools.parallel) if tools else None
        self._complete(body, ids, chat=True, grammar=grammar, split=split, calls=calls)

    def completions(self, body: dict) -> None:
        self._check_model(body)
        _field(body, "echo", (bool,), False, lambda v: not v, "false: the prompt is not echoed")
        _field(body, "suffix", (str,), "", lambda v: not v, "empty: insertion is not supported")
        _field(body, "best_of", (int,), 1, lambda v: v == 1, "1: one choice per request")
        _field(body, "tools", (list,), [], lambda v: not v, "empty: tools are for /v1/chat/completions")
        ids = _prompt_ids(body, self.server.model, self.server.engine.n_ctx)
        self._complete(body, ids, chat=False, grammar=_response_format(body, self.server.model.tokenizer, self.server.log))

    def _complete(self, body: dict, ids: list[int], chat: bool, grammar: Grammar | None = None,
                  split: ReasoningSplit | None = None, calls: ToolCallSplit | None = None) -> None:
        engine = self.server.engine
        sampling = _sampling(body, self.server.defaults)
        stops = _stops(body)
        room = engine.n_ctx - len(ids)
        max_tokens = _field(body, "max_completion_tokens", (int,), None, lambda v: v >= 1, "a whole number >= 1")
        max_tokens = _field(body, "max_tokens", (int,), max_tokens, lambda v: v >= 1, "a whole number >= 1")
        stream = _field(body, "stream", (bool,), False, None, "true or false")
        options = _field(body, "stream_options", (dict,), {}, None, "an object")
        usage_in_stream = _field(options, "include_usage", (bool,), False, None, "true or false")
        n_logprobs = _logprobs(body, chat)
        try:
            request = engine.submit(ids, max_tokens=min(max_tokens or room, max(room, 1)), stop=stops,
                                    logprobs=n_logprobs, grammar=grammar, **sampling)
        except ContextError as e:
            raise HTTPError(400, str(e), param="messages" if chat else "prompt", code="context_length_exceeded") from None
        except QueueFull as e:
            raise HTTPError(503, str(e), "server_error", code="overloaded") from None
        except LlmrunError as e:
            raise HTTPError(400, str(e)) from None
        reply = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                 "object": "chat.completion" if chat else "text_completion",
                 "created": int(time.time()), "model": self.server.model_id}

        def usage(last) -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": last.generation_tokens,
                    "total_tokens": len(ids) + last.generation_tokens,
                    "prompt_tokens_details": {"cached_tokens": request.cached}}

        logprobs = _Logprobs(self.server.model.tokenizer, chat) if n_logprobs is not None else None
        fields = _ReplyFields(split, calls)

        def choice(text: str | None, finish_reason: str | None, first: bool = False, records=()) -> dict:
            lp = logprobs.of(records) if logprobs else None
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": finish_reason}
            message = fields.feed(text or "", finish_reason is not None)
            if message.get("tool_calls") and finish_reason == "stop":
                finish_reason = "tool_calls"
            if not stream:
                called = message.pop("tool_calls", None)
                if called:  # the content beside them, if none, is null (as OpenAI's)
                    content = message["content"] if message["content"].strip() else None
                    message |= {"content": content, "tool_calls": [c.openai() for c in called]}
                if "reasoning_content" in message:
                    message["reasoning_content"] = message["reasoning_content"] or None
                return {"index": 0, "message": {"role": "assistant", **message}, "logprobs": lp,
                        "finish_reason": finish_reason}
            delta = ({"role": "assistant", "content": ""} if first else {}) | {k: v for k, v in message.items() if v}
            if "tool_calls" in delta:
                delta["tool_calls"] = [c.openai(i) for i, c in enumerate(delta["tool_calls"])]
            return {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}

        with self.server.response():  # written out before the server exits
            try:
                if not stream:
                    records = list(self._records(request))
                    last = records[-1]
                    self._send_json(200, reply | {"choices": [choice("".join(r.text for r in records), last.finish_reason,
                                                                     records=records)], "usage": usage(last)})
                    return
                chunk = reply | {"object": "chat.completion.chunk"} if chat else reply
                self._start_stream()
                if chat:
                    self._event(json.dumps(chunk | {"choices": [choice(None, None, first=True)]}))
                for r in self._records(request):
                    if r.text or r.finish_reason or (logprobs and r.logprob):
                        self._event(json.dumps(chunk | {"choices": [choice(r.text, r.finish_reason, records=[r])]}))
                    if r.finish_reason and usage_in_stream:
                        self._event(json.dumps(chunk | {"choices": [], "usage": usage(r)}))
                self._end_stream()
            except GrammarError as e:  # a grammar that fails as it runs (one forcing endless text)
                self._send_json(400, HTTPError(400, str(e), param="response_format").body())
            except LlmrunError as e:  # the engine's failure, or its shutdown: said here, inside the count
                self._send_json(500, HTTPError(500, f"the generation failed: {e}", "server_error").body())
            finally:
                request.cancel()  # however this ends (done, the client gone, a failure), the slot is freed


class _ReplyFields:
    """A chat reply's text, as it comes, turned into its message's fields: `content`, a reasoning
    model's `reasoning_content` (split at <think> ... </think>), and, on the last piece, the
    `tool_calls` read from what the model wrote (where tools were offered)."""

    def __init__(self, split: ReasoningSplit | None, calls: ToolCallSplit | None):
        self.split, self.calls = split, calls

    def feed(self, text: str, last: bool) -> dict:
        reasoning, content = self.split.feed(text) if self.split else ("", text)
        if last and self.split:
            more = self.split.flush()
            reasoning, content = reasoning + more[0], content + more[1]
        fields = {"reasoning_content": reasoning} if self.split else {}
        if self.calls is None:
            return fields | {"content": content}
        content = self.calls.feed(content)
        if not last:
            return fields | {"content": content}
        rest, calls = self.calls.flush()
        return fields | {"content": content + rest, "tool_calls": calls}


class _Logprobs:
    """Tokens' log-probabilities in OpenAI's shapes: chat's {"content": [{token, logprob, bytes,
    top_logprobs}]} or the completions' {tokens, token_logprobs, top_logprobs, text_offset}. A
    token is its own bytes (Tokenizer.token_bytes), as text with U+FFFD for a split character's
    pieces; offsets count from the completion's start."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat, self.offset = tokenizer, chat, 0

    def _item(self, token: int, logprob: float) -> dict:
        raw = self.tokenizer.token_bytes(token)
        # JSON has no infinity or NaN: a token the model rules out (or a broken row) gets OpenAI's floor
        return {"token": raw.decode(errors="replace"), "logprob": logprob if logprob > -9999.0 else -9999.0,
                "bytes": list(raw)}

    def of(self, records) -> dict | None:
        entries = [r.logprob for r in records if r.logprob]
        if not entries:  # an end-of-text record, or a stream's closing one
            return None
        items = [(self._item(e.token, e.logprob), [self._item(i, lp) for i, lp in e.top]) for e in entries]
        if self.chat:
            return {"content": [chosen | {"top_logprobs": top} for chosen, top in items], "refusal": None}
        offsets, alternatives = [], []
        for chosen, top in items:
            offsets.append(self.offset)
            self.offset += len(chosen["token"])
            alternatives.append({})
            for a in top + [chosen]:  # the drawn token always among them, as OpenAI's legacy API has it;
                alternatives[-1].setdefault(a["token"], a["logprob"])  # two tokens of one text: the likelier's
        return {"tokens": [chosen["token"] for chosen, _ in items],
                "token_logprobs": [chosen["logprob"] for chosen, _ in items],
                "top_logprobs": alternatives, "text_offset": offsets}


ROUTES = {
    "/v1/chat/completions": {"POST": Handler.chat_completions},
    "/v1/completions": {"POST": Handler.completions},
    "/v1/models": {"GET": Handler.models},
    "/health": {"GET": Handler.health},
    "/slots": {"GET": Handler.slots},
    "/tokenize": {"POST": Handler.tokenize},
    "/detokenize": {"POST": Handler.detokenize},
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: Model, host: str = "127.0.0.1", port: int = 8080, parallel: int = 4, n_ctx: int | None = None,
          api_key: str | None = None, max_queue: int = 64, batch_size: int = 512, model_id: str | None = None,
          defaults: dict | None = None, log=sys.stderr) -> None:
    """Serve `model` until interrupted (Ctrl-C)."""
    model_id = model_id or os.path.splitext(os.path.basename(model.path))[0]
    with Engine(model, parallel=parallel, n_ctx=n_ctx, max_queue=max_queue, batch_size=batch_size) as engine:
        try:
            server = Server((host, port), model, engine, model_id, api_key, defaults, log)
        except OSError as e:
            raise LlmrunError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                              + (" (choose another --port)" if e.errno == errno.EADDRINUSE else "")) from None
        with server:
            if not is_loopback(host):
                log.write(f"llmrun: warning: listening on {host}: anyone who can reach this machine can use the model"
                          + ("" if api_key else "; set --api-key") + "\n")
            bound = server.server_address
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            log.write(f"llmrun: serving {model_id} at http://{shown}:{bound[1]}/v1 "
                      f"({parallel} slots of {engine.n_ctx} tokens; Ctrl-C stops)\n")
            if engine.context_note:
                log.write(f"llmrun: context of each slot: {engine.context_note} (--ctx-size)\n")
            log.flush()
            try:
                server.serve_forever(poll_interval=0.5)
            finally:
                engine.close()  # requests in flight end with an error record...
                server.drain(5)  # ...which their handlers write out before the process exits
