"""`llmrun serve`: the continuous-batching engine (llmrun.batching) in-process, then the real
server in its own process on a free loopback port, driven by the official `openai` client.
Greedy answers are compared with what `llmrun generate` prints for the same prompt."""
from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import openai
import pytest

import llmrun
from llmrun.batching import Cancelled, Engine, QueueFull
from llmrun.chat import chat_ids
from llmrun.errors import ContextError, SettingError

from conftest import run_cli

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
             "Explain gravity to a child in two sentences."]
N = 48  # tokens per answer


@pytest.fixture(scope="module")
def model(smollm2_q4_0):
    return llmrun.load(smollm2_q4_0)


def _alone(model, ids, max_tokens=N, **sampling) -> tuple[str, list[int]]:
    sampling = {"temperature": 0, **sampling}
    records = list(llmrun.generate(model, ids, max_tokens=max_tokens, **sampling))
    return "".join(r.text for r in records), [r.token for r in records]


def _engine_run(request) -> tuple[str, list[int]]:
    records = list(request)
    return "".join(r.text for r in records), [r.token for r in records]


# --- the engine ------------------------------------------------------------------------------

def test_engine_batches_without_changing_answers(model):
    """Four requests decoded together, plus more than the slots hold: each gets the tokens it
    gets alone, greedy and seeded sampling alike, and the steps were shared."""
    prompts = [chat_ids(model, [{"role": "user", "content": q}]) for q in QUESTIONS]
    settings = [{}, {}, {"temperature": 0.8, "seed": 7}, {}, {"temperature": 1.0, "seed": 3, "top_k": 0},
                {"max_tokens": 5}]
    prompts += prompts[:2]
    with Engine(model, parallel=4) as engine:
        requests = [engine.submit(p, **{"max_tokens": N, "temperature": 0, **s}) for p, s in zip(prompts, settings)]
        got = [_engine_run(r) for r in requests]
    for p, s, g in zip(prompts, settings, got):
        assert g == _alone(model, p, **{"max_tokens": N, **s})
    # shared steps: far fewer forwards than one per token of every request
    assert engine.steps < 0.6 * sum(len(tokens) for _, tokens in got)


def test_engine_logprobs_unchanged_by_batching(model):
    prompts = [chat_ids(model, [{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    with Engine(model, parallel=3) as engine:
        requests = [engine.submit(p, max_tokens=12, temperature=0.8, seed=i, logprobs=2) for i, p in enumerate(prompts)]
        got = [[r.logprob for r in request] for request in requests]
        with pytest.raises(SettingError, match="logprobs"):
            engine.submit(prompts[0], logprobs=21)
    for i, (p, g) in enumerate(zip(prompts, got)):
        alone = [r.logprob for r in llmrun.generate(model, p, max_tokens=12, temperature=0.8, seed=i, logprobs=2)]
        assert g == alone and all(e is None or len(e.top) == 2 for e in g)


def test_long_prompt_runs_in_pieces_with_the_same_answer(model):
    ids = chat_ids(model, [{"role": "user", "content": " ".join(QUESTIONS * 3)}])
    with Engine(model, parallel=2, batch_size=16) as engine:
        other = engine.submit(chat_ids(model, [{"role": "user", "content": QUESTIONS[0]}]), max_tokens=N, temperature=0)
        long = engine.submit(ids, max_tokens=16, temperature=0)
        assert _engine_run(long) == _alone(model, ids, 16)
        _engine_run(other)
    assert len(ids) > 100 and engine.steps >= len(ids) // 16


def test_follow_up_turn_reuses_the_slot_cache(model):
    with Engine(model, parallel=2) as engine:
        turn = [{"role": "user", "content": QUESTIONS[0]}]
        answer, _ = _engine_run(engine.submit(chat_ids(model, turn), max_tokens=N, temperature=0))
        follow = chat_ids(model, turn + [{"role": "assistant", "content": answer},
                                         {"role": "user", "content": "And of Germany?"}])
        r = engine.submit(follow, max_tokens=N, temperature=0)
        got = _engine_run(r)
    assert r.cached > len(chat_ids(model, turn)) - 2
    assert got == _alone(model, follow)


def test_cancel_frees_the_slot(model):
    with Engine(model, parallel=1) as engine:
        ids = chat_ids(model, [{"role": "user", "content": QUESTIONS[3]}])
        r = engine.submit(ids, max_tokens=500, temperature=0)
        r.next()
        r.cancel()
        with pytest.raises(Cancelled):
            while True:
                r.next(timeout=60)
        assert _engine_run(engine.submit(ids, max_tokens=4, temperature=0)) == _alone(model, ids, 4)
        assert engine.status()["slots"][0]["state"] == "idle"


def test_a_request_cancelled_while_waiting_gives_up_its_place(model):
    with Engine(model, parallel=1, max_queue=1, n_ctx=512) as engine:
        ids = model.tokenizer.encode("Once upon a time")
        running = engine.submit(ids, max_tokens=200, temperature=0)
        running.next(timeout=60)  # it has the slot
        waiting = engine.submit(ids, max_tokens=4, temperature=0)
        waiting.cancel()  # its client left before it had a slot
        assert engine.status()["waiting"] == 0
        third = engine.submit(ids, max_tokens=4, temperature=0)  # not refused: the queue is empty
        running.cancel()
        assert _engine_run(third) == _alone(model, ids, 4)


def test_full_queue_and_bad_settings_are_refused_at_once(model):
    with Engine(model, parallel=1, max_queue=1, n_ctx=64) as engine:
        ids = model.tokenizer.encode("Once upon a time")
        first, second = (engine.submit(ids, max_tokens=20, temperature=0) for _ in range(2))
        with pytest.raises(QueueFull, match="try again"):
            engine.submit(ids, max_tokens=20)
        with pytest.raises(SettingError, match="max_tokens"):
            engine.submit(ids, max_tokens=0)
        with pytest.raises(SettingError, match="empty"):
            engine.submit([], max_tokens=1)
        with pytest.raises(SettingError, match="temperature"):
            engine.submit(ids, temperature=-1)
        with pytest.raises(ContextError, match="context holds 64"):
            engine.submit(ids * 20, max_tokens=1)
        want = _alone(model, ids, 20)
        assert _engine_run(first) == want and _engine_run(second) == want


# --- the server ------------------------------------------------------------------------------

KEY = "test-key"


class Server:
    def __init__(self, model_path, tmp_path, *args):
        self.log = tmp_path / "server.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "llmrun.cli.main", "serve", str(model_path), "--port", "0",
                                      "--threads", "2", *args], stderr=open(self.log, "w"), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while "serving" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        line = next(x for x in self.log.read_text().splitlines() if "serving" in x)
        self.port = int(re.search(r":(\d+)/v1", line).group(1))

    def client(self, key=KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, timeout=120)

    def http(self, method, path, body=None, headers=None, key=KEY) -> tuple[int, dict | str, dict]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        c.request(method, path, data, {"Authorization": f"Bearer {key}", **(headers or {})})
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        is_json = r.getheader("Content-Type") == "application/json"
        return r.status, json.loads(text) if is_json else text, dict(r.getheaders())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        return self.log.read_text()


@pytest.fixture(scope="module")
def server(smollm2_q4_0, tmp_path_factory):
    s = Server(smollm2_q4_0, tmp_path_factory.mktemp("serve"), "--parallel", "4", "--ctx-size", "1024",
               "--api-key", KEY)
    yield s
    log = s.stop()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def generated(smollm2_q4_0):
    """What `llmrun generate --temp 0 -n N` prints for each question, through the chat template."""
    return {q: run_cli("generate", smollm2_q4_0, "-p", q, "--temp", "0", "-n", N).stdout.removesuffix("\n")
            for q in QUESTIONS}


def _chat(client, question, stream=False, **kw):
    kw = {"model": "smollm2-q4_0", "max_tokens": N, "temperature": 0, **kw}
    messages = [{"role": "user", "content": question}]
    if not stream:
        r = client.chat.completions.create(messages=messages, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(messages=messages, stream=True,
                                                stream_options={"include_usage": True}, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    return text, finish, usage


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == ["smollm2-q4_0"]
    status, body, _ = server.http("GET", "/health", key="none needed")
    assert status == 200 and body["status"] == "ok" and body["slots_idle"] + body["slots_processing"] == 4


@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_llmrun_generate(server, generated, model, stream):
    q = QUESTIONS[0]
    text, finish, usage = _chat(server.client(), q, stream=stream)
    assert text == generated[q] and finish == "stop"
    assert usage.prompt_tokens == len(chat_ids(model, [{"role": "user", "content": q}]))
    assert usage.completion_tokens == len(_alone(model, chat_ids(model, [{"role": "user", "content": q}]))[1])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_answers_unchanged_by_three_concurrent_requests(server, generated):
    """Four chats at once (so decoded in shared steps): each streamed answer is what
    `llmrun generate` prints; the first round warms the slots' caches, the second runs on them."""
    client = server.client()
    for _ in range(2):
        results = {}
        threads = [threading.Thread(target=lambda q: results.__setitem__(q, _chat(client, q, stream=True)), args=(q,))
                   for q in QUESTIONS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {q: text for q, (text, _, _) in results.items()} == generated


def test_completions_equal_llmrun_generate_raw(server, smollm2_q4_0):
    prompt = "The capital of France is"
    want = run_cli("generate", smollm2_q4_0, "-p", prompt, "--raw", "--temp", "0", "-n", 16).stdout.removesuffix("\n")
    client = server.client()
    r = client.completions.create(model="smollm2-q4_0", prompt=prompt, max_tokens=16, temperature=0)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smollm2-q4_0", prompt=prompt, max_tokens=16, temperature=0, stream=True))
    assert streamed == want


def test_stream_is_server_sent_events_ending_in_done(server):
    status, text, headers = server.http("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True,
        "stream_options": {"include_usage": True}})
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert all(e.startswith("data: ") for e in text.split("\n\n") if e) and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_stop_strings_and_max_tokens(server, generated):
    q = QUESTIONS[0]
    cut = generated[q].index("Paris")
    text, finish, usage = _chat(server.client(), q, stop=["Paris", "never there"])
    assert (text, finish) == (generated[q][:cut], "stop")
    text, finish, usage = _chat(server.client(), q, stream=True, max_tokens=3)
    assert finish == "length" and usage.completion_tokens == 3 and generated[q].startswith(text)


def _log_softmax(logits):
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_completion_logprobs_are_the_model_log_softmax(server, model):
    """Each token's log-probability and its alternatives, against the logits of the whole
    sequence run at once; the token texts make up the completion."""
    prompt = "The capital of France is"
    r = server.client().completions.create(model="smollm2-q4_0", prompt=prompt, max_tokens=8, temperature=0,
                                           logprobs=3)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    ids = model.tokenizer.encode(prompt)
    tokens = _alone(model, ids, 8)[1]
    expected = _log_softmax(model.logits(ids + tokens[:-1])[len(ids) - 1:])  # [8, V]
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert "".join(lp.tokens) == text and lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(8)]
    for row, token, text, got, top in zip(expected, tokens, lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert got == pytest.approx(row[token], abs=1e-6)
        assert list(top.values()) == pytest.approx(list(np.sort(row)[::-1][:3]), abs=1e-6)  # most likely first
        assert list(top)[0] == text  # greedy: the token drawn is the likeliest


def test_chat_logprobs_streamed_and_not(server, model):
    kw = {"model": "smollm2-q4_0", "messages": [{"role": "user", "content": QUESTIONS[1]}], "max_tokens": 12,
          "temperature": 0.9, "seed": 5, "logprobs": True, "top_logprobs": 2}
    client = server.client()
    whole = client.chat.completions.create(**kw).choices[0]
    streamed = [e for c in client.chat.completions.create(stream=True, **kw) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole.logprobs.content]
    assert "".join(e.token for e in whole.logprobs.content) == whole.message.content
    ids = chat_ids(model, kw["messages"])
    tokens = _alone(model, ids, 12, temperature=0.9, seed=5)[1]
    expected = _log_softmax(model.logits(ids + tokens[:-1])[len(ids) - 1:])
    for row, token, e in zip(expected, tokens, whole.logprobs.content):
        assert e.logprob == pytest.approx(row[token], abs=1e-6) and bytes(e.bytes).decode() == e.token
        assert [a.logprob for a in e.top_logprobs] == pytest.approx(list(np.sort(row)[::-1][:2]), abs=1e-6)
    plain = client.chat.completions.create(**{**kw, "logprobs": False, "top_logprobs": None}).choices[0]
    assert plain.logprobs is None and plain.message.content == whole.message.content


def test_logprobs_of_characters_split_over_tokens(server):
    """Byte-level BPE spells an emoji in several tokens: each gives its own bytes, and they add
    up to the text; logprobs=0 still names the drawn token."""
    client = server.client()
    r = client.completions.create(model="smollm2-q4_0", prompt="Emoji: 😀😀😀😀", max_tokens=8, temperature=0,
                                  logprobs=0).choices[0]
    assert all(list(top) == [token] for top, token in zip(r.logprobs.top_logprobs, r.logprobs.tokens))
    c = client.chat.completions.create(model="smollm2-q4_0", max_tokens=12, temperature=0, logprobs=True,
                                       messages=[{"role": "user", "content": "Repeat exactly: 😀😀😀😀"}]).choices[0]
    raw = [bytes(e.bytes) for e in c.logprobs.content]
    assert b"".join(raw) == c.message.content.encode() and "😀" in c.message.content
    assert any(len(b) < 4 and b[-1:] >= b"\x80" for b in raw)  # a piece of a character among them


@pytest.mark.parametrize("params, param", [({"top_logprobs": 2}, "top_logprobs"),
                                           ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                                           ({"logprobs": 3}, "logprobs")])
def test_bad_logprobs_are_400(server, params, param):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="smollm2-q4_0", max_tokens=4,
                                                messages=[{"role": "user", "content": "Hi"}], **params)
    assert e.value.param == param
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="smollm2-q4_0", prompt="Hi", max_tokens=4, logprobs=-1)
    assert e.value.param == "logprobs"


def test_sampling_with_a_seed_repeats(server):
    runs = [_chat(server.client(), QUESTIONS[1], temperature=1.0, seed=11)[0] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


def test_follow_up_turn_is_served_from_the_cache(server, model):
    client = server.client()
    turn = [{"role": "user", "content": QUESTIONS[0]}]
    answer = client.chat.completions.create(model="smollm2-q4_0", messages=turn, max_tokens=N, temperature=0)
    follow = turn + [{"role": "assistant", "content": answer.choices[0].message.content},
                     {"role": "user", "content": "And of Germany?"}]
    r = client.chat.completions.create(model="smollm2-q4_0", messages=follow, max_tokens=N, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens
    assert r.choices[0].message.content == _alone(model, chat_ids(model, follow))[0]


@pytest.mark.parametrize("params, param", [
    ({"temperature": 5}, "temperature"), ({"n": 2}, "n"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [1]}, "stop"), ({"messages": []}, "messages"), ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"presence_penalty": 1}, "presence_penalty"), ({"seed": "x"}, "seed"), ({"seed": -1}, "seed"),
    ({"stream": "yes"}, "stream"), ({"model": ["smollm2-q4_0"]}, "model")])
def test_invalid_parameters_are_400(server, params, param):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**{"model": "smollm2-q4_0", "max_tokens": 4,
                                                   "messages": [{"role": "user", "content": "Hi"}], **params})
    assert e.value.status_code == 400 and e.value.param == param


def test_prompt_longer_than_the_context_is_400(server):
    with pytest.raises(openai.BadRequestError, match="context holds 1024") as e:
        server.client().completions.create(model="smollm2-q4_0", prompt="word " * 1500, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    # text too long to fit whatever its tokens is refused before it is tokenised
    with pytest.raises(openai.BadRequestError, match="33000 characters") as e:
        server.client().chat.completions.create(model="smollm2-q4_0", messages=[{"role": "user", "content": "x" * 33000}])
    assert e.value.code == "context_length_exceeded"


def test_wrong_or_missing_api_key_is_401(server):
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    status, body, _ = server.http("GET", "/v1/models", key="")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_unknown_model_and_route_are_404(server):
    with pytest.raises(openai.NotFoundError, match="smollm2-q4_0"):
        server.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    for method, path in (("GET", "/v2/models"), ("POST", "/v1/embeddings"), ("GET", "/v1/models/other")):
        status, body, _ = server.http(method, path, {} if method == "POST" else None)
        assert status == 404 and "error" in body


@pytest.mark.parametrize("body, headers, status", [
    (b"{not json", {}, 400), (b"[1, 2]", {}, 400), (b'{"messages": "hi"}', {}, 400),
    (b"", {"Content-Length": str(1 << 30)}, 413)])
def test_malformed_bodies_get_json_errors(server, body, headers, status):
    got, answer, _ = server.http("POST", "/v1/chat/completions", body, headers)
    assert got == status and answer["error"]["message"]


def test_a_refused_request_with_a_body_does_not_spoil_the_connection(server):
    """A refusal before the body is read (a wrong key, an unknown route or method) closes the
    connection, so the body is not read as the next request; the client reconnects."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = json.dumps({"prompt": "Hi", "max_tokens": 2})
    for path, key, status in (("/v1/completions", "wrong", 401), ("/v1/embeddings", KEY, 404), ("/v1/models", KEY, 405),
                              ("/v1/completions", KEY, 200)):
        c.request("POST", path, body, {"Authorization": f"Bearer {key}"})
        r = c.getresponse()
        assert r.status == status and json.loads(r.read())
    c.close()


def test_wrong_method_and_garbage_requests(server):
    status, body, _ = server.http("GET", "/v1/chat/completions")
    assert status == 405 and "POST" in body["error"]["message"]
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"NOT A REQUEST HTTP/1.1\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # the server closes the connection after a bad request line
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.") and " 400 " in reply.split("\r\n")[0] and '"error"' in reply
    assert server.client().models.list().data  # and the server carries on


def test_a_stream_to_an_http_1_0_client_is_not_chunked(server):
    import socket
    body = json.dumps({"prompt": "Hi", "max_tokens": 3, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.0\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                  % (KEY.encode(), len(body), body))
        reply = b""
        while chunk := s.recv(65536):  # to the close that ends the body
            reply += chunk
    head, _, events = reply.decode().partition("\r\n\r\n")
    assert " 200 " in head.split("\r\n")[0] and "chunked" not in head.lower()
    assert events.startswith("data: {") and events.endswith("data: [DONE]\n\n")


def test_tokenize_and_detokenize(server, model):
    status, body, _ = server.http("POST", "/tokenize", {"content": "Hello world"})
    assert status == 200 and body["tokens"] == model.tokenizer.encode("Hello world", add_special_tokens=False)
    status, body, _ = server.http("POST", "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and body["content"] == "Hello world"
    status, body, _ = server.http("POST", "/detokenize", {"tokens": [10 ** 9]})
    assert status == 400


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_its_generation(server, model, stream):
    """A client that hangs up (streaming: after a few tokens; waiting for a whole answer: after
    a moment): its slot goes idle long before the answer's 900 tokens, and its cache holds
    little more than the prompt."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    prompt = "Once upon a time, in a land far away, there lived"
    c.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": 900, "temperature": 0.8,
                                                    "seed": 1, "stream": stream}), {"Authorization": f"Bearer {KEY}"})
    if stream:
        r = c.getresponse()
        assert r.status == 200 and r.readline()  # the first event is under way
    else:
        time.sleep(0.3)
    c.sock.shutdown(2)
    c.close()
    deadline = time.monotonic() + 60
    while True:
        status, slots, _ = server.http("GET", "/slots")
        if all(s["state"] == "idle" for s in slots):
            break
        assert time.monotonic() < deadline, slots
        time.sleep(0.05)
    n_prompt = len(model.tokenizer.encode(prompt))
    used = max(s["n_cached"] for s in slots)
    assert n_prompt <= used < n_prompt + 600, slots


def test_serve_command_line_errors(smollm2_q4_0, server, tmp_path):
    r = run_cli("serve", smollm2_q4_0, "--parallel", "0", check=False)
    assert r.returncode == 2 and "--parallel" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve", smollm2_q4_0, "--port", server.port, check=False)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{server.port}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("serve", smollm2_q4_0, "--chat-template", tmp_path / "absent.jinja", check=False)
    assert r.returncode == 1 and r.stderr.startswith("llmrun: error: cannot read") and len(r.stderr.splitlines()) == 1


def test_stopping_the_server_ends_streams_with_an_error_event(smollm2_q4_0, tmp_path):
    """Ctrl-C while a stream runs: its client gets an error event and data: [DONE], not a cut."""
    s = Server(smollm2_q4_0, tmp_path, "--parallel", "1", "--ctx-size", "1024")
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
    c.request("POST", "/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 900, "stream": True}))
    r = c.getresponse()
    assert r.readline().startswith(b"data: {")
    s.proc.send_signal(signal.SIGINT)
    events = [line.removeprefix(b"data: ") for line in r.read().split(b"\n") if line.startswith(b"data: ")]
    c.close()
    assert events[-1] == b"[DONE]" and "shutting down" in json.loads(events[-2])["error"]["message"]
    assert s.proc.wait(timeout=60) == 130 and "Traceback" not in s.log.read_text()


def test_listening_beyond_loopback_warns(smollm2_q4_0, tmp_path):
    s = Server(smollm2_q4_0, tmp_path, "--host", "0.0.0.0", "--parallel", "1", "--ctx-size", "64")
    log = s.stop()
    assert "warning: listening on 0.0.0.0" in log and "--api-key" in log


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


MALFORMED = [  # (method, path, body, headers, key): each must get a 4xx
    ("POST", "/v1/chat/completions", b"{oops", {}, KEY),
    ("POST", "/v1/chat/completions", {"messages": "hello"}, {}, KEY),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -3}, {}, KEY),
    ("POST", "/v1/completions", {"prompt": "x", "model": "nope"}, {}, KEY),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3}, {}, KEY),
    ("POST", "/v1/completions", b"", {"Content-Length": str(1 << 31)}, KEY),
    ("GET", "/v1/models", None, {}, "wrong"),
    ("POST", "/v1/nothing", {}, {}, KEY),
]


def test_load_200_requests_from_8_clients(smollm2_q4_0, model, tmp_path):
    """200 requests from 8 concurrent clients, chat and completions, streamed or not, greedy or
    seeded, of random lengths, with 1 in 10 malformed: every valid one gets exactly the answer it
    gets alone, every malformed one a 4xx, and the server ends alive with its memory flat over
    the last half of the run."""
    import random
    rng = random.Random(0)
    prompts = QUESTIONS + ["Once upon a time", "def fibonacci(n):", "The three laws of motion are",
                           "Translate to French: good morning"]
    jobs = []
    for i in range(200):
        if i % 10 == 9:
            jobs.append(("malformed", MALFORMED[(i // 10) % len(MALFORMED)]))
        else:
            sampling = rng.choice([{"temperature": 0}, {"temperature": 0.9, "seed": rng.randrange(1000)}])
            jobs.append((rng.choice(["chat", "completion"]), rng.choice(prompts), rng.choice([1, 3, 8, 24]),
                         rng.random() < 0.5, tuple(sampling.items())))
    s = Server(smollm2_q4_0, tmp_path, "--parallel", "4", "--ctx-size", "512", "--api-key", KEY)
    try:
        client = s.client()
        answers, rss = {}, []

        def run(job):
            if job[0] == "malformed":
                method, path, body, headers, key = job[1]
                return s.http(method, path, body, headers, key)[0]
            kind, prompt, n, stream, sampling = job
            kw = {"model": "smollm2-q4_0", "max_tokens": n, "stream": stream, **dict(sampling)}
            if kind == "chat":
                r = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
                return "".join(c.choices[0].delta.content or "" for c in r) if stream else r.choices[0].message.content
            r = client.completions.create(prompt=prompt, **kw)
            return "".join(c.choices[0].text for c in r) if stream else r.choices[0].text

        def client_thread(todo: queue.Queue):
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                answers[i] = run(jobs[i])

        for start in range(0, 200, 50):  # four rounds of 50, the server's memory read after each
            todo = queue.Queue()
            for i in range(start, start + 50):
                todo.put(i)
            threads = [threading.Thread(target=client_thread, args=(todo,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rss.append(_rss_kib(s.proc.pid))
        assert s.http("GET", "/health")[0] == 200 and s.proc.poll() is None
    finally:
        log = s.stop()
    assert "Traceback" not in log, log
    assert len(answers) == 200
    for i, job in enumerate(jobs):
        if job[0] == "malformed":
            assert 400 <= answers[i] < 500, (job, answers[i])
            continue
        kind, prompt, n, _, sampling = job
        ids = chat_ids(model, [{"role": "user", "content": prompt}]) if kind == "chat" else model.tokenizer.encode(prompt)
        assert answers[i] == _alone(model, ids, n, **dict(sampling))[0], job
    print(f"server RSS after each 50 requests: {rss} KiB")
    assert rss[3] - rss[1] < 8 * 1024, rss  # KiB


# --- reasoning models --------------------------------------------------------------------------

# A ChatML template of the reasoning kind (as DeepSeek-R1's distills and Qwen3 do): the generation
# prompt opens <think> for the model, or with enable_thinking false gives it an empty one.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}"
    "{% endif %}")


@pytest.fixture(scope="module")
def thinking_server(smollm2_hf, tmp_path_factory):
    """SmolLM2 with THINKING_TEMPLATE as its own chat template, served."""
    import shutil
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("thinking")
    shutil.copytree(smollm2_hf["float32"], d / "hf")
    (d / "hf" / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    convert(str(d / "hf"), str(d / "thinking.llmr"), "q4_0")
    s = Server(d / "thinking.llmr", d, "--parallel", "2", "--ctx-size", "512", "--api-key", KEY)
    yield s
    assert "Traceback" not in s.stop()


def test_reasoning_goes_to_reasoning_content(thinking_server):
    """The template opened <think>: what the model writes (SmolLM2 never closes it) is reasoning,
    streamed as delta.reasoning_content and given as message.reasoning_content, the content
    empty; chat_template_kwargs {"enable_thinking": false} reaches the template, whose closed
    think block leaves the reply all content."""
    client = thinking_server.client()
    kw = dict(model="thinking", max_tokens=12, temperature=0,
              messages=[{"role": "user", "content": "What is the capital of France?"}])
    r = client.chat.completions.create(**kw)
    message = r.choices[0].message
    assert message.reasoning_content and not message.content
    streamed = {"reasoning_content": "", "content": ""}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for key in streamed:
            streamed[key] += getattr(chunk.choices[0].delta, key, None) or ""
    assert streamed == {"reasoning_content": message.reasoning_content, "content": ""}
    r = client.chat.completions.create(extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **kw)
    assert r.choices[0].message.content and r.choices[0].message.reasoning_content is None
    status, body, _ = thinking_server.http("POST", "/v1/chat/completions", {**kw, "chat_template_kwargs": [1]})
    assert status == 400 and "chat_template_kwargs" in body["error"]["message"]


@pytest.mark.parametrize("pieces,opened,want", [
    (["<thi", "nk>\nI think", " hard</th", "ink>\n\nAnswer: 4"], False, ("I think hard", "Answer: 4")),
    (["Answer", " 4"], False, ("", "Answer 4")),
    (["<", "b>x"], False, ("", "<b>x")),  # a tag's first letters that turn out not to be one
    (["I think</think>\n\nok"], True, ("I think", "ok")),  # the prompt opened it
    (["thinking, cut off at max_tokens </thi"], True, ("thinking, cut off at max_tokens </thi", "")),
])
def test_reasoning_split_of_streamed_pieces(pieces, opened, want):
    from llmrun.chat import ReasoningSplit
    split, got = ReasoningSplit(opened), ["", ""]
    for piece in [*pieces, None]:
        r, c = split.feed(piece) if piece is not None else split.flush()
        got = [got[0] + r, got[1] + c]
    assert tuple(got) == want


def test_only_the_generation_prompt_opens_reasoning():
    """A message that mentions <think> opens nothing; the generation prompt's own tag does."""
    from llmrun.chat import opens_reasoning
    asked = "<|im_start|>user\nWhat does the <think> tag do?<|im_end|>\n<|im_start|>assistant\n"
    assert not opens_reasoning(asked)
    assert opens_reasoning(asked + "<think>\n")


def test_template_variables_may_be_named_anything(model):
    """chat_template_kwargs are the template's variables: names like template or seconds included."""
    from llmrun.chat import render_chat
    text = render_chat(model, [{"role": "user", "content": "hi"}], template="{{ template }} {{ seconds }}",
                       template_kwargs={"template": "a", "seconds": "b"})
    assert text == "a b"
