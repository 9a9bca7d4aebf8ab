"""The `llmrun` command line, run as a user would: output, exit codes, one-line errors."""
from __future__ import annotations

import pytest

import llmrun

from conftest import make_hf_checkpoint, run_cli


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    make_hf_checkpoint(d / "hf")
    out = d / "tiny.llmr"
    r = run_cli("convert", d / "hf", out, "--type", "q8_0", check=True)
    assert "wrote" in r.stderr
    return d, out


def _one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmrun: error:"), r.stderr
    return lines[0]


def test_convert_writes_loadable_model(converted):
    _, out = converted
    m = llmrun.load(out)
    assert m.file.metadata["provenance"]["type"] == "q8_0"


def test_generate_streams_text(converted):
    _, out = converted
    r = run_cli("generate", out, "-p", "the", "-n", "8", "--temp", "0", "--raw", check=True)
    m = llmrun.load(out)
    want = "".join(x.text for x in llmrun.generate(m, "the", max_tokens=8, temperature=0))
    assert r.stdout == want + "\n"
    assert "tok/s" in r.stderr


def test_generate_uses_the_chat_template_unless_raw(converted):
    from llmrun.chat import chat_ids
    _, out = converted
    m = llmrun.load(out)
    ids = chat_ids(m, [{"role": "user", "content": "the"}])
    assert ids[:2] == [0, m.tokenizer.encode("user", add_special_tokens=False)[0]]  # <s>user... from the template
    want = "".join(x.text for x in llmrun.generate(m, ids, max_tokens=8, temperature=0))
    r = run_cli("generate", out, "-p", "the", "-n", "8", "--temp", "0", check=True)
    assert r.stdout == want + "\n"


def test_generate_stop_string(converted):
    _, out = converted
    m = llmrun.load(out)
    free = "".join(x.text for x in llmrun.generate(m, "the", max_tokens=12, temperature=0))
    stop = free[3:5]
    r = run_cli("generate", out, "-p", "the", "-n", "12", "--temp", "0", "--raw", "--stop", "zzz", "--stop", stop,
                check=True)
    assert r.stdout == free[:free.find(stop)] + "\n"
    assert "finish: stop" in r.stderr


def test_tokenize(converted):
    _, out = converted
    r = run_cli("tokenize", out, "the theme", check=True)
    assert [int(x) for x in r.stdout.split()] == llmrun.load(out).tokenizer.encode("the theme")


def test_info_and_verify(converted):
    _, out = converted
    r = run_cli("info", out, "--verify", check=True)
    from llmrun import cpu
    assert "2 layers" in r.stdout and "q8_0" in r.stdout and f"kernels:     {cpu.isa()}, " in r.stdout
    assert "checksums match" in r.stdout


def test_info_verify_reports_corruption(converted, tmp_path):
    _, out = converted
    raw = bytearray(out.read_bytes())
    raw[-100] ^= 0xFF  # a byte of the last tensor
    bad = tmp_path / "bad.llmr"
    bad.write_bytes(bytes(raw))
    line = _one_line_error(run_cli("info", bad, "--verify"))
    assert "checksum mismatch" in line


@pytest.mark.parametrize("args, message", [
    (["info", "/nonexistent.llmr"], "does not exist"),
    (["generate", "{bad}", "-p", "x"], "bad magic"),
    (["convert", "/nonexistent-dir", "{tmp}/x.llmr"], "does not exist"),
    (["convert", "{hf}", "{tmp}/x.llmr", "--type", "q5_9"], "unknown tensor type"),
    (["generate", "{model}", "-p", "a b c d e f g h i j k l m n o p", "-n", "4", "--ctx", "16"], "context"),
])
def test_user_errors_are_one_line(converted, tmp_path, args, message):
    d, out = converted
    (tmp_path / "bad.llmr").write_bytes(b"this is not a model file at all" * 10)
    subst = {"{bad}": str(tmp_path / "bad.llmr"), "{hf}": str(d / "hf"), "{model}": str(out)}
    args = [subst.get(a, a).replace("{tmp}", str(tmp_path)) for a in args]
    assert message in _one_line_error(run_cli(*args))


def test_bad_flag_is_a_usage_error(converted):
    _, out = converted
    r = run_cli("generate", out, "--no-such-flag")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "No such option" in r.stderr


@pytest.mark.parametrize("env, message", [({"LLMRUN_ISA": "vax"}, "LLMRUN_ISA=vax"),
                                          ({"LLMRUN_THREADS": "lots"}, "LLMRUN_THREADS=lots")])
def test_bad_environment_settings_are_one_line(converted, env, message):
    _, out = converted
    assert message in _one_line_error(run_cli("info", out, env=env))
