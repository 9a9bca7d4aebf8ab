"""The WebGPU backend's kernels (kernels/wgsl/) against the numpy reference in quant/, on
whatever adapter wgpu finds: in CI, Mesa's software Vulkan device (lavapipe), which .ci/run
installs; on a Mac, the Apple GPU through Metal."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from llmrun.format import Tensor
from llmrun.quant import dequantize, qtype, quantize
from llmrun.quant.layout import X16, interleave, kernel_layout

wgpu = pytest.importorskip("wgpu", reason="the webgpu extra is not installed (pip install -e '.[test]' brings it)")

# The kernels sum in f32 in their own order; the reference is float64 over the same weights.
# Relative to the largest output: f32 rounding over K terms, K <= 512 here.
BOUND = 2e-6


@pytest.fixture(scope="module")
def device():
    from llmrun import webgpu
    from llmrun.errors import LlmrunError
    try:
        return webgpu.Device()
    except LlmrunError as e:
        pytest.skip(f"no WebGPU adapter: {e}")


def _tensor(w: np.ndarray, t) -> tuple[Tensor, np.ndarray]:
    rows = quantize(w, t)
    layout = kernel_layout(t, w.shape)
    data = interleave(rows, t) if layout == X16 else rows
    return Tensor("w", t, w.shape, data.reshape(-1), layout), rows


@pytest.mark.parametrize("type", ["q8_0", "q4_0", "q4_1", "f16"])
@pytest.mark.parametrize("rows, k, tokens", [(16, 32, 1), (48, 96, 1), (64, 512, 11), (32, 64, 8), (80, 64, 17)])
def test_matmul_matches_reference(device, type, rows, k, tokens):
    t = qtype(type)
    rng = np.random.default_rng(rows * 1000 + k + tokens)
    tensor, blocks = _tensor(rng.standard_normal((rows, k)).astype(np.float32), t)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    got = device.matmul(device.upload(tensor), x)
    want = x.astype(np.float64) @ dequantize(blocks, t, k).astype(np.float64).T
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= BOUND * np.abs(want).max()


def test_f16_rows_not_a_multiple_of_16(device):
    """The rows layout's last workgroup is partial: its missing rows write nothing."""
    rng = np.random.default_rng(7)
    tensor, blocks = _tensor(rng.standard_normal((40, 64)).astype(np.float32), qtype("f16"))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = x.astype(np.float64) @ dequantize(blocks, qtype("f16"), 64).astype(np.float64).T
    assert np.abs(device.matmul(device.upload(tensor), x) - want).max() <= BOUND * np.abs(want).max()


def test_matrices_past_the_binding_limit_are_split(device, monkeypatch):
    """A matrix larger than one storage binding goes up in several buffers of whole 16-row
    groups, and the product is the same."""
    rng = np.random.default_rng(3)
    tensor, _ = _tensor(rng.standard_normal((96, 128)).astype(np.float32), qtype("q4_0"))
    x = rng.standard_normal((5, 128)).astype(np.float32)
    whole = device.upload(tensor)
    monkeypatch.setattr(device, "max_binding", 32 * 72)  # two 16-row groups of q4_0 [., 128]
    split = device.upload(tensor)
    assert len(whole.parts) == 1 and [(r0, n) for _, r0, n in split.parts] == [(0, 32), (32, 32), (64, 32)]
    np.testing.assert_array_equal(device.matmul(split, x), device.matmul(whole, x))


def test_info_lists_the_adapters(device):
    r = run_cli("info", "--backends", check=True)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cpu:") and any(line.startswith("webgpu:") and "shader-f16" in line for line in lines)
