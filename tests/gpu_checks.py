"""Whole-graph checks every GPU backend must pass against the CPU backend, imported by each
backend's test file (tests/test_webgpu.py, tests/test_cuda_device.py), which defines the
fixtures `backend` (its name), `device` (skipping where it has none) and `bound` (how far its
logits may be from the CPU's, relative to their range)."""
from __future__ import annotations

import json

import numpy as np
import pytest


def device_or_skip(backend: str, lacking: str):
    """The backend's device (llmrun.backends.device), or a skip that says why this machine has none."""
    from llmrun.errors import LlmrunError
    from llmrun.backends import device
    try:
        return device(backend)
    except LlmrunError as e:
        pytest.skip(f"{lacking}: {e}")


from llmrun.backends.gpu import TYPES as GPU_TYPES, device_bytes  # noqa: E402
from llmrun.quant import TYPES as STORED, qtype  # noqa: E402
from llmrun.quant.mixes import MIXES  # noqa: E402

# Every quantised type the GPU kernels read, and every k-quant mix made of them alone
# (q4_k_m: q4_k, q6_k where the mix goes up, and the fallbacks for rows that are not whole
# super-blocks)
WIDE_TYPES = [t for t in GPU_TYPES if qtype(t).quantized] + \
    [m for m, mix in MIXES.items() if m not in GPU_TYPES and mix.types <= set(GPU_TYPES)]


def random_blocks(t, rows: int, k: int, rng) -> np.ndarray:
    """uint8 [rows, row_bytes] of type t in the rows layout: random bytes (every quant and
    sub-block scale bit pattern), the f16 fields (d; m or dmin) small random normals, so that
    every value is finite."""
    blocks = rng.integers(0, 256, (rows, k // t.block_size, t.type_size), dtype=np.uint8)
    for f in range(t.n_scales):
        at = t.scales_at + 2 * f
        blocks[..., at:at + 2] = (rng.standard_normal(blocks.shape[:2]) * 0.01).astype(np.float16)[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("type", WIDE_TYPES)
def test_quantised_models_match_the_cpu(backend, device, bound, wide_models, type):
    """A 256-wide model in each type and mix, prefill then decode steps: the argmax of every
    position as on the CPU, logits within the bound. The file holds the type (or the mix's
    types) itself, not only the fallbacks."""
    import llmrun
    path, held = wide_models(type)
    assert ({type} if type in GPU_TYPES else MIXES[type].types) <= held, held
    cpu, gpu = llmrun.load(path), llmrun.load(path, backend=backend)
    ids = np.random.default_rng(6).integers(0, cpu.config.vocab_size, 24)
    c_cache, g_cache = cpu.new_cache(32), gpu.new_cache(32)
    for start, stop in ((0, 20), (20, 21), (21, 22), (22, 24)):
        want, got = cpu.forward(ids[start:stop], c_cache), gpu.forward(ids[start:stop], g_cache)
        diff = float(np.abs(want - got).max())
        print(f"wide {type} {backend} tokens {start}..{stop}: max |logit difference| {diff / np.abs(want).max():.1e} "
              f"of the largest logit; types {sorted(held)}")
        assert (want.argmax(-1) == got.argmax(-1)).all()
        assert diff <= bound * np.abs(want).max()


@pytest.mark.parametrize("type", [t for t in STORED if t not in GPU_TYPES])
def test_types_without_kernels_are_one_line(backend, device, wide_models, type):
    """A model holding a stored type the GPU kernels do not read is refused when it loads, in
    one line that names the tensor and the type."""
    import llmrun
    from llmrun.errors import LlmrunError
    path, held = wide_models(type)
    assert type in held
    with pytest.raises(LlmrunError) as e:
        llmrun.load(path, backend=backend)
    assert "\n" not in str(e.value) and f"kernels for {type} weights" in str(e.value), str(e.value)


@pytest.mark.parametrize("type", [t for t in GPU_TYPES if t in ("q2_k", "q3_k")])
def test_rows_layout_types_go_up_in_x16(backend, device, type):
    """q2_k and q3_k, which files written before their CPU X16 kernels keep in rows, go up re-laid
    into x16, byte for byte (the product of a re-laid matrix: test_webgpu.py's
    test_every_bit_of_a_block); a matrix that is not whole groups of 16 rows cannot be, and is
    refused in one line."""
    from llmrun.backends import device as new_device
    from llmrun.errors import LlmrunError
    from llmrun.format import Tensor
    from llmrun.quant.layout import ROWS, interleave
    t = qtype(type)
    dev = new_device(backend)
    blocks = random_blocks(t, 40, t.block_size, np.random.default_rng(4))
    assert (np.asarray(device_bytes(Tensor("w", t, (32, t.block_size), blocks[:32].reshape(-1), ROWS), backend))
            == interleave(blocks[:32], t).reshape(-1)).all()
    with pytest.raises(LlmrunError) as e:
        dev.upload(Tensor("w", t, (40, t.block_size), blocks.reshape(-1), ROWS))
    assert "\n" not in str(e.value) and "whole groups of 16 rows; this matrix has 40" in str(e.value), str(e.value)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("type", ["f16", "q8_0", "q4_0", "q4_1"])
def test_graph_matches_the_cpu(backend, device, bound, tiny_models, arch, type):
    """Prefill, then decode steps, on both backends: the same argmax at every position."""
    import llmrun
    cpu, gpu = llmrun.load(tiny_models[arch, type]), llmrun.load(tiny_models[arch, type], backend=backend)
    ids = np.random.default_rng(5).integers(0, cpu.config.vocab_size, 24)
    c_cache, g_cache = cpu.new_cache(32), gpu.new_cache(32)
    for start, stop in ((0, 20), (20, 21), (21, 22), (22, 24)):
        want, got = cpu.forward(ids[start:stop], c_cache), gpu.forward(ids[start:stop], g_cache)
        assert (want.argmax(-1) == got.argmax(-1)).all()
        assert np.abs(want - got).max() <= bound * np.abs(want).max()
    # a step moves its ids and 12 bytes of state up, and only the logits down
    assert g_cache.store.bytes_up == 2 * 4 + 12 and g_cache.store.bytes_down == 2 * cpu.config.vocab_size * 4


def test_generate_on_the_device_gives_the_cpu_tokens(backend, device, tiny_models):
    import llmrun
    path = tiny_models["qwen2", "q4_0"]
    runs = [list(r.token for r in llmrun.generate(llmrun.load(path, backend=b), [3, 14, 15, 92, 65], max_tokens=12,
                                                  temperature=0)) for b in ("cpu", backend)]
    assert runs[0] == runs[1]


def test_the_server_engine_runs_on_the_device(backend, device, tiny_models):
    """`llmrun serve`'s continuous batching on a device (the slots' decode steps as one device
    step): requests sharing the engine get the tokens generate() gives each alone on the
    device, and slot caches reused for a second round give them again."""
    import llmrun
    from llmrun.batching import Engine
    model = llmrun.load(tiny_models["llama", "q8_0"], backend=backend)
    prompts = [[3, 14, 15], [92, 65, 35, 89], [7], [3, 14, 15, 9]]
    want = [[r.token for r in llmrun.generate(model, p, max_tokens=8, temperature=0)] for p in prompts]
    with Engine(model, parallel=2, n_ctx=32) as engine:
        for _ in range(2):
            requests = [engine.submit(p, max_tokens=8, temperature=0) for p in prompts]
            assert [[r.token for r in request] for request in requests] == want


@pytest.mark.parametrize("type", ["q8_0", "q4_0"])
def test_smollm2_matches_the_cpu_at_every_position(backend, device, bound, smollm2_hf, tmp_path, type):
    """The real model on the device, the reference prompts in one prefill each: the argmax of
    every position as on the CPU. Measured max |logit difference| (of logits up to ~32) on
    lavapipe: q8_0 0.007 / 0.009 / 0.011, q4_0 0.007 / 0.006 / 0.015 (`pytest -s` prints them);
    the bound leaves room for other devices' summation order and f16 tensor-core inputs."""
    import llmrun
    from conftest import SHARED
    from llmrun.models import convert
    path = tmp_path / f"smollm2-{type}.llmr"
    convert(str(smollm2_hf["float32"]), str(path), type)
    cpu, gpu = llmrun.load(path), llmrun.load(path, backend=backend)
    for prompt in json.loads((SHARED / "reference" / "reference.json").read_text())["prompts"]:
        ids = prompt["ids"]
        want = cpu.forward(ids, cpu.new_cache(len(ids)))
        got = gpu.forward(ids, gpu.new_cache(len(ids)))
        diff = float(np.abs(want - got).max())
        print(f"smollm2 {type} {backend} {prompt['name']}: max |logit difference| {diff:.4f}")
        assert (want.argmax(-1) == got.argmax(-1)).all(), prompt["name"]
        assert diff < 50 * bound, prompt["name"]  # logits up to ~32: about 1.5 x the relative bound


# --- the family switches (llmrun/config.py) on the device --------------------------------------

FAMILIES = ["qwen3", "smollm3", "phi3", "gemma3", "granite", "mistral-window"]


@pytest.fixture(scope="module")
def family_models_f16(tmp_path_factory):
    """conftest's FAMILY_CHECKPOINTS converted to f16 (family_models has f32, which no GPU kernel
    reads, and q8_0): {family: .llmr path}."""
    from conftest import FAMILY_CHECKPOINTS, make_hf_checkpoint
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("family-models-f16")
    out = {}
    for family, kw in FAMILY_CHECKPOINTS.items():
        make_hf_checkpoint(d / family, **kw)
        out[family] = d / f"{family}-f16.llmr"
        convert(str(d / family), str(out[family]), "f16")
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_families_match_the_cpu(backend, device, bound, family_models, family_models_f16, family, type):
    """Each family's tiny checkpoint (q/k norms, post-norms, the GELU gate, the four scalars, a
    partial or absent RoPE, windows of 4 positions with their own RoPE base), prefill then
    decode steps past the window: the same argmax at every position as the CPU, and logits
    within the bound (`pytest -s` prints the largest difference)."""
    import llmrun
    path = family_models_f16[family] if type == "f16" else family_models[family, type]
    cpu, gpu = llmrun.load(path), llmrun.load(path, backend=backend)
    ids = np.random.default_rng(5).integers(0, cpu.config.vocab_size, 24)
    c_cache, g_cache = cpu.new_cache(32), gpu.new_cache(32)
    want, got = [], []
    for start, stop in ((0, 20), (20, 21), (21, 22), (22, 24)):
        want.append(cpu.forward(ids[start:stop], c_cache))
        got.append(gpu.forward(ids[start:stop], g_cache))
        assert (want[-1].argmax(-1) == got[-1].argmax(-1)).all(), (start, stop)
    want, got = np.concatenate(want), np.concatenate(got)
    diff = float(np.abs(want - got).max())
    print(f"{family} {type} {backend}: max |logit difference| {diff:.2e} ({diff / np.abs(want).max():.1e} of the "
          f"largest logit, {np.abs(want).max():.2f})")
    assert diff <= bound * np.abs(want).max()


def every_switch(type_name: str):
    """A config with every switch set together, in combinations no family has (a partial rotary
    with a local RoPE base and a window, a windowed layer without RoPE, LongRoPE's factors and
    attention factor beside a local base), and random weights of type_name for it."""
    from dataclasses import replace
    from llmrun import selftest
    cfg = replace(selftest.CONFIG, n_layers=3, qk_norm=True, post_norms=True, act="gelu_tanh", embed_scale=3.0,
                  residual_scale=0.5, attn_scale=0.1, logit_scale=0.25, rope_dims=16, no_rope_layers=(2,),
                  sliding_window=5, window_layers=(0, 2), rope_local_theta=1000.0,
                  rope_scaling={"type": "factors", "factors": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 9.0],
                                "attention_factor": 1.2})
    w = selftest.random_weights(type_name, cfg)
    rng = np.random.default_rng(2)
    for layer in w.layers:
        for name, n in (("q_norm", cfg.head_dim), ("k_norm", cfg.head_dim), ("attn_post_norm", cfg.dim),
                        ("ffn_post_norm", cfg.dim)):
            setattr(layer, name, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))
    return cfg, w


def test_every_switch_at_once(backend, device, bound):
    """`llmrun selftest`'s check on a model built in memory with every switch set together
    (every_switch), f16 and q8_0 weights."""
    from llmrun import selftest
    from llmrun.backends import device as new_device
    dev = new_device(backend)  # as a loaded model gets its own
    for type_name in ("f16", "q8_0"):
        cfg, w = every_switch(type_name)
        ids = np.random.default_rng(1).integers(0, cfg.vocab_size, 24).astype(np.int32)
        want, got = selftest.cpu_and_device_logits(dev, backend, cfg, w, ids, (20, 21, 22, 24))
        diff = float(np.abs(want - got).max())
        print(f"every switch {type_name} {backend}: max |logit difference| {diff:.2e} ({diff / np.abs(want).max():.1e} "
              f"of the largest logit, {np.abs(want).max():.2f})")
        assert (want.argmax(-1) == got.argmax(-1)).all() and diff <= bound * np.abs(want).max()


def test_every_switch_with_several_contexts_a_step(backend, device, bound):
    """Three contexts of the every-switch model (3, 7 and 10 positions: inside and past the
    window; contexts of 16, 24 and 20) decoding together (one device step, each context's RoPE,
    cache and window its own) give each context's CPU logits; a prompt beside them runs alone."""
    from llmrun import selftest
    from llmrun.backends import cpu
    from llmrun.backends import device as new_device
    from llmrun.backends.gpu import Graph
    from llmrun.model import KVCache
    cfg, w = every_switch("q8_0")
    inv_freq = selftest.rope_frequencies(cfg)
    graph, on_device = cpu.graph(cfg, w, inv_freq), Graph(new_device(backend), cfg, w, inv_freq, backend)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in (3, 7, 10)]
    caches = [(KVCache(cfg, ctx), on_device.new_cache(ctx), len(p)) for p, ctx in zip(prompts, (16, 24, 20))]
    for (c, d, _), p in zip(caches, prompts):
        cpu.forward(graph, p, 0, c.k, c.v, 0, cfg.vocab_size)
        d.run(p, 0, 0)
    for step in range(3):
        ids = [rng.integers(0, cfg.vocab_size, 1 + 3 * (step == 2 and i == 0)).astype(np.int32) for i in range(3)]
        got = on_device.forward([(t, n, d, len(t) - 1) for t, (_, d, n) in zip(ids, caches)])
        for t, (c, _, n), g in zip(ids, caches, got):
            want = cpu.forward(graph, t, n, c.k, c.v, len(t) - 1, cfg.vocab_size)
            assert g.shape == want.shape and g.argmax() == want.argmax()
            assert np.abs(g - want).max() <= bound * np.abs(want).max()
        caches = [(c, d, n + len(t)) for t, (c, d, n) in zip(ids, caches)]
    # both batch here (lavapipe's bindings may start every 32 bytes): one batch plan, for the
    # three contexts' steps and then for the two beside the prompt
    assert on_device.max_segments is None and len(on_device.batches) == 2
