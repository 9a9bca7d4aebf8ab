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
    from llmrun.backends import cpu
    assert "2 layers" in r.stdout and "q8_0" in r.stdout and f"kernels:     {cpu.isa()}, " in r.stdout
    assert (f"threads, {cpu.prefetch()} prefetch" in r.stdout) == (cpu.prefetch() is not None)
    assert "checksums match" in r.stdout


def test_info_verify_reports_corruption(converted, tmp_path):
    _, out = converted
    raw = bytearray(out.read_bytes())
    f = llmrun.load(out).file
    first = min(f.tensors.values(), key=lambda t: t.offset)
    raw[f.data_offset + first.offset + first.nbytes // 2] ^= 0x01  # one bit of the first tensor's data
    raw[-100] ^= 0xFF  # a byte of the last tensor
    bad = tmp_path / "bad.llmr"
    bad.write_bytes(bytes(raw))
    line = _one_line_error(run_cli("info", bad, "--verify"))
    assert f"checksum mismatch in 2 tensors, the first {first.name}" in line


def test_q6_k_from_the_command_line(tmp_path):
    """`--type q6_k` (a super-block type: this checkpoint's rows are whole super-blocks of 256)
    for convert and quantize alike, the same bytes either way; `llmrun info` names the type."""
    from llmrun.quant import qtype
    make_hf_checkpoint(tmp_path / "hf", hidden_size=256, intermediate_size=512)
    run_cli("convert", tmp_path / "hf", tmp_path / "c.llmr", "--type", "q6_k", check=True)
    run_cli("convert", tmp_path / "hf", tmp_path / "f32.llmr", "--type", "f32", check=True)
    run_cli("quantize", tmp_path / "f32.llmr", tmp_path / "q.llmr", "--type", "q6_k", check=True)
    r = run_cli("info", tmp_path / "q.llmr", "--tensors", check=True)
    # 7 matrices in each of 2 layers and the tied table: `q6_k` is the mix, whose output head (here
    # the embedding table too) is q6_k, as in llama-quantize's Q6_K
    assert "q6_k x15" in r.stdout
    c, q = llmrun.load(tmp_path / "c.llmr").file, llmrun.load(tmp_path / "q.llmr").file
    assert c.tensors["layers.1.w_down"].type is qtype("q6_k")
    assert all(c.tensor(n).data.tobytes() == q.tensor(n).data.tobytes() for n in c.tensors)


@pytest.mark.parametrize("mix,base", [("q3_k_m", "q3_k"), ("q2_k", "q2_k")])
def test_q3_k_m_and_q2_k_mixes_from_the_command_line(tmp_path, mix, base):
    """The low-bit mixes write (256-wide rows: whole super-blocks): the base type on wq, llama-
    quantize's types elsewhere (quant/mixes.py), each matrix the reference quantiser's bytes for
    the f32 weights, and the model runs."""
    import numpy as np
    from llmrun.quant import qtype, reference
    make_hf_checkpoint(tmp_path / "hf", hidden_size=256, intermediate_size=512)
    run_cli("convert", tmp_path / "hf", tmp_path / "f32.llmr", "--type", "f32", check=True)
    run_cli("quantize", tmp_path / "f32.llmr", tmp_path / "q.llmr", "--type", mix, check=True)
    r = run_cli("info", tmp_path / "q.llmr", "--tensors", check=True)
    assert f"{base} x" in r.stdout
    f32, q = llmrun.load(tmp_path / "f32.llmr").file, llmrun.load(tmp_path / "q.llmr").file
    for name in ("layers.0.wq", "layers.1.w_up"):
        t = q.tensors[name].type
        assert t is qtype(base), name
        assert q.tensor(name).rows().tobytes() == reference.quantize(f32.tensor(name).numpy(), t).tobytes(), name
    logits = llmrun.load(tmp_path / "q.llmr").logits([1, 2, 3])
    assert np.isfinite(logits).all()


def test_type_help_comes_from_the_type_table_without_loading_numpy():
    """`--type`'s help lists quant/types.py's stored types; the table loads without numpy (or the
    kernels), so the command line starts as fast as before."""
    import subprocess
    import sys
    from llmrun.quant.types import names
    code = ("import sys, llmrun.cli.main; "
            "assert 'numpy' not in sys.modules and 'llmrun._kernels' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert names() == "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k, q3_k, q4_k, q5_k or q6_k"
    r = run_cli("quantize", "--help", check=True, env={"COLUMNS": "200"})  # wide enough not to wrap
    assert names() in r.stdout
