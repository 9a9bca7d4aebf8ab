"""`llmrun quantize`: the per-tensor policy, its overrides, requantisation, and the record it leaves."""
from __future__ import annotations

import subprocess

import numpy as np
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
    for args, message in [(["--type", "q7_k"], "unknown tensor type"), (["--type", "q4_0", "--tensor-type", "wq"],
                                                                           "REGEX=TYPE"),
                          (["--type", "q4_0", "--tensor-type", "(=q8_0"], "regular expression")]:
        r = run_cli("quantize", tiny / "f32.llmr", tiny / "bad.llmr", *args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tiny / "bad.llmr").exists()


def test_cli_quantizes_to_iq4_nl(tiny):
    """iq4_nl is a type like q4_0: the policy's 4-bit rules (4.5 bits per weight), the reference
    quantiser's bytes (llama.cpp's, tests/test_kquants.py), in the X16 layout, and it runs."""
    from llmrun.quant import IQ4_NL, quantize as ref_quantize
    from llmrun.quant.layout import X16
    run_cli("quantize", tiny / "f32.llmr", tiny / "iq4.llmr", "--type", "iq4_nl", check=True)
    t = types(tiny / "iq4.llmr")
    assert t["layers.0.wq"] == t["layers.1.w_up"] == "iq4_nl"
    assert t["layers.0.w_down"] == "q8_0" and t["layers.0.attn_norm"] == "f32"  # as q4_0's policy
    src, out = LlmrFile(tiny / "f32.llmr"), LlmrFile(tiny / "iq4.llmr")
    wq = out.tensor("layers.0.wq")
    assert wq.layout == X16
    assert wq.rows().tobytes() == ref_quantize(src.tensor("layers.0.wq").numpy(), IQ4_NL).tobytes()
    logits = llmrun.load(tiny / "iq4.llmr").logits([1, 2, 3])
    assert logits.shape[0] == 3 and np.isfinite(logits).all()
    # (the GPU backends run iq4_nl too: tests/test_webgpu.py and tests/test_cuda.py)


def test_a_quantised_gguf_is_not_requantised_silently(tmp_path):
    if not (SHARED / "tools" / "fetch_smollm2_gguf.sh").exists():
        pytest.skip(f"{SHARED} is absent")
    gguf = subprocess.run(["bash", str(SHARED / "tools" / "fetch_smollm2_gguf.sh"), str(ASSETS)],
                          capture_output=True, text=True, check=True).stdout.strip()
    r = run_cli("quantize", gguf, tmp_path / "q4_0.llmr", "--type", "q4_0")
    assert r.returncode == 1 and "is already q" in r.stderr and "--allow-requantize" in r.stderr
    assert not (tmp_path / "q4_0.llmr").exists()


# --- calibrated quantisers ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl"])
def test_weighted_quantizer_lowers_the_weighted_error_and_keeps_the_format(name):
    import numpy as np
    from llmrun.quant import reference as ref
    from llmrun.quant.calibrate import _K_VARIANTS, weighted_quantizer
    t = qtype(name)
    weighted = weighted_quantizer(t)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    importance = rng.uniform(0, 10, 512) ** 2  # a few columns matter much more
    cal, plain = weighted(x, importance), ref.quantize(x, t)
    assert cal.shape == plain.shape and cal.dtype == np.uint8

    def weighted_error(q, axis=None):  # per block of the type, or in all
        e = importance * (ref.dequantize(q, t, 512) - x) ** 2
        return e.reshape(64, -1, t.block_size).sum(axis=-1) if axis else float(e.sum())

    assert weighted_error(cal) < (0.9 if t.block_size == 32 else 0.95) * weighted_error(plain)
    if t in _K_VARIANTS:  # each block the best of variants that include the plain quantiser's
        assert (weighted_error(cal, axis=True) <= weighted_error(plain, axis=True)).all()
    zero = np.zeros((1, t.block_size), np.float32)
    np.testing.assert_array_equal(ref.dequantize(weighted(zero, np.ones(t.block_size)), t, t.block_size), zero)
    if name in ("q4_1", "q5_1"):  # a constant block is m exactly
        const = np.full((1, 32), 3.0, np.float32)
        np.testing.assert_array_equal(ref.dequantize(weighted(const, np.ones(32)), t, 32), const)


@pytest.mark.parametrize("name", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl"])
def test_calibrated_fits_in_c_are_the_references_bytes(name):
    """The calibrated quantiser runs these types' fits in C (kernels' quantize_k_fit): every
    variant of _K_VARIANTS, and llama.cpp's own fit, on rows with all-zero, constant, tiny,
    negative and heavy-tailed super-blocks, gives the numpy reference's bytes, with the importance
    and without."""
    from llmrun import _kernels
    from llmrun.quant.calibrate import _K_VARIANTS, fit_args
    t = qtype(name)
    reference, variants = _K_VARIANTS[t]
    plain = {"q2_k": {"rmin": -0.5, "rdelta": 0.1, "nstep": 15}, "q4_k": {"rmin": -1.0, "rdelta": 0.1, "nstep": 20},
             "q5_k": {"rmin": -0.5, "rdelta": 0.1, "nstep": 15}}.get(name, {})
    rng = np.random.default_rng(7)
    rows, n = 24, 768
    x = (rng.standard_normal((rows, n)) * rng.exponential(1.0, (rows, n))).astype(np.float32)
    x[1, :256] = 0
    x[2, 256:512] = 1.5
    x[3, 512:] *= np.float32(1e-12)
    x[4] = -np.abs(x[4])
    x[5] *= np.float32(1e-5)  # scales among f16's subnormals
    x[6, :32] = 0  # iq4_nl: one zero block beside live ones
    importance = rng.exponential(1.0, n).astype(np.float32)
    importance[:16] *= np.float32(1e-6)  # a sub-block whose values barely count
    size = t.block_size
    blocks = x.reshape(-1, size)
    for imp in (importance, np.ones(n, np.float32)):
        for fit in variants + [plain]:
            want = reference(blocks[:, None, :], (blocks.shape[0],),
                             importance=np.broadcast_to(imp, x.shape).reshape(-1, size), **fit).reshape(rows, -1)
            got = np.empty_like(want)
            _kernels.quantize_k_fit(got, x, t.id, imp, *fit_args(fit))
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {fit}")
    with pytest.raises(ValueError, match="importance"):
        _kernels.quantize_k_fit(np.empty_like(want), x, t.id, importance[:-1], 0.0, 0.0, 0, 0.0)
    with pytest.raises(ValueError, match="is not q2_k"):
        _kernels.quantize_k_fit(np.empty_like(want), x, qtype("q4_0").id, importance, 0.0, 0.0, 0, 0.0)


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q4_1", "q5_1"])
def test_calibrated_32_value_searches_in_c_are_the_references_bytes(name):
    """weighted_quantizer runs these types' searches in C (kernels' quantize_weighted): the bytes
    of the numpy reference (quantize_q4_0_weighted and its kin) on rows with all-zero, constant,
    tiny, negative and heavy-tailed blocks; wrong weights or a type without the search refused."""
    from llmrun import _kernels
    from llmrun.quant import calibrate
    t = qtype(name)
    reference = getattr(calibrate, f"quantize_{name}_weighted")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((40, 576)) * rng.exponential(1.0, (40, 576))).astype(np.float32)
    x[1, :32] = 0
    x[2, 32:64] = 2.5
    x[3] *= np.float32(1e-20)
    x[4, :64] = -np.abs(x[4, :64])
    x[5] *= np.float32(1e-5)  # scales among f16's subnormals
    x[6, :32] = 1e6  # a scale f16 cannot hold: no grid's error is finite
    for importance in (rng.uniform(0, 10, 576) ** 2, np.ones(576)):
        with np.errstate(over="ignore"):  # row 6's scales, as f16
            want = reference(x, importance)
        np.testing.assert_array_equal(calibrate.weighted_quantizer(t)(x, importance), want)
    out = np.empty((40, t.row_bytes(576)), np.uint8)
    with pytest.raises(ValueError, match="weights"):
        _kernels.quantize_weighted(out, x, t.id, np.ones(575))
    with pytest.raises(ValueError, match="not q4_0, q5_0, q4_1 or q5_1"):
        _kernels.quantize_weighted(out, x, qtype("q8_0").id, np.ones(576))


def test_no_calibrated_quantizer_for_q8_0_and_floats():
    from llmrun.quant.calibrate import weighted_quantizer
    assert all(weighted_quantizer(qtype(n)) is None for n in ("q8_0", "f16", "bf16", "f32"))


def test_importance_covers_every_matrix_input(tiny):
    import numpy as np
    from llmrun.quant.calibrate import importance
    model = llmrun.load(tiny / "f32.llmr")
    stats = importance(model, [[3, 4, 5, 6, 7], [8, 9, 10]])
    matrices = {n for n, i in model.file.tensors.items() if len(i.shape) == 2 and n != "tok_embeddings"}
    assert matrices <= set(stats)  # and the output head (the tied table, or `output`)
    for name, v in stats.items():
        assert v.shape == (model.file.tensors[name].shape[1],) and (v > 0).all() and np.isfinite(v).all()


def test_cli_calibrate_records_the_calibration_and_changes_the_4_bit_blocks(tiny, tmp_path):
    text = tmp_path / "cal.txt"
    text.write_text(" ".join(["the cat sat on the mat and the dog ran"] * 40))
    run_cli("quantize", tiny / "f32.llmr", tiny / "plain.llmr", "--type", "q4_0", check=True)
    r = run_cli("quantize", tiny / "f32.llmr", "--type", "q4_0", "--calibrate", text, "--calibrate-chunks", 2,
                check=True)
    out = tiny / "f32-q4_0-cal.llmr"
    assert out.exists() and "f32-q4_0-cal.llmr" in r.stdout
    cal, plain = LlmrFile(out), LlmrFile(tiny / "plain.llmr")
    assert "cal.txt" in cal.metadata["provenance"]["policy"]["calibration"]
    assert types(out) == types(tiny / "plain.llmr")  # the same size
    assert cal.tensor("layers.0.wq").data.tobytes() != plain.tensor("layers.0.wq").data.tobytes()
    assert cal.tensor("layers.0.w_down").data.tobytes() == plain.tensor("layers.0.w_down").data.tobytes()  # q8_0
    r = run_cli("quantize", tiny / "f32.llmr", tmp_path / "x.llmr", "--type", "q4_0", "--calibrate", tmp_path / "no.txt")
    assert r.returncode == 1 and "cannot read" in r.stderr and not (tmp_path / "x.llmr").exists()


def test_the_lane_searches_give_the_same_bytes_without_vector_types(tmp_path):
    """The k-quant searches run eight sub-blocks side by side as GCC/Clang vectors, or one at a
    time on plain floats where the compiler has no vector types (LLMR_ONE_LANE builds that here),
    with AVX2 / AVX-512 clones where GCC makes them (LLMR_NO_CLONES: the baseline build alone):
    tests/lanes/quantize_rows.c built the three ways gives the module's bytes (which the tests above
    hold to the numpy reference) for the plain quantisers, and the same bytes as each other for
    every type's calibrated fits and a calibrated choice, on rows with zero, constant, tiny and
    heavy-tailed blocks."""
    import shutil
    from pathlib import Path

    from llmrun import _kernels
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/lanes/quantize_rows.c")
    root = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(256 * 40) * rng.exponential(1.0, 256 * 40)).astype(np.float32)
    x[:256] = 0
    x[256:512] = 1.5
    x[512:768] *= np.float32(1e-12)
    x[768:1024] = -np.abs(x[768:1024])
    x[1024:1280] *= np.float32(1e-5)
    x[1280:1296] = 0  # one zero sub-block among live ones
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    outputs = []
    for defines in ([], ["-DLLMR_ONE_LANE"], ["-DLLMR_NO_CLONES"]):
        exe = tmp_path / f"quantize_rows{''.join(defines)}"
        cmd = [cc, "-O2", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
               *defines, "-I", str(root / "kernels/include"), str(root / "tests/lanes/quantize_rows.c"),
               str(root / "kernels/cpu/quants_ref.c"), str(root / "kernels/cpu/types.c"), "-lm", "-o", str(exe)]
        build = subprocess.run(cmd, capture_output=True, text=True)
        assert build.returncode == 0, f"build failed:\n{' '.join(cmd)}\n{build.stderr}"
        subprocess.run([str(exe), str(tmp_path / "x.f32"), str(tmp_path / "out")], check=True, timeout=120)
        outputs.append((tmp_path / "out").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    want = []
    for name in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl"):
        t = qtype(name)
        out = np.empty((1, t.row_bytes(x.size)), np.uint8)
        _kernels.quantize(out, x[None], t.id)
        want.append(out.tobytes())
    plain = b"".join(want)
    assert outputs[0][:len(plain)] == plain
    fitted = ("q2_k", "q3_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_nl", "q4_k")
    assert len(outputs[0]) == len(plain) + sum(qtype(name).row_bytes(x.size) for name in fitted)


@pytest.mark.parametrize("name", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl"])
def test_the_calibrated_choice_in_c_is_the_definitions(name):
    """quantize_k_weighted (kernels' quantize_k_best) keeps, per block, the plain quantiser's block or
    a variant's, whichever has the least importance-weighted squared error (in double, summed in
    order), the first of equals: the same bytes as that choice made here in numpy from the numpy
    reference's blocks, on rows with zero, constant and heavy-tailed blocks."""
    from llmrun.quant import reference as ref
    from llmrun.quant.calibrate import _K_VARIANTS, quantize_k_weighted
    from llmrun.quant.reference import _sum
    t = qtype(name)
    reference, variants = _K_VARIANTS[t]
    rng = np.random.default_rng(9)
    rows, n, size = 12, 512, t.block_size
    x = (rng.standard_normal((rows, n)) * rng.exponential(1.0, (rows, n))).astype(np.float32)
    x[1, :256] = 0
    x[2, 256:] = 0.75
    col = rng.exponential(1.0, n) ** 2
    w = col.reshape(-1, size) + 1e-6 * col.reshape(-1, size).mean(axis=-1, keepdims=True) + 1e-30
    imp32 = np.broadcast_to((w / w.mean(axis=-1, keepdims=True)).astype(np.float32).reshape(n), x.shape)
    sb, wb = x.reshape(-1, size), np.broadcast_to(w.reshape(n), x.shape).reshape(-1, size)

    def error(blocks):
        return _sum(wb * (ref.dequantize(blocks, t, size).astype(np.float64) - sb) ** 2)[:, 0]

    best = ref.quantize(sb, t)
    best_err = error(best)
    for fit in variants:
        cand = reference(sb[:, None, :], (sb.shape[0],), importance=imp32.reshape(-1, size), **fit)
        err = error(cand)
        best = np.where((err < best_err)[:, None], cand, best)
        best_err = np.minimum(err, best_err)
    plain = ref.quantize(sb, t)
    assert 0 < (best != plain).any(axis=-1).sum() < len(sb)  # some blocks a fit's, some the plain quantiser's
    np.testing.assert_array_equal(quantize_k_weighted(x, col, t), best.reshape(rows, -1))
    fit = [list(f) for f in ((0.0, 0.0, 0, 0.0, False, True),)]  # any sequence of six
    _kernels_k_best(t, x, imp32[0], w.reshape(n), fit)
    with pytest.raises(ValueError, match="nstep"):
        _kernels_k_best(t, x, imp32[0], w.reshape(n), [(0.0, 0.0, -1, 0.0, False, True)])
    with pytest.raises(TypeError):
        _kernels_k_best(t, x, imp32[0], w.reshape(n), [(0.0, 0.0, 0)])
    with pytest.raises(ValueError, match="at most"):
        _kernels_k_best(t, x, imp32[0], w.reshape(n), [(0.0, 0.0, 0, 0.0, False, True)] * 17)
    with pytest.raises(ValueError, match="weights"):
        _kernels_k_best(t, x, imp32[0], w.reshape(n)[:-1], [])


def _kernels_k_best(t, x, imp, w, fits):
    from llmrun import _kernels
    out = np.empty((x.shape[0], t.row_bytes(x.shape[1])), np.uint8)
    _kernels.quantize_k_best(out, x, t.id, np.ascontiguousarray(imp), np.ascontiguousarray(w), fits)
    return out
