"""`llmrun chat`: the terminal loop around llmrun.chat.ChatSession.

Interactive on a terminal (line editing and history through readline, pastes and \"\"\" blocks
as one message, slash commands, Ctrl-C stops a reply); one message per input line otherwise,
with only the replies on stdout.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from dataclasses import fields, replace

from llmrun.chat import ChatSession, Settings
from llmrun.errors import LlmrunError, SettingError
from llmrun.sampling import Sampler

HELP = """commands:
  /help               this list
  /clear              start a new conversation
  /system TEXT        set the system message (and start again)
  /set NAME VALUE     temp, top_k, top_p, min_p, repeat_penalty, repeat_window, seed, max_tokens
  /save FILE          save the conversation and settings as JSON
  /load FILE          load a saved conversation
  /regen              drop the last reply and answer again
  /stats              speeds and context use of the last reply
  /think on|off       let a reasoning model think first, or not (its template's enable_thinking)
  /exit               leave (also Ctrl-D, or Ctrl-C twice within a second)
\"\"\" opens and closes a multi-line message; Ctrl-C stops a reply and keeps what it said, and at
the prompt clears the line."""
SETTING_NAMES = {"temp": "temperature", **{f.name: f.name for f in fields(Settings)}}
DOUBLE_INTERRUPT = 1.0  # seconds: a second Ctrl-C this soon after the first exits


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stats_line(session: ChatSession) -> str:
    s = session.stats
    return (f"[prompt {s.evaluated} tokens at {s.prompt_tps:.1f} tok/s | reply {s.generated} tokens at "
            f"{s.generation_tps:.1f} tok/s | first token after {s.ttft:.2f} s | context {s.context_used}/{s.context_size}]")


DIM, UNDIM = "\x1b[2m", "\x1b[22m"


def stream_reply(session: ChatSession, replies, dim_reasoning: bool = False) -> None:
    """Print a reply as it comes (a reasoning model's thinking dimmed, with `dim_reasoning`);
    warn when the context is nearly full."""
    split = None
    for r in replies:
        if dim_reasoning and split is None:
            split = session.reasoning_split() or False  # the prompt is rendered by the first record
        if split:
            thought, said = split.feed(r.text)
            if r.finish_reason:
                more = split.flush()
                thought, said = thought + more[0], said + more[1]
            sys.stdout.write((f"{DIM}{thought}{UNDIM}" if thought else "") + said)
        else:
            sys.stdout.write(r.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    s = session.stats
    if s.finish_reason == "length" and s.context_used >= s.context_size:
        _err("[the context is full: the reply was cut; the next turn drops the oldest turns"
             if session.overflow == "shift" else "[the context is full: /clear to go on]")
    elif s.context_size - s.context_used < s.context_size // 10:
        _err(f"[context nearly full: {s.context_used}/{s.context_size} tokens used]")
    if session.dropped_turns:
        _err(f"[{session.dropped_turns} oldest turns were dropped to fit the context]")
        session.dropped_turns = 0


def run(session: ChatSession, verbose: bool = False, single: bool = False) -> int:
    if not sys.stdin.isatty():
        return _run_piped(session, single)
    # At a terminal Ctrl-C is the user's, even where whatever started us ignores SIGINT (a
    # background job of a non-interactive shell inherits SIG_IGN, and Python then never raises
    # KeyboardInterrupt: the reply could not be stopped)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return _Repl(session, verbose).loop()


def _run_piped(session: ChatSession, single: bool) -> int:
    """Scriptable: each input line (or the whole input) is a message; stdout gets the replies."""
    messages = [sys.stdin.read()] if single else sys.stdin.read().splitlines()
    for text in messages:
        if text.strip():
            stream_reply(session, session.say(text))
    return 0


class _Repl:
    def __init__(self, session: ChatSession, verbose: bool):
        self.session, self.verbose = session, verbose
        self.last_interrupt = 0.0
        self._setup_readline()

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input still works
            self.history = None
            return
        from llmrun.store import home
        self.history = os.path.join(home(), "chat_history")
        try:
            readline.read_history_file(self.history)
        except OSError:
            pass
        readline.set_history_length(1000)

    def _save_history(self) -> None:
        if self.history:
            import readline
            try:
                os.makedirs(os.path.dirname(self.history), exist_ok=True)
                readline.write_history_file(self.history)
            except OSError:
                pass

    def _interrupted(self) -> bool:
        """True if this Ctrl-C follows another within DOUBLE_INTERRUPT seconds."""
        now = time.monotonic()
        double = now - self.last_interrupt < DOUBLE_INTERRUPT
        self.last_interrupt = now
        return double

    def read_message(self) -> str | None:
        """One message: a line, a paste of several lines, or a \"\"\" block. None at Ctrl-D."""
        try:
            line = input(">>> ")
        except EOFError:
            return None
        if line.strip() == '"""' or (line.startswith('"""') and not line.rstrip().endswith('"""', 3)):
            lines = [line[3:]] if line.strip() != '"""' else []
            while True:
                try:
                    more = input("... ")
                except EOFError:
                    break
                if more.rstrip().endswith('"""'):
                    lines.append(more.rstrip()[:-3])
                    break
                lines.append(more)
            return "\n".join(lines).strip("\n")
        lines = [line]
        # A paste arrives faster than anyone types: lines already waiting belong to this message.
        while select.select([sys.stdin], [], [], 0.05)[0]:
            try:
                lines.append(input(""))
            except EOFError:
                break
        return "\n".join(lines)

    def loop(self) -> int:
        _err("llmrun chat: /help for commands, Ctrl-D or /exit to leave")
        try:
            while True:
                try:
                    text = self.read_message()
                except KeyboardInterrupt:
                    # A Ctrl-C meant to stop a reply often lands on the prompt (a short reply
                    # ends first): it clears the line and ends nothing; a second one soon
                    # after is a request to leave.
                    print()
                    if self._interrupted():
                        return 130
                    _err("(the line is cleared: Ctrl-D or /exit to leave, or Ctrl-C again within a second)")
                    continue
                if text is None:
                    print()
                    return 0
                if not text.strip():
                    continue
                try:
                    if text.startswith("/"):
                        if self.command(text) == "exit":
                            return 0
                    else:
                        self.reply(self.session.say(text))
                except (LlmrunError, ValueError) as e:
                    _err(f"llmrun: error: {e}")
                except KeyboardInterrupt:  # during a reply: stop it, keep the conversation
                    print()
                    _err("[stopped]")
                    if self._interrupted():
                        return 130
        finally:
            self._save_history()

    def reply(self, replies) -> None:
        stream_reply(self.session, replies, dim_reasoning=True)
        if self.verbose:
            _err(stats_line(self.session))

    def command(self, text: str) -> str | None:
        name, _, arg = text.strip().partition(" ")
        arg = arg.strip()
        s = self.session
        if name in ("/exit", "/quit", "/bye"):
            return "exit"
        if name == "/help":
            _err(HELP)
        elif name == "/clear":
            s.clear()
            _err("[new conversation]")
        elif name == "/system":
            s.system = arg or None
            s.clear()
            _err("[system message set; new conversation]" if arg else "[system message removed; new conversation]")
        elif name == "/set":
            key, _, value = arg.partition(" ")
            field = SETTING_NAMES.get(key)
            if field is None or not value:
                raise LlmrunError(f"/set NAME VALUE, NAME one of: {', '.join(sorted(SETTING_NAMES))}")
            current = getattr(s.settings, field)
            try:
                parsed = None if value == "none" and field == "seed" else (
                    int(value) if isinstance(current, int) or field == "seed" else float(value))
            except ValueError:
                raise LlmrunError(f"{key}: {value!r} is not a number") from None
            before = s.settings
            s.settings = replace(before, **{field: parsed})
            try:
                Sampler(**s.settings.sampling())  # refuses what is out of range, in one line
                if s.settings.max_tokens < 1:
                    raise SettingError("need max_tokens >= 1")
            except SettingError:
                s.settings = before
                raise
            _err(f"[{field} = {parsed}]")
        elif name == "/save":
            if not arg:
                raise LlmrunError("/save FILE")
            s.save(arg)
            _err(f"[saved {len(s.messages)} messages to {arg}]")
        elif name == "/load":
            if not arg:
                raise LlmrunError("/load FILE")
            s.load(arg)
            _err(f"[loaded {len(s.messages)} messages from {arg}]")
            for m in s.messages:
                print(f"{m['role']}: {m['content']}")
        elif name == "/regen":
            self.reply(s.regenerate())
        elif name == "/stats":
            _err(stats_line(s))
        elif name == "/think":
            if arg not in ("on", "off"):
                raise LlmrunError("/think on or /think off")
            if not s.reasoning_split():
                raise LlmrunError("this model's chat template has no thinking to switch")
            s.template_kwargs = {**(s.template_kwargs or {}), "enable_thinking": arg == "on"}
            _err(f"[thinking {arg}]")
        else:
            raise LlmrunError(f"unknown command {name}; /help lists them")
        return None

