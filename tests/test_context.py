"""The default context: the trained one, capped by what fits in memory beside the weights; and
the user told whenever the context cuts something."""
from __future__ import annotations

import os

import pytest

import llmrun
from llmrun import model as model_module

from conftest import make_hf_checkpoint, run_cli


def test_default_context_is_capped_by_memory(tmp_path, monkeypatch):
    make_hf_checkpoint(tmp_path / "long", max_position_embeddings=131072)
    m = llmrun.load(tmp_path / "long")
    per_position = model_module.kv_bytes_per_position(m.config)
    assert per_position == 2 * 2 * 2 * 16 * 4  # k and v, 2 layers, 2 kv heads of 16, float32
    weights = os.path.getsize(m.file.path)
    monkeypatch.setattr(model_module, "available_memory", lambda: 1 << 40)
    assert m.default_context() == (131072, None)
    monkeypatch.setattr(model_module, "available_memory", lambda: weights + 64 * per_position * 1024)
    n, why = m.default_context()
    assert n == 32 * 1024 and why.startswith("32768 of the model's 131072 positions: what fits in half of the")
    assert m.new_cache().n_ctx == n
    assert m.default_context(slots=4)[0] == 8 * 1024 and "for 4 slots" in m.default_context(slots=4)[1]
    monkeypatch.setattr(model_module, "available_memory", lambda: weights)  # no room at all: the floor
    assert m.default_context()[0] == model_module.MIN_DEFAULT_CONTEXT
    monkeypatch.setattr(model_module, "available_memory", lambda: None)  # cannot tell: the trained context
    assert m.default_context() == (131072, None)


def test_chat_says_when_the_context_is_capped(tmp_path):
    # 16M positions of 4 KiB: a 64 GiB cache, more than half of this machine's memory
    make_hf_checkpoint(tmp_path / "huge", max_position_embeddings=1 << 24, num_hidden_layers=8, num_key_value_heads=4)
    free = model_module.available_memory()
    if free is None or free // 2 > 64 << 30:
        pytest.skip("this machine holds a 64 GiB KV cache in half its free memory")
    r = run_cli("chat", tmp_path / "huge", "-n", "4", "--temp", "0", input="hello\n", check=True)
    assert "[context: " in r.stderr and "of the model's 16777216 positions" in r.stderr, r.stderr


def test_generate_says_when_the_context_cut_the_reply(tmp_path):
    make_hf_checkpoint(tmp_path / "short", max_position_embeddings=24)
    r = run_cli("generate", tmp_path / "short", "-p", "the theme", "--raw", "-n", "64", "--temp", "0", check=True)
    assert "[the reply was cut after" in r.stderr and "the context of 24 positions is full" in r.stderr, r.stderr
    r = run_cli("generate", tmp_path / "short", "-p", "the theme", "--raw", "-n", "4", "--temp", "0", check=True)
    assert "cut" not in r.stderr
