"""Structured output (llmrun/grammar.py): JSON schemas and Lark grammars constrain sampling token
by token, in generate(), the batching engine, `llmrun generate --json-schema/--grammar` and
`llmrun serve`'s response_format. A tiny random model first (a model that knows no JSON still
writes it, valid by construction), then SmolLM2 answering the 20 schemas of
tests/data/json_schemas.json through the official openai client."""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest

import llmrun
from llmrun.batching import Engine
from llmrun.grammar import Grammar, GrammarError, GrammarUnavailable

from conftest import make_hf_checkpoint, run_cli
from test_serve import KEY, Server

CASES = json.loads((Path(__file__).parent / "data" / "json_schemas.json").read_text())

# Bounded (enums, booleans, small integers, short arrays), so even a random model's answer ends.
TINY_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "color", "tags"],
               "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9},
                              "color": {"enum": ["red", "green"]}, "note": {"type": "string", "maxLength": 3},
                              "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["a", "b"]}}}}
OTHER_SCHEMA = {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "integer", "minimum": -5, "maximum": 5}}
ENDLESS = 'start: ("a" | "b") start'  # a grammar no text completes
FORCED_ENDLESS = {"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#"}}}  # {"a": {"a": ... for ever


def valid(text: str, schema: dict):
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    return value


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random LLaMA (a byte-level vocabulary of 261 tokens in 320 logits) as .llmr."""
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("structured")
    make_hf_checkpoint(d / "hf")
    convert(str(d / "hf"), str(d / "tiny.llmr"), "f32")
    return d / "tiny.llmr"


@pytest.fixture(scope="module")
def tiny_model(tiny):
    return llmrun.load(tiny)


def _text(records) -> tuple[str, str]:
    records = list(records)
    return "".join(r.text for r in records), records[-1].finish_reason


# --- the Python API and the engine, on the tiny model ----------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_a_random_model_writes_valid_json(tiny_model, seed):
    """Sampled at temperature 1 from random logits, every answer still parses and validates,
    and ends by itself (the schema complete) long before max_tokens."""
    text, finish = _text(llmrun.generate(tiny_model, "the", max_tokens=200, temperature=1.0, top_k=0, top_p=1.0,
                                         seed=seed, json_schema=TINY_SCHEMA))
    assert finish == "stop"
    valid(text, TINY_SCHEMA)


def test_json_schema_as_text_and_any_object(tiny_model):
    text, _ = _text(llmrun.generate(tiny_model, "the", max_tokens=200, temperature=0, json_schema=json.dumps(OTHER_SCHEMA)))
    valid(text, OTHER_SCHEMA)
    text, finish = _text(llmrun.generate(tiny_model, "the", max_tokens=400, temperature=0.7, seed=1,
                                         json_schema={"type": "object"}))
    assert finish == "length" or isinstance(json.loads(text), dict)


def test_lark_grammar(tiny_model):
    for seed in range(3):
        text, finish = _text(llmrun.generate(tiny_model, "the", max_tokens=20, temperature=1.0, seed=seed,
                                             grammar='start: ("yes" | "no") "."'))
        assert text in ("yes.", "no.") and finish == "stop"


def test_a_grammar_that_never_completes_ends_at_max_tokens(tiny_model):
    records = list(llmrun.generate(tiny_model, "the", max_tokens=12, temperature=0, grammar=ENDLESS))
    assert set("".join(r.text for r in records)) <= {"a", "b"}
    assert records[-1].finish_reason == "length" and len(records) == 12


def test_a_grammar_that_forces_endless_text_fails_at_once(tiny_model):
    """Where every token is forced for ever, the engine meets its limits on the first tokens:
    one line, not a hang."""
    with pytest.raises(GrammarError, match="Too many items") as e:
        list(llmrun.generate(tiny_model, "the", max_tokens=100, temperature=0, json_schema=FORCED_ENDLESS))
    assert "\n" not in str(e.value)


def test_logprobs_are_the_model_own_not_the_mask(tiny_model):
    """The mask steers the draw; the log-probabilities reported stay the model's."""
    ids = tiny_model.tokenizer.encode("the")
    first = next(llmrun.generate(tiny_model, ids, max_tokens=4, temperature=0, logprobs=1, json_schema=TINY_SCHEMA))
    z = tiny_model.logits(ids)[-1].astype(np.float64)
    z -= z.max() + np.log(np.exp(z - z.max()).sum())
    assert first.text == "{" and first.logprob.logprob == pytest.approx(z[first.token])


def test_batched_sequences_follow_their_own_grammars(tiny_model):
    """Requests with different schemas, a grammar and none, decoded in shared steps: each
    follows its own and gets what generate() gives it alone."""
    ids = tiny_model.tokenizer.encode("the")
    tok = tiny_model.tokenizer
    asks = [dict(grammar=Grammar.from_json_schema(tok, TINY_SCHEMA), seed=1),
            dict(grammar=Grammar.from_json_schema(tok, OTHER_SCHEMA), seed=2),
            dict(grammar=Grammar.from_lark(tok, 'start: "x"+ "!"'), seed=3, max_tokens=6),
            dict(seed=4, max_tokens=10), dict(grammar=Grammar.from_json_schema(tok, TINY_SCHEMA), seed=5)]
    with Engine(tiny_model, parallel=4) as engine:
        requests = [engine.submit(ids, **{"max_tokens": 100, "temperature": 1.0, **a}) for a in asks]
        got = [_text(r) for r in requests]
    for a, g in zip(asks, got):
        assert g == _text(llmrun.generate(tiny_model, ids, **{"max_tokens": 100, "temperature": 1.0, **a}))
    valid(got[0][0], TINY_SCHEMA), valid(got[1][0], OTHER_SCHEMA), valid(got[4][0], TINY_SCHEMA)
    assert got[2][0].strip("x") in ("", "!") and got[0] != got[4]


@pytest.mark.parametrize("schema, message", [
    ({"type": "foo"}, "Invalid type: foo"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "Unimplemented keys"),
    ({"$ref": "#/$defs/missing"}, "does not exist"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "nsatisfiable"),
    ({"type": "string", "pattern": "(["}, "unclosed character class"),
    ([1, 2], "must be an object"),
    (json.loads('{"type": "object", "properties": {"a": ' * 200 + "{}" + "}}" * 200), "recursion limit"),
    ("{not json", "not JSON"),
])
def test_bad_schemas_are_one_line_errors(tiny_model, schema, message):
    with pytest.raises(GrammarError, match=message) as e:
        Grammar.from_json_schema(tiny_model.tokenizer, schema)
    assert "\n" not in str(e.value)


def test_bad_lark_and_both_at_once(tiny_model):
    with pytest.raises(GrammarError, match='unknown name: "foo"') as e:
        list(llmrun.generate(tiny_model, "the", grammar="start: foo"))
    assert "\n" not in str(e.value)
    with pytest.raises(GrammarError, match="not both"):
        list(llmrun.generate(tiny_model, "the", grammar='start: "a"', json_schema={}))


def test_without_llguidance_the_error_says_what_to_install(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance now fails
    with pytest.raises(GrammarUnavailable, match=r"pip install 'llmrun\[agents\]'"):
        Grammar.from_json_schema(tiny_model.tokenizer, TINY_SCHEMA)


def test_a_sentencepiece_vocabulary(tmp_path):
    """A sentencepiece model's pieces reach the engine as the bytes they write (word-start spaces
    included): its vocabulary of lower-case letters spells the grammar's words and no others."""
    from llmrun.models import convert
    make_hf_checkpoint(tmp_path / "hf", tokenizer="spm", vocab_size=64)
    convert(str(tmp_path / "hf"), str(tmp_path / "spm.llmr"), "f32")
    model = llmrun.load(tmp_path / "spm.llmr")
    for seed in range(3):
        text, finish = _text(llmrun.generate(model, "the", max_tokens=40, temperature=1.0, seed=seed,
                                             grammar='start: ("the" | "a") " " ("fox" | "lazy dog") ","'))
        assert finish == "stop" and text in ("the fox,", "the lazy dog,", "a fox,", "a lazy dog,")


# --- the command line -------------------------------------------------------------------------------

def test_generate_json_schema_and_grammar_flags(tiny, tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(TINY_SCHEMA))
    r = run_cli("generate", tiny, "-p", "the", "--raw", "--temp", "0", "-n", "200", "--json-schema",
                tmp_path / "schema.json", check=True)
    want, _ = _text(llmrun.generate(llmrun.load(tiny), "the", max_tokens=200, temperature=0, json_schema=TINY_SCHEMA))
    assert r.stdout == want + "\n" and "finish: stop" in r.stderr
    valid(want, TINY_SCHEMA)
    (tmp_path / "yes.lark").write_text('start: "yes" | "no"')
    r = run_cli("generate", tiny, "-p", "the", "--raw", "--grammar", tmp_path / "yes.lark", check=True)
    assert r.stdout.strip() in ("yes", "no")
    (tmp_path / "bad.json").write_text('{"type": "foo"}')
    for flags in (["--json-schema", tmp_path / "bad.json"], ["--json-schema", tmp_path / "absent.json"],
                  ["--grammar", tmp_path / "schema.json"]):
        r = run_cli("generate", tiny, "-p", "the", *flags)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("llmrun: error:"), r.stderr


# --- the server, on the tiny model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_server(tiny, tmp_path_factory):
    s = Server(tiny, tmp_path_factory.mktemp("tiny-serve"), "--parallel", "3", "--api-key", KEY)
    yield s
    assert "Traceback" not in s.stop()


def _schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _ask(client, stream: bool, **kw) -> tuple[str, str]:
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "the"}], "max_tokens": 200, **kw}
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


@pytest.mark.parametrize("stream", [False, True])
def test_served_json_schema_and_json_object(tiny_server, stream):
    client = tiny_server.client()
    for seed in range(3):
        text, finish = _ask(client, stream, temperature=1.0, seed=seed, response_format=_schema_format(TINY_SCHEMA))
        assert finish == "stop"
        valid(text, TINY_SCHEMA)
    text, finish = _ask(client, stream, temperature=0.5, seed=0, max_tokens=500, response_format={"type": "json_object"})
    assert finish == "length" or isinstance(json.loads(text), dict)


def test_served_completions_follow_a_schema_and_end_at_max_tokens(tiny_server):
    client = tiny_server.client()
    r = client.completions.create(model="tiny", prompt="the", max_tokens=100, temperature=0,
                                  extra_body={"response_format": _schema_format(OTHER_SCHEMA)})
    assert r.choices[0].finish_reason == "stop"
    valid(r.choices[0].text, OTHER_SCHEMA)
    # a schema no answer of 16 tokens can complete: cut at max_tokens, not a hang
    endless = {"type": "array", "minItems": 1000, "items": {"type": "integer"}}
    r = client.completions.create(model="tiny", prompt="the", max_tokens=16, temperature=0,
                                  extra_body={"response_format": _schema_format(endless)})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16
    assert r.choices[0].text.startswith("[")
    # one that forces endless text fails on its first tokens: a 400, or a streamed error event
    body = {"prompt": "the", "max_tokens": 100, "response_format": _schema_format(FORCED_ENDLESS)}
    status, answer, _ = tiny_server.http("POST", "/v1/completions", body)
    assert status == 400 and "Too many items" in answer["error"]["message"]
    status, events, _ = tiny_server.http("POST", "/v1/completions", {**body, "stream": True})
    assert status == 200 and "Too many items" in events and events.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("response_format, message", [
    (_schema_format({"type": "foo"}), "Invalid type: foo"),
    (_schema_format({"type": "object", "properties": {"a": {"not": {}}}}), "Unimplemented keys"),
    (_schema_format({"$ref": "#/nowhere"}), "does not exist"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "needs 'json_schema'"),
    ({"type": "json_schema"}, "needs 'json_schema'"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}, "needs 'json_schema'"),
    ({"type": "xml"}, "text, json_object or json_schema"),
    ("json", "must be an object"),
])
def test_bad_response_formats_are_400(tiny_server, response_format, message):
    with pytest.raises(openai.BadRequestError, match=message) as e:
        tiny_server.client().chat.completions.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "the"}],
                                                     extra_body={"response_format": response_format})
    assert e.value.param == "response_format"
    status, body, _ = tiny_server.http("POST", "/v1/completions", {"prompt": "the", "response_format": response_format})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "response_format" and message in body["error"]["message"]


# --- SmolLM2 through the openai client ------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_server(smollm2_q4_0, tmp_path_factory):
    s = Server(smollm2_q4_0, tmp_path_factory.mktemp("structured-serve"), "--parallel", "4", "--ctx-size", "1024",
               "--api-key", KEY)
    yield s
    assert "Traceback" not in s.stop()


def test_smollm2_answers_20_schemas_streamed_and_not(smollm2_server):
    """Each schema's prompt answered greedily, streamed and not, four at a time (so schemas
    share the engine's steps): every answer parses, validates and ends by itself, and the
    streamed answer is the same text."""
    client = smollm2_server.client()

    def answer(case_stream):
        case, stream = case_stream
        return _ask(client, stream, model="smollm2-q4_0", messages=[{"role": "user", "content": case["prompt"]}],
                    temperature=0, max_tokens=400, response_format=_schema_format(case["schema"], case["name"]))

    jobs = [(case, stream) for case in CASES for stream in (False, True)]
    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(((c["name"], s) for c, s in jobs), pool.map(answer, jobs)))
    for case in CASES:
        text, finish = answers[case["name"], False]
        assert finish == "stop", (case["name"], text)
        valid(text, case["schema"])
        assert answers[case["name"], True] == (text, finish), case["name"]


def test_smollm2_served_schema_equals_the_command_line(smollm2_server, smollm2_q4_0, tmp_path):
    case = next(c for c in CASES if c["name"] == "person")
    (tmp_path / "schema.json").write_text(json.dumps(case["schema"]))
    r = run_cli("generate", smollm2_q4_0, "-p", case["prompt"], "--temp", "0", "-n", "100",
                "--json-schema", tmp_path / "schema.json", check=True)
    text, _ = _ask(smollm2_server.client(), False, model="smollm2-q4_0", temperature=0, max_tokens=100,
                   messages=[{"role": "user", "content": case["prompt"]}], response_format=_schema_format(case["schema"]))
    assert r.stdout == text + "\n"
    assert valid(text, case["schema"])["age"] <= 120
