"""GGUF import-only types: our dequantisers must be bit-identical to gguf-py's (and ggml's)."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from llmrun.quant import (GGML_TYPES_BY_ID, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K,
                          Q8_0, Q8_K, TYPES, dequantize, dequantize_ggml, ggml_type, qtype)
from llmrun.quant.types import TABLE, TYPES_BY_ID

IMPORT_ONLY = [t for t in TABLE if not t.stored]

# Byte offsets of each block's scale fields, set to finite values so no inf/nan appears.
F16_FIELDS = {Q5_0: [0], Q5_1: [0, 2], IQ4_NL: [0], Q2_K: [80, 82], Q3_K: [108], Q4_K: [0, 2], Q5_K: [0, 2],
              Q6_K: [208], IQ4_XS: [0]}
F32_FIELDS = {Q8_K: [0]}

SHAPES = [(1, 1), (3, 2), (2, 5, 4)]  # (leading dims..., blocks per row)


def random_blocks(t, shape, rng) -> np.ndarray:
    """uint8 [*shape[:-1], shape[-1] * type_size]: random quants, finite random scales."""
    *lead, nb = shape
    blk = rng.integers(0, 256, size=(*lead, nb, t.type_size), dtype=np.uint8)
    for off in F16_FIELDS.get(t, []):
        # moderate magnitudes, both signs; includes subnormal-ish small values and zeros
        v = (rng.standard_normal((*lead, nb)) * rng.choice([1e-4, 1e-2, 1.0, 30.0], (*lead, nb)))
        v[rng.random((*lead, nb)) < 0.05] = 0.0
        blk[..., off:off + 2] = v.astype(np.float16)[..., None].view(np.uint8)
    for off in F32_FIELDS.get(t, []):
        v = (rng.standard_normal((*lead, nb)) * 1e-2).astype(np.float32)
        blk[..., off:off + 4] = v[..., None].view(np.uint8)
    return blk.reshape(*lead, nb * t.type_size)


def bits(x: np.ndarray) -> np.ndarray:
    """float32 as its bit pattern: equal bits, not just equal values (-0.0 != 0.0)."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def test_sizes_match_ggml():
    for t in GGML_TYPES_BY_ID.values():
        g = GGMLQuantizationType(t.id)
        assert g.name.lower() == t.name
        assert GGML_QUANT_SIZES[g] == (t.block_size, t.type_size)


def test_runnable_types_unchanged():
    assert sorted(TYPES) == ["bf16", "f16", "f32", "iq4_nl", "q2_k", "q3_k", "q4_0", "q4_1", "q4_k", "q5_0", "q5_1",
                             "q5_k", "q6_k", "q8_0"]
    assert sorted(TYPES_BY_ID) == [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 30]
    assert len(GGML_TYPES_BY_ID) == 16
    for t in IMPORT_ONLY:
        assert ggml_type(t.id) is t
        with pytest.raises(ValueError):
            qtype(t.id)  # k-quants are not storable
        with pytest.raises(ValueError):
            qtype(t.name)


@pytest.mark.parametrize("t", [t for t in IMPORT_ONLY if t is not Q8_K] + [Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, Q6_K],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_identical_to_gguf(t, shape):
    rng = np.random.default_rng(t.id * 100 + len(shape))
    data = random_blocks(t, shape, rng)
    n = shape[-1] * t.block_size
    ours = dequantize_ggml(data, t, n)
    theirs = quants.dequantize(data, GGMLQuantizationType(t.id))
    assert ours.dtype == np.float32 and ours.shape == (*shape[:-1], n)
    assert np.isfinite(ours).all()
    assert np.array_equal(bits(ours), bits(theirs))


def test_q8_k_exact():
    # gguf-py has no q8_k; ggml computes y = d * q in float32. A float32 times an int8 is exact
    # in float64, so rounding that product once to float32 is the correctly rounded answer.
    rng = np.random.default_rng(15)
    for shape in SHAPES:
        data = random_blocks(Q8_K, shape, rng)
        blk = data.reshape(*shape, Q8_K.type_size)
        d = blk[..., 0:4].copy().view(np.float32).astype(np.float64)  # [..., nb, 1]
        q = blk[..., 4:260].copy().view(np.int8).astype(np.float64)  # [..., nb, 256]
        want = (d * q).astype(np.float32).reshape(*shape[:-1], -1)
        got = dequantize_ggml(data, Q8_K, shape[-1] * 256)
        assert np.array_equal(bits(got), bits(want))


def test_id_and_large_tensor():
    # a type id works in place of a QType; many blocks at once (the vectorised path)
    rng = np.random.default_rng(0)
    data = random_blocks(Q4_K, (64, 16), rng)  # 64 rows of 4096
    got = dequantize_ggml(data, 12, 4096)
    assert np.array_equal(bits(got), bits(quants.dequantize(data, GGMLQuantizationType.Q4_K)))


@pytest.mark.parametrize("t", [Q5_0, Q5_1, Q8_0, Q4_0, Q4_1], ids=lambda t: t.name)
def test_gguf_quantised_round_trip(t):
    # gguf-py quantises only these of ours (no k-quant quantiser); its bytes, our dequantiser
    rng = np.random.default_rng(t.id)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    g = GGMLQuantizationType(t.id)
    data = quants.quantize(x, g)
    got = dequantize_ggml(data, t, 256)
    assert np.array_equal(bits(got), bits(quants.dequantize(data, g)))
    assert np.abs(got - x).max() < 0.5  # and it is a quantisation of x


@pytest.mark.parametrize("t", [Q5_0, Q5_1, Q8_0, Q4_0, Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_reference_quantiser_matches_gguf(t, scale):
    # our numpy quantiser (llama.cpp's quantize_row_*_ref rounding) against gguf-py's, byte for byte
    from llmrun.quant import quantize
    rng = np.random.default_rng(t.id * 7 + int(scale * 1000))
    x = (rng.standard_normal((6, 512)) * scale).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = 2.5  # a constant block
    x[2, :64] = np.arange(64, dtype=np.float32) - 31  # ramps: exact ties
    assert np.array_equal(quantize(x, t), quants.quantize(x, GGMLQuantizationType(t.id)))


@pytest.mark.parametrize("t", list(TYPES.values()), ids=lambda t: t.name)
def test_runnable_types_delegate(t):
    rng = np.random.default_rng(1)
    k = max(64, t.block_size)
    x = rng.standard_normal((3, k)).astype(np.float32)
    from llmrun.quant import quantize
    data = quantize(x, t)
    assert np.array_equal(bits(dequantize_ggml(data, t, k)), bits(dequantize(data, t, k)))
    assert np.array_equal(bits(dequantize_ggml(data, t.id, k)), bits(dequantize(data, t, k)))


@pytest.mark.parametrize("t", IMPORT_ONLY, ids=lambda t: t.name)
def test_wrong_row_length(t):
    data = np.zeros((2, t.type_size + 1), np.uint8)
    with pytest.raises(ValueError, match=t.name):
        dequantize_ggml(data, t, t.block_size)
    with pytest.raises(ValueError, match="multiple"):
        dequantize_ggml(np.zeros((2, t.type_size), np.uint8), t, t.block_size + 1)


def test_iq4_xs_restored_as_iq4_nl():
    """iq4_xs blocks become iq4_nl ones: the same quant bytes, each group's scale d (ls - 32)
    rounded to f16, so the values move by at most half an f16 step of their group's scale (2^-11
    of it for a normal f16, half of 2^-24 below); a scale past f16's range is refused."""
    from llmrun.quant import restore_blocks
    from llmrun.quant.kquants import _iq4_xs_fields
    rng = np.random.default_rng(23)
    data = random_blocks(IQ4_XS, (3, 4), rng)
    exact = dequantize_ggml(data, IQ4_XS, 1024).reshape(3, 32, 32)  # gguf-py's bits: test_bit_identical_to_gguf
    got = restore_blocks(data, IQ4_XS, 1024)
    assert got.shape == (3, IQ4_NL.row_bytes(1024))
    blocks = got.reshape(3, 32, IQ4_NL.type_size)
    assert (blocks[..., 2:] == data.reshape(3, 4, 136)[..., 8:].reshape(3, 32, 16)).all()  # the quants as they were
    values = dequantize(got, IQ4_NL, 1024).reshape(3, 32, 32)
    scale = np.abs(_iq4_xs_fields(data.reshape(3, 4, 136))[0]).reshape(3, 32, 1)  # each group's |d (ls - 32)|
    step = np.maximum(scale * 2.0 ** -11, 2.0 ** -25)
    assert (np.abs(values - exact) <= 127 * step * 1.0001).all()
    assert not np.array_equal(values, exact)  # the rounding happened: the test can tell
    big = data.reshape(3, 4, 136).copy()
    big[0, 0, 0:2] = np.float16(60000.0).reshape(1).view(np.uint8)
    big[0, 0, 4] = 0x00  # group 0's ls low bits 0, its high bits from scales_h: ls - 32 <= -16
    big[0, 0, 2] &= 0xFC
    with pytest.raises(ValueError, match="float16's range"):
        restore_blocks(big.reshape(3, -1), IQ4_XS, 1024)


def test_unsupported_ids_named():
    with pytest.raises(ValueError, match=r"GGML type id 99 \(unknown\) is not supported"):
        ggml_type(99)
    with pytest.raises(ValueError, match=r"GGML type id 16 \(iq2_xxs\) is not supported"):
        ggml_type(16)
    with pytest.raises(ValueError, match=r"\(iq3_s\)"):
        dequantize_ggml(np.zeros((1, 110), np.uint8), 21, 256)
    with pytest.raises(ValueError, match=r"\(mxfp4\)"):
        ggml_type(39)


def _q4_k_inputs() -> np.ndarray:
    """64 super-blocks: scales from 1e-4 to 1e3, zero / constant / ramp / all-positive / tied rows."""
    rng = np.random.default_rng(412)
    x = rng.standard_normal((64, 256)) * 10.0 ** rng.uniform(-4, 3, (64, 1))
    x[0] = 0.0
    x[1] = 1.5
    x[2] = np.arange(256) - 100.0
    x[3] = np.abs(x[3]) + 1
    x[4] = np.round(x[4] * 4) / 4
    x[5, :32] = 0.0
    x[6, 200:] = -3.0
    return x.astype(np.float32)


def test_q4_k_quantiser_is_llama_cpps():
    """gguf-py has no q4_k quantiser. These are the bytes of llama.cpp's quantize_row_q4_K_ref
    (ggml-quants.c, as vendored by llama-cpp-python 0.3.36, built with -ffp-contract=off) for the
    inputs above; our numpy quantiser must give them (the C one is held to it in test_kernels)."""
    import hashlib
    from llmrun.quant import quantize
    got = quantize(_q4_k_inputs(), Q4_K)
    assert hashlib.sha256(got.tobytes()).hexdigest() == \
        "66dc862261ea7fee6d780b4bff05f6addb4ccbe2905c5e64b90f8131b638e1a0"


def test_q4_k_quantiser_round_trip_and_rules():
    from llmrun.quant import quantize
    x = _q4_k_inputs()
    data = quantize(x, Q4_K)
    blk = data.reshape(64, 144)
    assert not blk[0].any()  # all zero: d = dmin = 0, every scale and quant 0
    back = dequantize(data, Q4_K, 256)
    sub = x.reshape(64, 8, 32)
    span = np.maximum(sub.max(-1), 0) - np.minimum(sub.min(-1), 0)  # the range fitted, with 0 in it
    err = np.abs(back - x).reshape(64, 8, 32).max(-1)
    assert (err <= 0.25 * span + 1e-30).all()  # a few steps of 1/15 at most, after 6-bit scales
    # the largest sub-block scale and min take the top 6-bit code: d = max scale / 63
    sc, m = (a.astype(int) for a in __import__("llmrun.quant.kquants", fromlist=["_k_scales"])._k_scales(blk[:, 4:16]))
    d = blk[:, 0:2].copy().view(np.float16)[:, 0]
    dmin = blk[:, 2:4].copy().view(np.float16)[:, 0]
    assert ((sc.max(1) == 63) | (d == 0)).all() and ((m.max(1) == 63) | (dmin == 0)).all()
    g = np.random.default_rng(5).standard_normal((16, 4096)).astype(np.float32)
    dg = dequantize(quantize(g, Q4_K), Q4_K, 4096)
    assert np.sqrt(((dg - g) ** 2).mean()) < 0.08  # 4.5 bits per weight on N(0, 1): ~0.071


def _q6_k_inputs() -> np.ndarray:
    """4,096 super-blocks: scales from 1e-4 to 1e3, and edge blocks."""
    rng = np.random.default_rng(614)
    x = rng.standard_normal((4096, 256)) * 10.0 ** rng.uniform(-4, 3, (4096, 1))
    x[0] = 0.0  # all zero: every byte 0
    x[1] = 1.5  # constant
    x[2] = np.arange(256) - 100.0  # a ramp
    x[3] = np.abs(x[3]) + 1  # all positive
    x[4] = np.round(x[4] * 4) / 4  # ties
    x[5, :16] = 0.0  # one zero sub-block
    x[6, 200:] = -3.0
    x[7, :] = 1e-4
    x[7, 0] = 1e3  # one huge value: the other sub-blocks' int8 scales round to 0
    x[8, 16:32] = 1e-17  # a sub-block under ggml's GROUP_MAX_EPS (1e-15), not zero
    x[9] = np.arange(256) % 64 - 32.0  # every q - 32 once per 64
    x[10] = -x[10]
    x[11, ::2] = 0.0
    return x.astype(np.float32)


def test_q6_k_quantiser_is_llama_cpps():
    """gguf-py has no q6_k quantiser. These are the bytes of llama.cpp's quantize_row_q6_K_ref
    (ggml-quants.c, as vendored by llama-cpp-python 0.3.36, built alone with gcc -O2
    -ffp-contract=off, its asserts on) for the inputs above; our numpy quantiser must give them
    (the C one is held to it in test_kernels)."""
    import hashlib
    from llmrun.quant import quantize
    got = quantize(_q6_k_inputs(), Q6_K)
    assert got.shape == (4096, 210)
    assert hashlib.sha256(got.tobytes()).hexdigest() == \
        "f8ec99626a8f7322940922a4ce9e6be3d9f3ecb996c5b311ff7687862a1259d9"


def test_q6_k_quantiser_round_trip_and_rules():
    from llmrun.quant import quantize
    from llmrun.quant.kquants import _q6_k_fields
    x = _q6_k_inputs()
    data = quantize(x, Q6_K)
    blk = data.reshape(4096, 210)
    assert not blk[0].any()  # all zero: d = 0, every scale and quant byte 0
    d, sc, q = _q6_k_fields(blk)  # [S, 1, 1], [S, 16], [S, 16, 16]
    d = d[:, 0, 0]
    live = d != 0
    # the sub-block scale of largest magnitude is -128 (d = its scale / -128), the rest within int8
    assert (sc[live].astype(int).min(axis=1) == -128).all()
    # every quant is x / (d sc) rounded to nearest, clamped to -32..31 (by float64 maths: within
    # 1e-6 of a step of it, for the float32 division) where sc is not 0; where it is, x is stored as 0
    v = q.astype(np.float64)  # [S, 16, 16], q - 32
    step = (d[:, None] * sc)[..., None].astype(np.float64)  # [S, 16, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = x.reshape(4096, 16, 16).astype(np.float64) / step
    inner = (np.abs(ratio - v) <= 0.5 + 1e-6) & (v > -32) & (v < 31)
    clamped = ((v == 31) & (ratio >= 30.5 - 1e-6)) | ((v == -32) & (ratio <= -31.5 + 1e-6))
    assert (inner | clamped)[live[:, None] & (sc != 0)].all()
    back = dequantize(data, Q6_K, 256)
    assert (back.reshape(4096, 16, 16)[(sc == 0)] == 0).all()
    assert (back[7, 16:] == 0).all() and back[7, 0] != 0  # scales that rounded to 0: exact zeros
    g = np.random.default_rng(5).standard_normal((16, 4096)).astype(np.float32)
    dg = dequantize(quantize(g, Q6_K), Q6_K, 4096)
    assert np.sqrt(((dg - g) ** 2).mean()) < 0.025  # 6.56 bits per weight on N(0, 1)


def _q5_k_inputs() -> np.ndarray:
    """4,096 super-blocks: scales from 1e-4 to 1e3, and edge blocks."""
    rng = np.random.default_rng(513)
    x = rng.standard_normal((4096, 256)) * 10.0 ** rng.uniform(-4, 3, (4096, 1))
    x[0] = 0.0  # all zero: every byte 0
    x[1] = 1.5  # constant
    x[2] = np.arange(256) - 100.0  # a ramp
    x[3] = np.abs(x[3]) + 1  # all positive
    x[4] = np.round(x[4] * 8) / 8  # ties
    x[5, :32] = 0.0  # one zero sub-block
    x[6, 200:] = -3.0
    x[7, :] = 1e-4
    x[7, 0] = 1e3  # one huge value: the other sub-blocks' 6-bit scales round to 0
    x[8] = np.arange(256) % 32 - 16.0  # every 5-bit level once per sub-block
    x[9] = -np.abs(x[9])  # all negative
    x[10, ::2] = 0.0
    return x.astype(np.float32)


def test_q5_k_quantiser_is_llama_cpps():
    """gguf-py has no q5_k quantiser. These are the bytes of llama.cpp's quantize_row_q5_K_ref
    (ggml-quants.c, as vendored by llama-cpp-python 0.3.36, built alone with gcc -O2
    -ffp-contract=off) for the inputs above; our numpy quantiser must give them (the C one is
    held to it in test_kernels)."""
    import hashlib
    from llmrun.quant import quantize
    got = quantize(_q5_k_inputs(), Q5_K)
    assert got.shape == (4096, 176)
    assert hashlib.sha256(got.tobytes()).hexdigest() == \
        "18299fbfcc2bb46dd4f942eada19459350afb2972f691a86159562b55b24e027"


def test_q5_k_quantiser_round_trip_and_rules():
    from llmrun.quant import quantize
    from llmrun.quant.kquants import _k_scales
    x = _q5_k_inputs()
    data = quantize(x, Q5_K)
    blk = data.reshape(4096, 176)
    assert not blk[0].any()  # all zero: d = dmin = 0, every scale and quant 0
    back = dequantize(data, Q5_K, 256)
    sub = x.reshape(4096, 8, 32)
    span = np.maximum(sub.max(-1), 0) - np.minimum(sub.min(-1), 0)  # the range fitted, with 0 in it
    sc, m = (a.astype(int) for a in _k_scales(blk[:, 4:16]))
    live = sc.astype(bool)  # sub-blocks whose 6-bit scale did not round to 0
    err = np.abs(back - x).reshape(4096, 8, 32).max(-1)
    assert (err <= 0.15 * span + 1e-30)[live].all()  # a few steps of 1/31 at most, after 6-bit scales
    assert np.abs(back[8] - x[8]).max() < 0.01  # 32 levels 1 apart: each its own quant (only d's f16 rounding)
    d = blk[:, 0:2].copy().view(np.float16)[:, 0]
    dmin = blk[:, 2:4].copy().view(np.float16)[:, 0]
    assert ((sc.max(1) == 63) | (d == 0)).all() and ((m.max(1) == 63) | (dmin == 0)).all()
    assert (blk[:, 16:48] != 0).any()  # the fifth bits are used
    g = np.random.default_rng(5).standard_normal((16, 4096)).astype(np.float32)
    dg = dequantize(quantize(g, Q5_K), Q5_K, 4096)
    e4 = np.sqrt(((dequantize(quantize(g, Q4_K), Q4_K, 4096) - g) ** 2).mean())
    e5 = np.sqrt(((dg - g) ** 2).mean())
    assert e5 < 0.04 and e5 < 0.55 * e4  # 5.5 bits per weight on N(0, 1): about half q4_k's error


def _q23_k_inputs(seed: int) -> np.ndarray:
    """4,096 super-blocks for q3_k and q2_k: scales from 1e-4 to 1e3, and edge blocks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4096, 256)) * 10.0 ** rng.uniform(-4, 3, (4096, 1))
    x[0] = 0.0  # all zero: d (and dmin) 0
    x[1] = 1.5  # constant
    x[2] = np.arange(256) - 100.0  # a ramp
    x[3] = np.abs(x[3]) + 1  # all positive
    x[4] = np.round(x[4] * 2) / 2  # ties
    x[5, :16] = 0.0  # one zero sub-block
    x[6, 200:] = -3.0
    x[7, :] = 1e-4
    x[7, 0] = 1e3  # one huge value: the other sub-blocks' scales round to 0
    x[8, 16:32] = 1e-17  # a sub-block under ggml's GROUP_MAX_EPS (1e-15), not zero
    x[9] = np.arange(256) % 8 - 4.0  # every 3-bit level, twice per sub-block
    x[10] = -np.abs(x[10])  # all negative
    x[11, ::2] = 0.0
    return x.astype(np.float32)


# The bytes of llama.cpp's quantize_row_q3_K_ref and quantize_row_q2_K_ref (ggml-quants.c, as
# vendored by llama-cpp-python 0.3.36, built alone with gcc -O2 -ffp-contract=off, its asserts on,
# and fed these inputs as raw float32 by a small C harness) for _q23_k_inputs(311) and (211).
Q23_K_LLAMA_CPP = {"q3_k": (311, "dd44dfb346ac86cf857576161b2601158f24c986f405ed1aa19d1d28c0c4fc7d"),
                   "q2_k": (211, "61434f71dbaefb5f8bfe48a6cc5ddb99961bdf5e66de266d1177ee43116d1e95")}


@pytest.mark.parametrize("t", [Q3_K, Q2_K], ids=lambda t: t.name)
def test_q3_k_q2_k_quantisers_are_llama_cpps(t):
    """gguf-py has no q3_k or q2_k quantiser: our numpy ones must give llama.cpp's bytes (the C
    ones are held to them in test_kernels)."""
    import hashlib
    from llmrun.quant import quantize
    seed, digest = Q23_K_LLAMA_CPP[t.name]
    got = quantize(_q23_k_inputs(seed), t)
    assert got.shape == (4096, t.type_size)
    assert hashlib.sha256(got.tobytes()).hexdigest() == digest


def test_q3_k_quantiser_round_trip_and_rules():
    from llmrun.quant import quantize
    from llmrun.quant.kquants import _q3_k_fields
    x = _q23_k_inputs(311)
    data = quantize(x, Q3_K)
    blk = data.reshape(4096, 110)
    assert not blk[0].any()  # all zero: d = 0, every byte 0
    d, sc, q = _q3_k_fields(blk)
    d = d[:, 0, 0]
    live = d != 0
    # the sub-block scale of largest magnitude is -32 (d = its scale / -32), the rest 6-bit signed
    assert (sc[live].astype(int).min(axis=1) == -32).all()
    # every quant is x / (d sc) rounded to nearest, clamped to -4..3 where d sc != 0
    v = q.astype(np.float64)
    step = (d[:, None] * sc)[..., None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = x.reshape(4096, 16, 16).astype(np.float64) / step
    inner = (np.abs(ratio - v) <= 0.5 + 1e-6) & (v > -4) & (v < 3)
    clamped = ((v == 3) & (ratio >= 2.5 - 1e-6)) | ((v == -4) & (ratio <= -3.5 + 1e-6))
    assert (inner | clamped)[live[:, None] & (sc != 0)].all()
    assert (blk[:, 0:32] != 0).any()  # the high bits are used
    g = np.random.default_rng(5).standard_normal((16, 4096)).astype(np.float32)
    e3 = np.sqrt(((dequantize(quantize(g, Q3_K), Q3_K, 4096) - g) ** 2).mean())
    e4 = np.sqrt(((dequantize(quantize(g, Q4_K), Q4_K, 4096) - g) ** 2).mean())
    assert e4 < e3 < 0.16  # 3.44 bits per weight on N(0, 1): 0.149 (q4_k's 4.5: 0.071)


def test_q2_k_quantiser_round_trip_and_rules():
    from llmrun.quant import quantize
    from llmrun.quant.kquants import _q2_k_fields
    x = _q23_k_inputs(211)
    data = quantize(x, Q2_K)
    blk = data.reshape(4096, 84)
    assert not blk[0].any()  # all zero: d = dmin = 0, every byte 0
    d, dmin, sc, m, q = _q2_k_fields(blk)
    d, dmin = d[:, 0, 0], dmin[:, 0, 0]
    # the largest sub-block scale and min take the top 4-bit code: d = max scale / 15
    assert ((sc.max(1) == 15) | (d == 0)).all() and ((m.max(1) == 15) | (dmin == 0)).all()
    back = dequantize(data, Q2_K, 256).reshape(4096, 16, 16)
    sub = x.reshape(4096, 16, 16)
    span = np.maximum(sub.max(-1), 0) - np.minimum(sub.min(-1), 0)  # the range fitted, with 0 in it
    err = np.abs(back - sub).max(-1)
    live = sc.astype(bool)
    assert (err <= 0.75 * span + 1e-30)[live].all()  # about one step of 1/3 at most, after 4-bit scales
    g = np.random.default_rng(5).standard_normal((16, 4096)).astype(np.float32)
    e2 = np.sqrt(((dequantize(quantize(g, Q2_K), Q2_K, 4096) - g) ** 2).mean())
    e3 = np.sqrt(((dequantize(quantize(g, Q3_K), Q3_K, 4096) - g) ** 2).mean())
    assert e3 < e2 < 0.45  # 2.63 bits per weight on N(0, 1)


def _iq4_nl_inputs() -> np.ndarray:
    """16,384 blocks of 32 (rows of 256): each block's scale from 1e-4 to 1e3, and edge blocks."""
    rng = np.random.default_rng(2020)
    x = rng.standard_normal((2048, 8, 32)) * 10.0 ** rng.uniform(-4, 3, (2048, 8, 1))
    levels = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)
    x[0, 0] = 0.0  # all zero: d = 0, every quant the level nearest 0 (index 8)
    x[0, 1] = 1.5  # constant
    x[0, 2] = np.arange(32) - 10.0  # a ramp
    x[0, 3] = np.abs(x[0, 3]) + 1  # all positive: the top level is 113, not 127
    x[0, 4] = -np.abs(x[0, 4])  # all negative
    x[0, 5] = np.round(x[0, 5] * 4) / 4  # ties in magnitude
    x[0, 6] = 1e-17  # under ggml's GROUP_MAX_EPS (1e-15): stored as zero
    x[0, 7] = rng.standard_normal(32) * 1e-13  # squares and cubes of these are float32 subnormals
    x[1, 0] = 1e-4
    x[1, 0, 5] = 1e3  # one huge value
    x[1, 1, :16] = levels  # every level, and the midpoints between them: exact ties on the grid of 1
    x[1, 1, 16:31] = (levels[:-1] + levels[1:]) / 2
    x[1, 1, 31] = -127.0
    x[1, 2] = -x[1, 1]
    x[1, 3, ::2] = 0.0
    return x.reshape(2048, 256).astype(np.float32)


def test_iq4_nl_quantiser_is_llama_cpps():
    """gguf-py has no iq4_nl quantiser. These are the bytes of llama.cpp's quantize_iq4_nl (what
    llama-quantize calls: ntry 7, here without an importance matrix), ggml-quants.c as vendored
    by llama-cpp-python 0.3.36 built alone with gcc -O2 -ffp-contract=off and called on the rows
    above (built with -march=native, where GCC contracts its sums into FMAs, 21 of these 16,384
    blocks come out otherwise); our numpy quantiser must give them (the C one is held to it in
    test_kernels)."""
    import hashlib
    from llmrun.quant import quantize
    got = quantize(_iq4_nl_inputs(), IQ4_NL)
    assert got.shape == (2048, 8 * 18)
    assert hashlib.sha256(got.tobytes()).hexdigest() == \
        "e81d2f82ffa6bd906a78b85369dc426e794f050b845a888167ee609222d4aaba"


def test_iq4_nl_quantiser_rules():
    from llmrun.quant import quantize
    from llmrun.quant.reference import IQ4_NL_VALUES
    x = _iq4_nl_inputs()
    blk = quantize(x, IQ4_NL).reshape(-1, 18)
    d = blk[:, :2].copy().view(np.float16)[:, 0]
    # all zero, and below ggml's GROUP_MAX_EPS: d = 0 and every quant the level nearest 0 (index 8)
    for b in (0, 6):
        assert d[b] == 0 and (blk[b, 2:] == 0x88).all()
    assert (d[1:6] != 0).all()
    assert d[7] == 0 and (blk[7, 2:] != 0x88).any()  # 1e-13: fitted on an f32 scale that f16 rounds to 0
    # a block of the levels times 0.5 is a perfect fit: d = 0.5, and it comes back exactly
    v = np.r_[IQ4_NL_VALUES, IQ4_NL_VALUES[::-1]].astype(np.float32) * np.float32(0.5)
    assert np.array_equal(dequantize(quantize(v[None], IQ4_NL), IQ4_NL, 32)[0], v)
    # 4.5 bits per weight on N(0, 1): the non-linear levels beat q4_0's even steps
    g = np.random.default_rng(5).standard_normal((16, 4096)).astype(np.float32)
    e_nl = np.sqrt(((dequantize(quantize(g, IQ4_NL), IQ4_NL, 4096) - g) ** 2).mean())
    e_q4 = np.sqrt(((dequantize(quantize(g, Q4_0), Q4_0, 4096) - g) ** 2).mean())
    assert e_nl < 0.92 * e_q4
