"""`llmrun chat`: templates, the KV cache across turns, and the real loop in a pseudo-terminal."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

import llmrun
from llmrun.chat import ChatSession, Settings, render_chat
from llmrun.errors import LlmrunError
from llmrun.models import convert

from conftest import ASSETS, SHARED, make_hf_checkpoint, run_cli

needs_shared = pytest.mark.skipif(not (SHARED / "reference").exists(),
                                  reason="real-model tests need ../shared and the registry")
GREEDY = Settings(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct from its Q4_1 GGUF, imported as it is."""
    if not (SHARED / "reference").exists():
        pytest.skip("real-model tests need ../shared and the registry")
    import subprocess
    gguf = subprocess.run(["bash", str(SHARED / "tools" / "fetch_smollm2_gguf.sh"), str(ASSETS)],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path_factory.mktemp("chat") / "smollm2.llmr"
    convert(gguf, str(out))
    return out


# --- templates ---------------------------------------------------------------------------------

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@needs_shared
@pytest.mark.parametrize("messages, want", [
    # Written out by hand from the template's text (../shared/models/.../chat_template.jinja).
    ([{"role": "user", "content": "Hi"}],
     SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye\nnow"}],
     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
     "Hello!<|im_end|>\n<|im_start|>user\nBye\nnow<|im_end|>\n<|im_start|>assistant\n"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
     SYSTEM + "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
     "<|im_start|>assistant\n"),
])
def test_smollm2_template_multi_turn(smollm2, messages, want):
    assert render_chat(llmrun.load(smollm2), messages) == want


def test_template_that_raises_shows_its_message(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    model = llmrun.load(tmp_path / "hf")
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x"
    with pytest.raises(LlmrunError, match="System role not supported"):
        render_chat(model, [{"role": "system", "content": "s"}], template=template)
    session = ChatSession(model, system="s", template=template, settings=GREEDY)
    with pytest.raises(LlmrunError, match="System role not supported"):
        list(session.say("hi"))
    assert session.messages == []  # the message that could not be sent is not kept


# --- the KV cache across turns -----------------------------------------------------------------

def _count_forwards(model):
    counted = []
    forward = model.forward

    def counting(tokens, cache, last_only=False):
        counted.append(len(tokens))
        return forward(tokens, cache, last_only)
    model.forward = counting
    return counted


@needs_shared
def test_each_turn_runs_only_its_new_tokens(smollm2):
    model = llmrun.load(smollm2)
    counted = _count_forwards(model)
    session = ChatSession(model, settings=GREEDY)
    per_turn = []
    for i, text in enumerate(["Name a colour.", "Name a fruit.", "Name an animal.", "Name a city."]):
        before = session.prompt_ids() if session.messages else []
        counted.clear()
        reply = list(session.say(text))
        prompt_run = counted[0]  # the first forward of a turn is its prompt
        assert prompt_run == session.stats.evaluated
        if i:
            # everything up to the end of the last reply was cached: only the new user turn runs
            new = len(session.prompt_ids()) - len(before)
            assert prompt_run <= new
        assert counted[1:] == [1] * (len(reply) - 1)  # then one forward per token but the last
        per_turn.append(prompt_run)
    assert per_turn[0] > 30 and max(per_turn[1:]) - min(per_turn[1:]) <= 3, per_turn  # flat, not growing


@needs_shared
def test_cached_turn_equals_fresh_evaluation(smollm2):
    model = llmrun.load(smollm2)
    a = ChatSession(model, settings=GREEDY)
    list(a.say("My name is Alice. Please remember it."))
    second = "".join(r.text for r in a.say("What is my name?"))
    assert "Alice" in second
    b = ChatSession(model, settings=GREEDY)  # the same conversation, evaluated from nothing
    b.messages = [dict(m) for m in a.messages[:-1]]
    assert "".join(r.text for r in b.regenerate()) == second
    assert a.stats.evaluated < 25 < 60 < b.stats.evaluated  # the cached turn ran a fraction of it


def test_context_overflow_shift_and_stop(tmp_path):
    make_hf_checkpoint(tmp_path / "hf", max_position_embeddings=512)
    model = llmrun.load(tmp_path / "hf")
    shift = ChatSession(model, n_ctx=128, settings=Settings(temperature=0, max_tokens=8))
    for i in range(12):
        list(shift.say(f"message {i} " * 3))
        assert shift.cache.n <= 128
    assert shift.messages[0]["content"] != "message 0 " * 3  # the oldest turns went
    assert shift.messages[-2]["content"] == "message 11 " * 3
    stop = ChatSession(model, n_ctx=128, overflow="stop", settings=Settings(temperature=0, max_tokens=8))
    with pytest.raises(llmrun.ContextError, match="no room"):
        for i in range(12):
            list(stop.say(f"message {i} " * 3))


def test_save_and_load_round_trip(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    model = llmrun.load(tmp_path / "hf")
    a = ChatSession(model, system="be kind", settings=Settings(temperature=0, max_tokens=6, top_k=7))
    list(a.say("the"))
    a.save(tmp_path / "conv.json")
    b = ChatSession(model)
    b.load(tmp_path / "conv.json")
    assert (b.system, b.messages, b.settings) == (a.system, a.messages, a.settings)
    (tmp_path / "bad.json").write_text('{"messages": [{"role": 1}]}')
    with pytest.raises(LlmrunError, match="not a saved conversation"):
        b.load(tmp_path / "bad.json")


# --- scripted use -------------------------------------------------------------------------------

def test_piped_chat_writes_only_replies(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    model = llmrun.load(tmp_path / "hf")
    session = ChatSession(model, settings=Settings(temperature=0, max_tokens=5))
    want = ["".join(r.text for r in session.say(t)) + "\n" for t in ("the", "them")]
    r = run_cli("chat", tmp_path / "hf", "--temp", "0", "-n", "5", input="the\nthem\n", check=True)
    assert r.stdout == "".join(want)
    single = run_cli("chat", tmp_path / "hf", "--temp", "0", "-n", "5", "--single", input="the\nthem\n", check=True)
    session.clear()
    assert single.stdout == "".join(r.text for r in session.say("the\nthem\n")) + "\n"


def test_generate_reads_the_prompt_from_stdin(tmp_path):
    make_hf_checkpoint(tmp_path / "hf")
    a = run_cli("generate", tmp_path / "hf", "-p", "-", "--raw", "--temp", "0", "-n", "6", input="the theme", check=True)
    b = run_cli("generate", tmp_path / "hf", "-p", "the theme", "--raw", "--temp", "0", "-n", "6", check=True)
    assert a.stdout == b.stdout


# --- the real loop in a pseudo-terminal ------------------------------------------------------------

@pytest.fixture
def terminal(smollm2, tmp_path):
    """Start `llmrun chat` on SmolLM2 in a pseudo-terminal; returns a function that starts one."""
    pexpect = pytest.importorskip("pexpect")
    started = []

    def start(*args, preexec_fn=None):
        env = {**os.environ, "LLMRUN_HOME": str(tmp_path / "home")}
        c = pexpect.spawn(sys.executable, ["-m", "llmrun.cli.main", "chat", str(smollm2), "--temp", "0", *args],
                          env=env, encoding="utf-8", timeout=120, dimensions=(50, 200), preexec_fn=preexec_fn)
        c.expect_exact(">>> ")
        started.append(c)
        return c

    yield start
    for c in started:
        c.close(force=True)


def _turn(c, text):
    """Send a message; return the reply text printed before the next prompt."""
    c.sendline(text)
    c.expect_exact(">>> ")
    out = c.before.replace("\r\n", "\n")
    return out.split("\n", 1)[1].strip() if "\n" in out else ""


def test_terminal_two_turns_refer_back(terminal):
    c = terminal("-n", "24")
    _turn(c, "My name is Alice. Please remember it.")
    assert "Alice" in _turn(c, "What is my name?")
    c.sendline("/exit")
    c.expect(pexpect_eof())
    c.close()
    assert c.exitstatus == 0


def pexpect_eof():
    import pexpect
    return pexpect.EOF


def test_terminal_ctrl_c_stops_a_reply_and_the_chat_goes_on(terminal, tmp_path):
    c = terminal("-n", "400")
    c.sendline("Write a very long story about a dragon and a knight.")
    c.expect_exact("Once")  # the reply has started streaming
    time.sleep(0.5)
    c.sendintr()
    c.expect_exact("[stopped]")
    c.expect_exact(">>> ")
    reply = _turn(c, "/set max_tokens 12")
    assert "max_tokens = 12" in reply
    assert _turn(c, "What is the capital of France?")  # the next turn works
    _turn(c, f"/save {tmp_path / 'conv.json'}")
    messages = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert messages[1]["role"] == "assistant" and messages[1]["content"].startswith("Once")  # kept, partial
    assert len(messages) == 4
    c.sendline("/exit")
    c.expect(pexpect_eof())
    c.close()
    assert c.exitstatus == 0


def test_terminal_sigterm_during_a_reply_ends_chat_and_keeps_its_history(terminal, tmp_path):
    """A `kill` is no Ctrl-C: chat does not go on to the next prompt; it leaves with 143 and its
    line history saved."""
    import signal
    c = terminal("-n", "400")
    c.sendline("Write a very long story about a dragon and a knight.")
    c.expect_exact("Once")
    time.sleep(0.5)
    c.kill(signal.SIGTERM)
    c.expect(pexpect_eof())
    c.close()
    assert c.exitstatus == 143 and "[stopped]" not in c.before
    assert "dragon and a knight" in (tmp_path / "home" / "chat_history").read_text()


def test_terminal_ctrl_c_works_when_started_with_sigint_ignored(terminal):
    """Started the way a script's background job is (SIGINT inherited as ignored), chat still
    takes Ctrl-C at the terminal: the reply stops and the prompt comes back."""
    import signal
    c = terminal("-n", "400", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    c.sendline("Write a very long story about a dragon and a knight.")
    c.expect_exact("Once")
    time.sleep(0.5)
    c.sendintr()
    c.expect_exact("[stopped]")
    c.expect_exact(">>> ")
    c.sendline("/exit")
    c.expect(pexpect_eof())
    c.close()
    assert c.exitstatus == 0


def test_terminal_ctrl_c_at_an_idle_prompt_ends_nothing(terminal, tmp_path):
    """A Ctrl-C at the prompt (as when it was meant for a reply that had just ended) clears the
    line and says how to leave; the conversation goes on; two within a second leave with 130."""
    c = terminal("-n", "12")
    _turn(c, "My name is Alice.")
    c.send("half a message")
    c.expect_exact("half a message")  # in readline's line before the interrupt comes
    time.sleep(0.5)
    c.sendintr()
    c.expect_exact("Ctrl-D or /exit to leave")
    c.expect_exact(">>> ")
    time.sleep(1.2)
    assert _turn(c, "What is the capital of France?")
    _turn(c, f"/save {tmp_path / 'conv.json'}")
    users = [m["content"] for m in json.loads((tmp_path / "conv.json").read_text())["messages"] if m["role"] == "user"]
    assert users == ["My name is Alice.", "What is the capital of France?"]  # nothing lost, nothing half-sent
    time.sleep(1.2)
    c.sendintr()
    c.expect_exact("Ctrl-D or /exit to leave")
    c.expect_exact(">>> ")  # back in the prompt: the second interrupt lands there, within the second
    c.sendintr()
    c.expect(pexpect_eof())
    c.close()
    assert c.exitstatus == 130


def test_terminal_save_load_gives_the_same_next_reply(terminal, tmp_path):
    c = terminal("-n", "16")
    _turn(c, "Name three colours.")
    _turn(c, f"/save {tmp_path / 'conv.json'}")
    straight = _turn(c, "Now name three animals.")
    c.sendline("/exit")
    d = terminal("-n", "16")
    _turn(d, f"/load {tmp_path / 'conv.json'}")
    assert _turn(d, "Now name three animals.") == straight
    _turn(d, "/clear")
    _turn(d, f"/save {tmp_path / 'cleared.json'}")
    assert json.loads((tmp_path / "cleared.json").read_text())["messages"] == []


def test_terminal_multi_line_paste_and_block_are_one_message(terminal, tmp_path):
    c = terminal("-n", "4")
    c.send("first line of a paste\nsecond line of a paste\n")
    c.expect_exact(">>> ")
    c.sendline('"""')
    c.sendline("a block")
    c.sendline("of lines")
    c.sendline('"""')
    c.expect_exact(">>> ")
    _turn(c, f"/save {tmp_path / 'conv.json'}")
    users = [m["content"] for m in json.loads((tmp_path / "conv.json").read_text())["messages"] if m["role"] == "user"]
    assert users == ["first line of a paste\nsecond line of a paste", "a block\nof lines"]


def test_terminal_second_ctrl_c_within_a_second_exits_130(terminal):
    c = terminal("-n", "400")
    c.sendline("Write a very long story about a dragon and a knight.")
    c.expect_exact("Once")
    c.sendintr()
    c.expect_exact("[stopped]")
    c.sendintr()
    c.expect(pexpect_eof())
    c.close()
    assert c.exitstatus == 130


def test_terminal_shows_thinking_dimmed_and_think_switches_it(terminal, tmp_path):
    """With a reasoning template (its generation prompt opens <think>, or with enable_thinking
    false gives an empty one), the reply's thinking is printed dimmed; /think off renders the
    template with enable_thinking false, so the reply is all content; /think on brings it back."""
    template = tmp_path / "thinking.jinja"
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% else %}<think>\n"
        "{% endif %}{% endif %}")
    c = terminal("-n", "8", "--chat-template", str(template))
    assert "\x1b[2m" in _turn(c, "What is the capital of France?")  # SmolLM2 never closes the think block
    assert "[thinking off]" in _turn(c, "/think off")
    assert "\x1b[2m" not in _turn(c, "And of Italy?")
    assert "[thinking on]" in _turn(c, "/think on")
    assert "\x1b[2m" in _turn(c, "And of Spain?")
    assert "/think on or /think off" in _turn(c, "/think maybe")


def test_think_needs_a_reasoning_template(terminal):
    c = terminal("-n", "4")
    assert "no thinking to switch" in _turn(c, "/think off")


def test_chat_flags_template_system_and_context_warnings(tmp_path):
    make_hf_checkpoint(tmp_path / "hf", max_position_embeddings=512)
    raising = tmp_path / "raising.jinja"
    raising.write_text("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}")
    r = run_cli("chat", tmp_path / "hf", "--chat-template", raising, "--system", "be brief", input="hi\n")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert lines[-1] == "llmrun: error: the chat template refused the conversation: no system messages"
    (tmp_path / "system.txt").write_text("be brief")
    assert run_cli("chat", tmp_path / "hf", "--system-file", tmp_path / "system.txt", "-n", "3", input="hi\n",
                   check=True).stdout
    many = "".join(f"message number {i}\n" for i in range(8))
    r = run_cli("chat", tmp_path / "hf", "--ctx", "96", "-n", "6", "--temp", "0", input=many, check=True)
    assert "oldest turns were dropped" in r.stderr or "context nearly full" in r.stderr, r.stderr
    r = run_cli("chat", tmp_path / "hf", "--ctx", "96", "-n", "6", "--context-overflow", "stop", input=many)
    assert r.returncode == 1 and "no room to answer" in r.stderr
