"""Bad input of every kind gets one clear line and loses nothing (docs/security.md): the
runtime-input table through the command line, configs out of bounds, chat templates that try
to run away, a full disk, and an interrupted conversion."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import make_hf_checkpoint, run_cli
from llmrun.errors import FormatError, LlmrunError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("hardening")
    make_hf_checkpoint(d / "hf", max_position_embeddings=32)
    run_cli("convert", d / "hf", d / "tiny.llmr", "--type", "q8_0", check=True)
    (d / "photos").mkdir()
    (d / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a model")
    (d / "notes.txt").write_text("this is not a model file at all\n" * 10)
    return d


def one_line_error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("llmrun: error:"), r.stderr
    return lines[0]


LONG = "word_" * 30  # 150 bytes: more tokens than the context holds
# (command line, exit code, what the one line must say). {m} is a tiny model whose context
# is 32 tokens, {d} the folder it is in. docs/security.md's table is this one.
BAD_INPUT = [
    ("generate {m} --raw -p " + LONG, 1, "shorten the prompt or raise the context size"),
    ("generate {m} -p hi -n 0", 2, "'--max-tokens'"),
    ("generate {m} -p hi -n -3", 2, "'--max-tokens'"),
    ("generate {m} -p hi --temp -0.5", 2, "'--temp'"),
    ("generate {m} -p hi --top-p 0", 2, "0.0 is not in (0, 1]"),
    ("generate {m} -p hi --top-p 1.5", 2, "1.5 is not in (0, 1]"),
    ("generate {m} -p hi --top-k -1", 2, "'--top-k'"),
    ("generate {m} -p hi --min-p 1", 2, "'--min-p'"),
    ("generate {m} -p hi --repeat-penalty 0", 2, "'--repeat-penalty'"),
    ("generate {m} -p hi --ctx 0", 2, "'--ctx'"),
    ("generate {m} -p hi --threads 0", 2, "'--threads'"),
    ("generate {m} -p hi --threads -2", 2, "'--threads'"),
    ("generate {m} -p hi --no-such-flag", 2, "No such option: --no-such-flag"),
    ("frobnicate", 2, "No such command 'frobnicate'"),
    ("convert {d}/hf {d}/x.llmr --type q5_9", 1, "unknown tensor type 'q5_9'"),
    ("quantize {m} {d}/y.llmr --type int3", 1, "unknown tensor type 'int3'"),
    ("quantize {m} {d}/y.llmr --type q8_0 --tensor-type wq", 2, "use REGEX=TYPE"),
    ("generate {d}/photos -p hi", 1, "is a directory but not a Hugging Face checkpoint"),
    ("generate {d}/notes.txt -p hi", 1, "not a .llmr file (bad magic)"),
    ("generate {d}/absent.llmr -p hi", 1, "does not exist"),
    ("convert {d}/hf {d}/no/such/dir/x.llmr", 1, "no/such/dir: no such folder to write into"),
    ("perplexity {m} -f {d}/absent.txt", 1, "cannot read"),
    ("info {m} --threads 3", 2, "No such option"),
]


@pytest.mark.parametrize("line, code, message", BAD_INPUT, ids=[c[0][:40] for c in BAD_INPUT])
def test_bad_input_is_one_line(tiny, line, code, message):
    args = [a.replace("{m}", str(tiny / "tiny.llmr")).replace("{d}", str(tiny)) for a in line.split()]
    r = run_cli(*args)
    assert r.returncode == code, r.stderr
    assert message in one_line_error(r)
    assert not (tiny / "x.llmr").exists() and not (tiny / "y.llmr").exists()


@pytest.mark.parametrize("env, message", [
    ({"LLMRUN_ISA": "neon" if os.uname().machine in ("x86_64", "AMD64") else "avx2"}, "LLMRUN_ISA="),
    ({"LLMRUN_ISA": "vax"}, "LLMRUN_ISA=vax: unknown kernel path"),
    ({"LLMRUN_THREADS": "0"}, "LLMRUN_THREADS=0"),
    ({"LLMRUN_THREADS": "lots"}, "LLMRUN_THREADS=lots")])
def test_bad_environment_is_one_line(tiny, env, message):
    r = run_cli("generate", tiny / "tiny.llmr", "-p", "hi", env=env)
    assert r.returncode == 1 and message in one_line_error(r)


def test_chat_set_refuses_values_out_of_range(tiny):
    """In the terminal chat, /set with a value out of range says so and keeps the old one."""
    import pexpect
    c = pexpect.spawn(sys.executable, ["-m", "llmrun.cli.main", "chat", str(tiny / "tiny.llmr"), "--temp", "0"],
                      encoding="utf-8", timeout=120, dimensions=(50, 200))
    try:
        c.expect_exact(">>> ")
        for command, need in (("/set top_p 0", "need 0 < top_p <= 1"), ("/set max_tokens 0", "need max_tokens >= 1"),
                              ("/set temp -1", "need temperature >= 0"), ("/set top_p 0.5", "[top_p = 0.5]")):
            c.sendline(command)
            c.expect_exact(">>> ")
            assert need in c.before and "Traceback" not in c.before, c.before
    finally:
        c.close(force=True)


# --- configs out of bounds ---------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("n_heads", 0), ("n_kv_heads", 0), ("n_kv_heads", 3), ("dim", -64), ("vocab_size", 1 << 40), ("n_layers", "2"),
    ("head_dim", 7), ("ffn_dim", 1.5), ("max_seq_len", 0), ("max_seq_len", 1 << 40), ("norm_eps", -1e-5),
    ("rope_theta", float("inf")), ("n_layers", True), ("tie_embeddings", "yes"),
    ("rope_scaling", {"type": "linear", "factor": 0}), ("rope_scaling", {"type": "yarn"}),
    ("rope_scaling", {"type": "factors", "factors": [1.0]}), ("rope_scaling", [1, 2])])
def test_config_out_of_bounds_is_a_format_error(tiny, tmp_path, key, value):
    """A .llmr whose metadata (checksum and all) says something no model is: refused at load,
    before any allocation sized by it."""
    from llmrun import format as fmt
    from llmrun.model import Model
    f = fmt.LlmrFile(tiny / "tiny.llmr")
    meta = dict(f.metadata)
    meta["config"] = {**meta["config"], key: value}
    tensors = [fmt.PendingTensor(n, i.type, i.shape, lambda n=n: [f.tensor(n).rows()], i.layout)
               for n, i in f.tensors.items()]
    fmt.write(str(tmp_path / "bad.llmr"), meta, bytes(f.tokenizer_blob), tensors)
    with pytest.raises(FormatError, match="bad model config"):
        Model(str(tmp_path / "bad.llmr"))


def test_a_cache_past_what_the_machine_maps_is_a_context_error():
    """The largest config the bounds allow asks for 2^63 bytes of KV cache at its full context:
    one line naming --ctx, not a MemoryError."""
    from llmrun.config import LIMITS, ModelConfig
    from llmrun.errors import ContextError
    from llmrun.model import KVCache
    big = {k: hi for k, (lo, hi) in LIMITS.items()}
    cfg = ModelConfig(**big, norm_eps=1e-5, rope_theta=1e4, tie_embeddings=True)
    with pytest.raises(ContextError, match="--ctx"):
        KVCache(cfg, cfg.max_seq_len)


# --- chat templates ----------------------------------------------------------------------------

RUNAWAY_TEMPLATES = {
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "huge repeat": "{{ 'x' * 1000000000 }}",
    "huge power": "{{ 9 ** 9 ** 9 }}",
    "huge method argument": "{{ 'x'.ljust(1000000000) }}",
    "huge filter argument": "{{ 'x' | center(1000000000) }}",
    "huge format width": "{{ '%999999999d' | format(1) }}",
    "huge %-format": "{{ '%999999999d' % 1 }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "python internals": "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "mutation": "{{ messages.append(1) }}",
    "syntax": "{% for m in messages %}",
}


@pytest.mark.parametrize("name", RUNAWAY_TEMPLATES)
def test_runaway_templates_are_refused(name):
    from llmrun.chat import render_chat
    tok = SimpleNamespace(bos_id=None, eos_ids=[], decode=lambda ids: "")
    model = SimpleNamespace(chat_template=RUNAWAY_TEMPLATES[name], tokenizer=tok)
    start = time.monotonic()
    with pytest.raises(LlmrunError, match="chat template"):
        render_chat(model, [{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 30  # the 2 s deadline, with room for a slow machine


def test_ordinary_templates_still_render():
    from llmrun.chat import render_chat
    tok = SimpleNamespace(bos_id=1, eos_ids=[2], decode=lambda ids: {1: "<s>", 2: "</s>"}[ids[0]])
    t = ("{{ bos_token }}{% for m in messages %}{{ '%s: %s' % (m.role, m.content) }}{{ '-' * 3 }}"
         "{{ m.content | center(9) }}{{ m.content | trim }}{% endfor %}{{ range(3) | list | length }}")
    model = SimpleNamespace(chat_template=t, tokenizer=tok)
    assert render_chat(model, [{"role": "user", "content": "hi"}]) == "<s>user: hi---    hi   hi3"
    # a message may hold anything, %-formats with huge widths included: only templates are bounded
    said = "100%9999999999d sure"
    assert render_chat(model, [{"role": "user", "content": said}]).count(said) == 3


# --- nothing lost ------------------------------------------------------------------------------

def _leftovers(d) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".part")]


def _file_size_limit(limit: int):
    def apply():
        # Past RLIMIT_FSIZE a write fails with EFBIG, instead of SIGXFSZ killing the process:
        # the way a full disk (ENOSPC) looks to the program.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("command", ["convert", "quantize"])
def test_full_disk_is_one_line_and_leaves_nothing(tiny, tmp_path, command):
    src = tiny / "hf" if command == "convert" else tiny / "tiny.llmr"
    out = tmp_path / "out.llmr"
    out.write_bytes(b"the previous file")  # must survive a failed overwrite
    r = subprocess.run([sys.executable, "-m", "llmrun.cli.main", command, str(src), str(out), "--type", "q8_0"],
                       capture_output=True, text=True, preexec_fn=_file_size_limit(20000), timeout=300)
    assert r.returncode == 1 and "File too large" in one_line_error(r)
    assert out.read_bytes() == b"the previous file" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_convert_leaves_nothing(tmp_path, sig, code):
    """Ctrl-C (or a `kill`) in the middle of writing: exit 130 (143), no partial file under either name."""
    make_hf_checkpoint(tmp_path / "hf", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=4, vocab_size=8192)
    out = tmp_path / "out" / "model.llmr"
    out.parent.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "llmrun.cli.main", "convert", str(tmp_path / "hf"), str(out),
                          "--type", "q4_0"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _leftovers(out.parent) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert p.poll() is None, "the conversion ended before it could be interrupted"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code and "Traceback" not in err, err
    assert list(out.parent.iterdir()) == []


def test_killed_conversion_is_never_used_from_the_cache(tiny, tmp_path):
    """A conversion into the model cache killed outright leaves at most a temporary file,
    which no later run takes for the model: it converts again."""
    env = {**os.environ, "LLMRUN_HOME": str(tmp_path / "home")}
    make_hf_checkpoint(tmp_path / "big", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=4, vocab_size=8192)
    p = subprocess.Popen([sys.executable, "-m", "llmrun.cli.main", "pull", str(tmp_path / "big")], env=env,
                         stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    cache = tmp_path / "home" / "converted"
    deadline = time.monotonic() + 120
    while not (cache.exists() and _leftovers(cache)) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert p.poll() is None, "the conversion ended before it could be killed"
    p.kill()
    p.wait()
    assert [f for f in os.listdir(cache) if f.endswith(".llmr")] == []
    r = subprocess.run([sys.executable, "-m", "llmrun.cli.main", "pull", str(tmp_path / "big")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "converting" in r.stderr, r.stderr
    assert os.path.exists(r.stdout.strip())
    # the killed run's temporary file stays until it is a day old; then a conversion removes it
    left = [cache / f for f in os.listdir(cache) if f.endswith(".part")]
    assert len(left) == 1
    os.utime(left[0], (time.time() - 2 * 24 * 3600,) * 2)
    make_hf_checkpoint(tmp_path / "other")
    subprocess.run([sys.executable, "-m", "llmrun.cli.main", "pull", str(tmp_path / "other")], env=env,
                   capture_output=True, text=True, timeout=300, check=True)
    assert not left[0].exists()


def test_chat_save_is_atomic(tiny, tmp_path, monkeypatch):
    """A /save that fails half-way keeps the previous file whole."""
    import llmrun
    from llmrun.chat import ChatSession
    m = llmrun.load(tiny / "tiny.llmr")
    s = ChatSession(m)
    s.messages = [{"role": "user", "content": "hi"}]
    path = tmp_path / "conv.json"
    s.save(str(path))
    before = path.read_bytes()
    s.messages = [{"role": "user", "content": "x" * 100000}]

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        s.save(str(path))
    assert path.read_bytes() == before and json.loads(before)["messages"][0]["content"] == "hi"
    assert _leftovers(tmp_path) == []


def test_interrupt_as_the_temporary_file_appears_leaves_nothing(tmp_path, monkeypatch):
    """The narrowest window: a Ctrl-C handled just after the temporary file is created, before
    open() returns. (The whole-process test above lands there now and then, by timing.)"""
    import builtins
    import llmrun.atomic

    def open_then_interrupt(name, *args, **kwargs):
        builtins.open(name, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(llmrun.atomic, "open", open_then_interrupt, raising=False)
    (tmp_path / "out.llmr").write_bytes(b"the previous file")
    with pytest.raises(KeyboardInterrupt):
        with llmrun.atomic.atomic_file(str(tmp_path / "out.llmr")) as f:
            f.write(b"new")
    assert (tmp_path / "out.llmr").read_bytes() == b"the previous file" and _leftovers(tmp_path) == []
