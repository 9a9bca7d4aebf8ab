"""`llmrun quantize`: the per-tensor policy, its overrides, requantisation, and the record it leaves."""
from __future__ import annotations

import subprocess

import pytest

import llmrun
from llmrun.errors import ConvertError
from llmrun.format import LlmrFile
from llmrun.models import convert, quantize
from llmrun.quant import Policy, qtype

from conftest import ASSETS, SHARED, make_hf_checkpoint, run_cli


@pytest.fixture(scope="module", params=["tied", "untied"])
def tiny(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"quantize-{request.param}")
    make_hf_checkpoint(d / "hf", tied=request.param == "tied")
    convert(str(d / "hf"), str(d / "f32.llmr"), "f32")
    return d


def types(path) -> dict:
    return {n: i.type.name for n, i in LlmrFile(path).tensors.items()}


def test_default_policy_equals_converting_with_a_type(tiny):
    """From an f32 .llmr, the same types and the same bytes as `convert --type q4_0` from the checkpoint."""
    quantize(str(tiny / "f32.llmr"), str(tiny / "q.llmr"), Policy(qtype("q4_0")))
    convert(str(tiny / "hf"), str(tiny / "c.llmr"), "q4_0")
    q, c = LlmrFile(tiny / "q.llmr"), LlmrFile(tiny / "c.llmr")
    assert types(tiny / "q.llmr") == types(tiny / "c.llmr")
    for name in q.tensors:
        assert q.tensor(name).data.tobytes() == c.tensor(name).data.tobytes(), name
    assert types(tiny / "q.llmr")["layers.0.w_down"] == "q8_0" and types(tiny / "q.llmr")["layers.0.wq"] == "q4_0"


def test_overrides(tiny):
    policy = Policy(qtype("q4_0"), output_type=qtype("f16"), embedding_type=qtype("q8_0"),
                    tensor_types=((r"layers\.1\.", qtype("q4_1")), ("w_down", qtype("q4_0"))), pure=True)
    meta = quantize(str(tiny / "f32.llmr"), str(tiny / "o.llmr"), policy)
    t = types(tiny / "o.llmr")
    tied = "output" not in t
    assert t["tok_embeddings"] == ("f16" if tied else "q8_0")  # a tied table is the output head
    assert tied or t["output"] == "f16"
    assert {t[f"layers.1.{n}"] for n in ("wq", "wk", "wv", "w_down")} == {"q4_1"}  # the first match wins
    assert t["layers.0.w_down"] == t["layers.0.wk"] == "q4_0"  # pure: no 8-bit keep
    assert t["layers.0.attn_norm"] == "f32"
    assert meta["provenance"]["policy"]["pure"] is True
    assert meta["provenance"]["policy"]["tensor_types"] == [[r"layers\.1\.", "q4_1"], ["w_down", "q4_0"]]
    assert llmrun.load(tiny / "o.llmr").logits([1, 2, 3]).shape[0] == 3


def test_requantizing_is_refused_unless_allowed(tiny):
    quantize(str(tiny / "f32.llmr"), str(tiny / "q8.llmr"), Policy(qtype("q8_0"), pure=True))
    with pytest.raises(ConvertError, match="already q8_0.*--allow-requantize"):
        quantize(str(tiny / "q8.llmr"), str(tiny / "q4.llmr"), Policy(qtype("q4_0")))
    assert not (tiny / "q4.llmr").exists()
    quantize(str(tiny / "q8.llmr"), str(tiny / "q4.llmr"), Policy(qtype("q4_0"), allow_requantize=True))
    assert types(tiny / "q4.llmr")["layers.0.wq"] == "q4_0"
    # a tensor whose type stays is copied block for block, requantisation allowed or not
    quantize(str(tiny / "q8.llmr"), str(tiny / "same.llmr"), Policy(qtype("q8_0"), pure=True))
    a, b = LlmrFile(tiny / "q8.llmr"), LlmrFile(tiny / "same.llmr")
    assert all(a.tensor(n).data.tobytes() == b.tensor(n).data.tobytes() for n in a.tensors)


def test_cli_names_the_output_after_the_scheme_and_checks_its_flags(tiny):
    r = run_cli("quantize", tiny / "f32.llmr", "--type", "q4_1", "--pure", check=True)
    assert (tiny / "f32-q4_1-pure.llmr").exists() and "f32-q4_1-pure.llmr" in r.stdout
    r = run_cli("quantize", tiny / "hf", tiny / "from-hf.llmr", "--type", "q8_0", "--tensor-type", "wq=q4_0", check=True)
    assert types(tiny / "from-hf.llmr")["layers.0.wq"] == "q4_0"
    for args, message in [(["--type", "q5_0"], "unknown tensor type"), (["--type", "q4_0", "--tensor-type", "wq"],
                                                                           "REGEX=TYPE"),
                          (["--type", "q4_0", "--tensor-type", "(=q8_0"], "regular expression")]:
        r = run_cli("quantize", tiny / "f32.llmr", tiny / "bad.llmr", *args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tiny / "bad.llmr").exists()


def test_a_quantised_gguf_is_not_requantised_silently(tmp_path):
    if not (SHARED / "tools" / "fetch_smollm2_gguf.sh").exists():
        pytest.skip(f"{SHARED} is absent")
    gguf = subprocess.run(["bash", str(SHARED / "tools" / "fetch_smollm2_gguf.sh"), str(ASSETS)],
                          capture_output=True, text=True, check=True).stdout.strip()
    r = run_cli("quantize", gguf, tmp_path / "q4_0.llmr", "--type", "q4_0")
    assert r.returncode == 1 and "is already q" in r.stderr and "--allow-requantize" in r.stderr
    assert not (tmp_path / "q4_0.llmr").exists()
