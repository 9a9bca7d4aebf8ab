"""The k-quant mixes (quant/mixes.py) against llama-quantize's own choices.

tests/data/llama_quantize_mixes.json holds, for each file, the type llama-quantize (llama.cpp as
vendored by llama-cpp-python 0.3.36) gave every matrix: SmolLM2-135M in all six mixes (width 576,
tied, GQA 3: most rows are not whole super-blocks), a LLaMA-3.2-1B-shape Q4_K_M (tied, GQA 4),
an untied 24-layer model without GQA in Q2_K, Q3_K_M and Q4_K_M, and a tied 8-layer one with
GQA 4 in Q2_K (see tests/data/README.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrun.quant import F16, Q4_0, Q4_K, Q5_0, Q6_K, Q8_0, TYPES
from llmrun.quant.mixes import MIXES, fit, missing_types, mix_type, more_bits
from llmrun.quant.policy import Policy, target

FILES = json.loads((Path(__file__).parent / "data" / "llama_quantize_mixes.json").read_text())


@pytest.mark.parametrize("key", sorted(FILES))
def test_every_tensor_as_llama_quantize(key):
    f = FILES[key]
    mix = MIXES[f["mix"]]
    got = {name: mix_type(mix, name, shape, f["n_layers"], f["gqa"], f["tied"]).name
           for name, (shape, _) in f["tensors"].items()}
    want = {name: t for name, (_, t) in f["tensors"].items()}
    assert got == want
    assert len(set(want.values())) >= 2  # a mix, not one type: the rules were exercised


def test_the_files_reach_every_rule():
    # the fixture is only a reference if it covers the branches: GQA on and off, tied and not,
    # rows that fit super-blocks and rows that fall back
    seen = {(f["mix"], f["gqa"] >= 4, f["tied"]) for f in FILES.values()}
    assert ("q2_k", True, True) in seen and ("q2_k", False, False) in seen
    assert ("q4_k_m", False, False) in seen
    fallbacks = {t for f in FILES.values() for _, t in f["tensors"].values()}
    assert {"q5_0", "q8_0", "q4_0", "q5_1"} <= fallbacks


def test_more_bits_is_an_eighth_each_end_and_every_third_between():
    assert [i for i in range(16) if more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]


def test_fallbacks():
    assert fit(Q4_K, 576) is Q5_0 and fit(Q4_K, 512) is Q4_K
    assert fit(Q6_K, 576) is Q8_0
    assert fit(Q4_0, 48) is F16  # a 32-element type has nothing smaller to give way to


@pytest.mark.parametrize("name", sorted(MIXES))
def test_mix_needs_stored_types(name):
    mix = MIXES[name]
    missing = missing_types(mix)
    if missing:  # one clear line naming what is missing
        with pytest.raises(ValueError, match=f"{name} needs {missing[0]}"):
            target(name)
    else:
        p = target(name)
        assert p.mix is mix and p.name == name and p.type.name == mix.base
        assert all(t in TYPES for t in mix.types)


def test_plain_type_names_are_not_mixes():
    p = target("q4_0")
    assert p.mix is None and p.type is Q4_0 and p.name == "q4_0"
    with pytest.raises(ValueError):
        target("q4_k_x")
