"""`llmrun export`: .llmr -> GGUF (lossless) and -> Hugging Face checkpoints.

The round trip is the check: export, import the export with llmrun's own importers (which
tests/test_gguf.py and tests/test_families.py hold to llama.cpp's files and transformers'
logits), and the model must come back as it was: the same bytes in every tensor, the same config,
the same token ids and the same logits. The GGUF side is also held to a file llama.cpp's
converter wrote (the real SmolLM2's, tensor for tensor) and to gguf-py's reader."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import llmrun
from llmrun.format import LlmrFile
from llmrun.models import convert, export, quantize
from llmrun.quant import Policy, qtype
from llmrun.quant.types import TYPES

from conftest import FAMILY_CHECKPOINTS, SHARED, make_hf_checkpoint, run_cli

TEXTS = ["Hello world!", "the quick brown fox", "  two  spaces\nand a line", "<s>special</s> tokens", "1234567 ünïcödé"]
IDS = [0, 5, 17, 200, 3, 99, 1, 250, 42, 7, 8, 300]
# SmolLM2's shape in small: tied embeddings, grouped-query attention, byte-level BPE; rows of 256
# so that the k-quants get whole super-blocks; norm_eps a float32 (GGUF stores float32)
TINY = dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=float(np.float32(1e-5)))
STORED = list(TYPES)  # every type llmrun stores, from the type table


def assert_same_model(a, b, exact_config=True):
    """b (the export imported again) holds a's tensors byte for byte, its config, its token ids
    and its logits."""
    A, B = LlmrFile(a), LlmrFile(b)
    if exact_config:
        assert A.metadata["config"] == B.metadata["config"]
    else:
        from llmrun.config import ModelConfig, differences
        assert not differences(ModelConfig.from_dict(A.metadata["config"]), ModelConfig.from_dict(B.metadata["config"]))
    assert sorted(A.tensors) == sorted(B.tensors)
    for name, info in A.tensors.items():
        other = B.tensors[name]
        assert (info.type, info.shape, info.layout) == (other.type, other.shape, other.layout), name
        assert np.array_equal(A.tensor(name).data, B.tensor(name).data), f"{name} differs"
    ta, tb = A.metadata["tokenizer"], B.metadata["tokenizer"]
    assert (ta["kind"], ta["bos_id"], ta["eos_ids"]) == (tb["kind"], tb["bos_id"], tb["eos_ids"])
    assert bool(ta.get("add_bos")) == bool(tb.get("add_bos")) and bool(ta.get("add_eos")) == bool(tb.get("add_eos"))
    assert A.metadata.get("chat_template") == B.metadata.get("chat_template")
    ma, mb = llmrun.load(a), llmrun.load(b)
    for text in TEXTS:
        assert ma.tokenizer.encode(text) == mb.tokenizer.encode(text), text
    la, lb = ma.logits(IDS[:6]), mb.logits(IDS[:6])
    if exact_config:
        assert np.array_equal(la, lb)
    else:  # float settings read back to float32's precision
        assert np.abs(la - lb).max() <= 1e-5 * np.abs(la).max()


def round_trip(src, tmp_path, name="m"):
    gguf_path, back = tmp_path / f"{name}.gguf", tmp_path / f"{name}-back.llmr"
    export(str(src), str(gguf_path))
    convert(str(gguf_path), str(back))
    return gguf_path, back


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SmolLM2-like checkpoint as f32 .llmr, and its directory."""
    d = tmp_path_factory.mktemp("tiny")
    make_hf_checkpoint(d / "hf", **TINY)
    convert(str(d / "hf"), str(d / "f32.llmr"), "f32")
    return d


@pytest.mark.parametrize("type", STORED)
def test_gguf_round_trip_every_stored_type(tiny, tmp_path, type):
    src = tmp_path / f"{type}.llmr"
    quantize(str(tiny / "f32.llmr"), str(src), Policy(qtype(type), pure=True))
    assert {i.type.name for n, i in LlmrFile(src).tensors.items() if len(i.shape) == 2} == {type}
    gguf_path, back = round_trip(src, tmp_path)
    assert_same_model(src, back)
    # gguf-py (the ecosystem's reader) sees GGML's types and llama.cpp's shapes
    import gguf
    r = gguf.GGUFReader(str(gguf_path))
    t = {x.name: x for x in r.tensors}
    assert t["blk.0.attn_q.weight"].tensor_type.name.lower() == type
    assert list(t["blk.0.ffn_down.weight"].shape) == [256, 256] and list(t["token_embd.weight"].shape) == [256, 320]
    assert "output.weight" not in t  # tied, as llama.cpp's converter leaves it


def test_gguf_round_trip_default_policy_and_calibrated_q4_0(tiny, tmp_path):
    from llmrun.quant.calibrate import importance_of_text
    src = tmp_path / "q4_0.llmr"
    quantize(str(tiny / "f32.llmr"), str(src), Policy(qtype("q4_0")))
    assert_same_model(src, round_trip(src, tmp_path, "default")[1])
    stats, n = importance_of_text(llmrun.load(tiny / "f32.llmr"), " ".join(TEXTS) * 20, 2, n_ctx=64)
    cal = tmp_path / "q4_0-cal.llmr"
    quantize(str(tiny / "f32.llmr"), str(cal), Policy(qtype("q4_0"), importance=stats, calibration="test"))
    assert not np.array_equal(LlmrFile(cal).tensor("layers.0.wq").data, LlmrFile(src).tensor("layers.0.wq").data)
    assert_same_model(cal, round_trip(cal, tmp_path, "cal")[1])
    meta = json.loads(__import__("gguf").GGUFReader(str(tmp_path / "cal.gguf")).fields["llmrun.provenance"]
                      .contents())
    assert meta["policy"]["calibration"] == "test" and meta["exported_by"].startswith("llmrun")


@pytest.mark.parametrize("family", sorted(FAMILY_CHECKPOINTS))
def test_gguf_round_trip_each_family_or_one_line_refusal(family, tmp_path):
    """Each family's tiny checkpoint comes back whole, or is refused where GGUF cannot say it as
    llama.cpp reads it (a sliding window on the `llama` architecture; Gemma 3 layers other than
    five windowed to one global, or its attention scale not llama.cpp's; SmolLM3 without RoPE in
    other layers than every fourth)."""
    kw = dict(FAMILY_CHECKPOINTS[family], rms_norm_eps=float(np.float32(1e-5)))
    make_hf_checkpoint(tmp_path / "hf", **kw)
    src = tmp_path / "f32.llmr"
    convert(str(tmp_path / "hf"), str(src), "f32")
    refused = {"gemma3": "attn_scale", "mistral-window": "sliding_window", "smollm3": "no_rope_layers (1,)"}
    if family in refused:
        r = run_cli("export", src, tmp_path / "x.gguf")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and refused[family] in r.stderr, r.stderr
        assert os.listdir(tmp_path) == ["hf", "f32.llmr"] or set(os.listdir(tmp_path)) == {"hf", "f32.llmr"}
        return
    assert_same_model(src, round_trip(src, tmp_path)[1], exact_config=family != "granite")


def test_fused_phi3_needs_one_type(tmp_path):
    make_hf_checkpoint(tmp_path / "hf", **FAMILY_CHECKPOINTS["phi3"])
    src = tmp_path / "q4_0.llmr"
    convert(str(tmp_path / "hf"), str(src), "q4_0")  # wq q4_0 beside wk, wv q8_0
    r = run_cli("export", src, tmp_path / "x.gguf")
    assert r.returncode == 1 and "attn_qkv.weight fuses wq, wk, wv" in r.stderr and "--pure" in r.stderr
    assert not any(n.endswith((".gguf", ".part")) for n in os.listdir(tmp_path))


@pytest.fixture(scope="module")
def family_ggufs(tmp_path_factory):
    """Each family's shared checkpoint as llama.cpp's converter writes its GGUF (tests/family_gguf.py)."""
    import subprocess
    import sys
    if not (SHARED / "tools" / "make_family_checkpoint.py").exists():
        pytest.skip(f"{SHARED} is absent (it exists on the team's machines and in CI)")
    from family_gguf import FAMILIES, write_family_gguf
    root, out = tmp_path_factory.mktemp("family-ggufs"), {}
    for family in FAMILIES:
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_family_checkpoint.py"), family,
                        str(root / family)], capture_output=True, check=True)
        out[family] = root / f"{family}.gguf"
        write_family_gguf(root / family, out[family], family)
    return out


@pytest.mark.parametrize("family", ["qwen3", "smollm3", "phi3", "phi4mini", "gemma3", "mistral", "granite"])
def test_llama_cpp_family_gguf_comes_back_tensor_for_tensor(family, family_ggufs, tmp_path):
    """GGUF (as llama.cpp writes it) -> .llmr -> GGUF: the tensors are the original file's,
    byte for byte (q/k rows permuted back, Phi-3's fused tensors fused again), and the .llmr
    imported from the export is the first one."""
    from llmrun.models.gguf_file import GGUFFile
    first = tmp_path / "first.llmr"
    convert(str(family_ggufs[family]), str(first))
    gguf_path, back = round_trip(first, tmp_path)
    assert_same_model(first, back)
    orig, ours = GGUFFile(str(family_ggufs[family])), GGUFFile(str(gguf_path))
    assert set(orig.tensors) == set(ours.tensors)
    for name in orig.tensors:
        assert np.array_equal(orig.data(name), ours.data(name)), name
    arch = orig.metadata["general.architecture"]
    for key, value in orig.metadata.items():
        if key.startswith(f"{arch}.") and key != f"{arch}.rope.scaling.original_context_length":
            assert ours.metadata.get(key) == value, key


def test_real_smollm2_gguf_tensors_and_tokenizer(tmp_path):
    """The real SmolLM2 Q4_1 GGUF -> .llmr -> GGUF: every tensor is the original file's, the
    tokenizer arrays and special ids are llama.cpp's converter's."""
    from conftest import ASSETS
    from llmrun.models.gguf_file import GGUFFile
    src = ASSETS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not src.exists():
        pytest.skip(f"{src} is not fetched (../shared/tools/fetch_smollm2_gguf.sh)")
    first = tmp_path / "first.llmr"
    convert(str(src), str(first))
    gguf_path, back = round_trip(first, tmp_path)
    orig, ours = GGUFFile(str(src)), GGUFFile(str(gguf_path))
    assert all(np.array_equal(orig.data(n), ours.data(n)) for n in orig.tensors) and orig.tensors.keys() == ours.tensors.keys()
    for key in ("tokens", "token_type", "merges", "pre", "model", "bos_token_id", "eos_token_id", "add_bos_token"):
        assert ours.metadata[f"tokenizer.ggml.{key}"] == orig.metadata[f"tokenizer.ggml.{key}"], key
    assert ours.metadata["tokenizer.chat_template"] == orig.metadata["tokenizer.chat_template"]
    assert ours.metadata["general.file_type"] == orig.metadata["general.file_type"]
    assert bytes(LlmrFile(first).tokenizer_blob) == bytes(LlmrFile(back).tokenizer_blob)


def test_sentencepiece_tokenizer_round_trip(tmp_path):
    """A sentencepiece BPE vocabulary (LLaMA 2's) comes back as the same model proto; a unigram
    one (llama.cpp would tokenise it differently) is refused in one line."""
    spm = SHARED / "tokenizers" / "llama-spm-32000.model"
    make_hf_checkpoint(tmp_path / "uni", tokenizer="spm", **TINY)
    convert(str(tmp_path / "uni"), str(tmp_path / "uni.llmr"), "f32")
    r = run_cli("export", tmp_path / "uni.llmr", tmp_path / "uni.gguf")
    assert r.returncode == 1 and "unigram" in r.stderr and r.stderr.count("\n") == 1
    if not spm.exists():
        pytest.skip(f"{spm} is absent")
    d = tmp_path / "spm"
    make_hf_checkpoint(d, tokenizer="spm", vocab_size=32000, **{**TINY, "hidden_size": 64, "intermediate_size": 64})
    (d / "tokenizer.model").write_bytes(spm.read_bytes())
    convert(str(d), str(tmp_path / "spm.llmr"), "q8_0")
    _, back = round_trip(tmp_path / "spm.llmr", tmp_path)
    assert_same_model(tmp_path / "spm.llmr", back)
    again = tmp_path / "again.llmr"
    convert(str(round_trip(back, tmp_path, "again")[0]), str(again))
    assert bytes(LlmrFile(back).tokenizer_blob) == bytes(LlmrFile(again).tokenizer_blob)


def test_cli_export_errors_are_one_line_and_leave_nothing(tiny, tmp_path):
    src = tiny / "f32.llmr"
    for args, said in [(("--format", "onnx"), "unknown export format 'onnx'"),
                       (("--dtype", "f16"), "--dtype is for --format hf"),
                       (("--format", "hf", "--dtype", "q4_0"), "--dtype 'q4_0'")]:
        r = run_cli("export", src, tmp_path / "out", *args)
        assert r.returncode == 1 and said in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run_cli("export", src, tmp_path / "no" / "such" / "x.gguf")
    assert r.returncode == 1 and "no such folder" in r.stderr
    r = run_cli("export", tiny / "hf" / "config.json", tmp_path / "x.gguf")
    assert r.returncode == 1 and r.stderr.startswith("llmrun: error:") and r.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []
    r = run_cli("export", src, tmp_path / "ok.gguf", check=True)
    assert "wrote" in r.stderr and os.listdir(tmp_path) == ["ok.gguf"]



def _unshare_works() -> bool:
    import shutil
    import subprocess
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (a private mount of a tiny tmpfs)")
@pytest.mark.parametrize("format", ["gguf", "hf"])
def test_disk_full_is_one_line_and_leaves_nothing(tiny, tmp_path, format):
    """An export onto a 128 KiB file system (the tiny model takes about 360 KiB): one line, and
    neither the output nor a temporary file is left there."""
    import subprocess
    import sys
    full = tmp_path / "full"
    full.mkdir()
    out = full / ("m.gguf" if format == "gguf" else "m-hf")
    args = ["--format", "hf", "--dtype", "f32"] if format == "hf" else []
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=128k tmpfs "{full}" && exec "$0" "$@"',
                        sys.executable, "-c", "from llmrun.cli.main import main; main()", "export",
                        str(tiny / "f32.llmr"), str(out), *args], capture_output=True, text=True)
    lines = [line for line in r.stderr.splitlines() if line.strip() and "exporting" not in line]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1] == f"llmrun: error: {out}: no space left on the device (nothing was left behind)", r.stderr
    assert os.listdir(full) == []  # the mount is gone with its namespace: what is left is what the disk holds

# --- Hugging Face checkpoints ------------------------------------------------------------------------

def hf_round_trip(src, tmp_path, dtype="f32", name="hf", **kw):
    from llmrun.models.hf_export import export as export_hf
    out, back = tmp_path / name, tmp_path / f"{name}-back.llmr"
    export_hf(str(src), str(out), dtype, **kw)
    convert(str(out), str(back), dtype)
    return out, back


def assert_values_exact(a, b):
    """b's tensors hold exactly a's values (a's blocks dequantised), and the same config."""
    from llmrun.config import ModelConfig, differences
    A, B = LlmrFile(a), LlmrFile(b)
    assert not differences(ModelConfig.from_dict(A.metadata["config"]), ModelConfig.from_dict(B.metadata["config"]))
    assert sorted(A.tensors) == sorted(B.tensors)
    for name in A.tensors:
        assert np.array_equal(A.tensor(name).numpy(), B.tensor(name).numpy()), name


@pytest.mark.parametrize("type", ["f32", "q8_0", "q4_1", "q4_k", "q6_k"])
def test_hf_export_dequantises_exactly(tiny, tmp_path, type):
    src = tiny / "f32.llmr"
    if type != "f32":
        src = tmp_path / f"{type}.llmr"
        quantize(str(tiny / "f32.llmr"), str(src), Policy(qtype(type), pure=True))
    _, back = hf_round_trip(src, tmp_path)
    assert_values_exact(src, back)
    if type == "f32":  # the same bytes, so llmrun's own f32 logits exactly
        assert np.array_equal(llmrun.load(src).logits(IDS), llmrun.load(back).logits(IDS))


def quantize_rows(x, dtype):
    from llmrun.quant import dequantize
    from llmrun.quant.reference import quantize as q
    return dequantize(q(x.reshape(1, -1), qtype(dtype)), qtype(dtype), x.size).reshape(x.shape)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_hf_export_in_a_half_type_keeps_its_bits(tiny, tmp_path, dtype):
    src = tmp_path / f"{dtype}.llmr"
    quantize(str(tiny / "f32.llmr"), str(src), Policy(qtype(dtype)))
    out, back = hf_round_trip(src, tmp_path, dtype)
    A, B = LlmrFile(src), LlmrFile(back)
    for name, info in A.tensors.items():  # matrices: their bits; norms (f32 here) rounded as a checkpoint holds them
        if len(info.shape) == 2:
            assert np.array_equal(A.tensor(name).data, B.tensor(name).data), name
        else:
            assert np.array_equal(quantize_rows(A.tensor(name).numpy(), dtype), B.tensor(name).numpy()), name
    header = json.loads((out / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (out / "model.safetensors").read_bytes()[:8], "little")])
    assert header["model.layers.0.self_attn.q_proj.weight"]["dtype"] == dtype.upper()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == {"bf16": "bfloat16", "f16": "float16"}[dtype]


@pytest.mark.parametrize("family", sorted(FAMILY_CHECKPOINTS))
def test_hf_export_each_family(family, tmp_path):
    """Every family's checkpoint comes back: its config keys (windows, Gemma's scalars and norm
    offsets, Granite's multipliers, Phi-3's fused tensors and partial RoPE), values and logits."""
    make_hf_checkpoint(tmp_path / "src", **FAMILY_CHECKPOINTS[family])
    src = tmp_path / "f32.llmr"
    convert(str(tmp_path / "src"), str(src), "f32")
    out, back = hf_round_trip(src, tmp_path)
    assert_same_model(src, back)
    from safetensors.numpy import load_file
    theirs, ours = load_file(str(tmp_path / "src" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(theirs) == sorted(ours)
    for name in theirs:  # the original checkpoint's tensors, fused and offset as it stored them
        want = theirs[name]
        if family == "gemma3" and name.endswith("norm.weight"):  # the import's w + 1 (float32) taken back
            want = (want + np.float32(1)) - np.float32(1)
        assert np.array_equal(want, ours[name]), name


def test_hf_export_shards_with_an_index(tiny, tmp_path):
    out, back = hf_round_trip(tiny / "f32.llmr", tmp_path, shard_bytes=1 << 20)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum((out / s).stat().st_size for s in shards) - sum(
        8 + int.from_bytes((out / s).read_bytes()[:8], "little") for s in shards)
    assert_same_model(tiny / "f32.llmr", back)


def test_real_smollm2_hf_export_is_the_reference_checkpoint(tmp_path, smollm2_hf):
    """SmolLM2's Q4_1 GGUF -> .llmr -> checkpoint: every tensor is the shared tool's exact
    dequantisation of the GGUF (../shared/tools/make_smollm2_hf.py, whose checkpoint transformers
    runs to the reference logits)."""
    from conftest import ASSETS
    from safetensors.numpy import load_file
    src = tmp_path / "q4_1.llmr"
    convert(str(ASSETS / "SmolLM2-135M-Instruct.Q4_1.gguf"), str(src))
    r = run_cli("export", src, tmp_path / "hf", "--format", "hf", "--dtype", "f32", check=True)
    assert "q4_1 x210" in r.stderr and "dequantised exactly" in r.stderr
    ref, ours = load_file(str(smollm2_hf["float32"] / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(ref) == sorted(ours)
    assert all(np.array_equal(ref[n], ours[n]) for n in ref)
    c = json.loads((tmp_path / "hf" / "config.json").read_text())
    ref_c = json.loads((smollm2_hf["float32"] / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id"):
        assert c[key] == ref_c[key], key
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == bytes(LlmrFile(src).tokenizer_blob)


def test_hf_export_loads_in_transformers(tiny, tmp_path):
    """transformers runs the export to llmrun's float32 logits (within 1e-4 of their scale)."""
    torch = pytest.importorskip("torch", reason="torch is not installed here: the round trip through llmrun's "
                                                "own HF importer (above) stands in")
    transformers = pytest.importorskip("transformers")
    for family in ("llama", *sorted(FAMILY_CHECKPOINTS)):
        d = tmp_path / family
        make_hf_checkpoint(d / "src", **(TINY if family == "llama" else FAMILY_CHECKPOINTS[family]))
        convert(str(d / "src"), str(d / "f32.llmr"), "f32")
        export(str(d / "f32.llmr"), str(d / "hf"), "hf", "f32")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(d / "hf"), torch_dtype=torch.float32)
        with torch.no_grad():
            theirs = model(torch.tensor([IDS])).logits[0].numpy()
        ours = llmrun.load(d / "f32.llmr").logits(IDS)
        assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(theirs).max(), family


def test_cli_hf_export_refuses_an_existing_folder(tiny, tmp_path):
    (tmp_path / "hf").mkdir()
    r = run_cli("export", tiny / "f32.llmr", tmp_path / "hf", "--format", "hf")
    assert r.returncode == 1 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == ["hf"] and os.listdir(tmp_path / "hf") == []


@pytest.mark.parametrize("vocab", ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2"])
def test_llama_cpp_vocabularies_come_back(vocab):
    """llama.cpp's test vocabularies (sentencepiece and byte-level BPE, four pre-tokenizers):
    GGUF -> our tokenizer -> GGUF keys -> our tokenizer gives the same blob, and the keys are
    the file's own tokens, types, merges and ids."""
    from llmrun.models.gguf_file import GGUFFile
    from llmrun.models.gguf_tokenizer import tokenizer_from_gguf, tokenizer_to_gguf
    path = SHARED / "tokenizers" / f"ggml-vocab-{vocab}.gguf"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    meta = GGUFFile(str(path)).metadata
    info, blob = tokenizer_from_gguf(meta)
    keys = tokenizer_to_gguf(info, blob, len(meta["tokenizer.ggml.tokens"]))
    again = tokenizer_from_gguf({f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    assert again == (info, blob)
    assert keys["tokens"] == meta["tokenizer.ggml.tokens"] and keys["model"] == meta["tokenizer.ggml.model"]
    if keys["model"] == "gpt2":
        assert keys["merges"] == meta["tokenizer.ggml.merges"]
    else:
        assert np.array_equal(np.float32(keys["scores"]), np.float32(meta["tokenizer.ggml.scores"]))


def test_convert_to_a_mix_requantises_a_quantised_gguf_only_when_asked(tiny, tmp_path):
    """convert's refusal names a flag convert has, and the flag lets the mix through."""
    src = tmp_path / "q8_0.llmr"
    quantize(str(tiny / "f32.llmr"), str(src), Policy(qtype("q8_0"), pure=True))
    gguf_path = tmp_path / "q8_0.gguf"
    export(str(src), str(gguf_path))
    out = tmp_path / "q4_k_m.llmr"
    r = run_cli("convert", gguf_path, out, "--type", "q4_k_m")
    assert r.returncode == 1 and "is already q8_0" in r.stderr and "--allow-requantize" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    r = run_cli("convert", gguf_path, out, "--type", "q4_k_m", "--allow-requantize")
    assert r.returncode == 0, r.stderr
    assert "q4_k" in {i.type.name for i in LlmrFile(out).tensors.values()}
