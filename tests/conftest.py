"""Fixtures: tiny random LLaMA-family checkpoints in Hugging Face layout, and the real
SmolLM2-135M-Instruct from ../shared when it is there."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ASSETS = Path(os.environ.get("LLMRUN_TEST_ASSETS", Path.home() / ".cache" / "llmrun-test-assets"))


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    """Models converted or pulled by tests go to a temporary $LLMRUN_HOME, not the user's cache
    (subprocesses inherit it)."""
    os.environ["LLMRUN_HOME"] = str(tmp_path_factory.mktemp("llmrun-home"))


# --- tiny tokenizers ---------------------------------------------------------------------------

def byte_level_tokenizer_json(specials=("<s>", "</s>")) -> str:
    """A byte-level BPE tokenizer.json: the 256 byte symbols, a few merges, special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {s: i for i, s in enumerate(list(specials) + sorted(alphabet))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    return tok.to_str()


def sentencepiece_model(normalization: str = "nmt_nfkc") -> bytes:
    """A small unigram sentencepiece model trained on the spot (deterministic); "identity"
    normalisation leaves out the 240 KB NFKC table."""
    import sentencepiece as spm
    text = ("the quick brown fox jumps over the lazy dog. " * 3 + "a model reads tokens and writes text. " * 3
            + "hello world, how are you today? " * 3).split(". ")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text * 20), model_writer=out, vocab_size=40,
                                   bos_id=1, eos_id=2, unk_id=0, minloglevel=2,
                                   normalization_rule_name=normalization)
    return out.getvalue()


# --- tiny checkpoints --------------------------------------------------------------------------

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128)


def make_hf_checkpoint(out: Path, *, arch="LlamaForCausalLM", model_type="llama", tied=True, bias=False,
                       dtype="float32", tokenizer="bpe", shards=1, seed=0, rope=None, qk_norm=False,
                       gemma_norms=False, fused=False, **overrides) -> dict:
    """Write a random checkpoint: config.json, safetensors weights, tokenizer files. `qk_norm`
    adds per-head q/k norms (Qwen3, Gemma 3), `gemma_norms` Gemma's four norms a block (offsets
    from 1), `fused` Phi-3's fused qkv_proj and gate_up_proj. Returns the float32 weights by HF
    name (what the independent reference forward uses, for the LLaMA block)."""
    from safetensors.numpy import save_file
    cfg = {**TINY, **overrides, "architectures": [arch], "model_type": model_type,
           "tie_word_embeddings": tied, "bos_token_id": 0, "eos_token_id": 1}
    cfg.update(rope or {"rope_theta": 10000.0})
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", D // H)
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or shape[-1] ** -0.5)).astype(np.float32)

    sd = {"model.embed_tokens.weight": w(V, D, scale=1.0), "model.norm.weight": 1 + 0.1 * w(D, scale=1.0)}
    if not tied:
        sd["lm_head.weight"] = w(V, D)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd |= {p + "input_layernorm.weight": 1 + 0.1 * w(D, scale=1.0),
               p + "post_attention_layernorm.weight": 1 + 0.1 * w(D, scale=1.0),
               p + "self_attn.q_proj.weight": w(H * hd, D), p + "self_attn.k_proj.weight": w(Hkv * hd, D),
               p + "self_attn.v_proj.weight": w(Hkv * hd, D), p + "self_attn.o_proj.weight": w(D, H * hd),
               p + "mlp.gate_proj.weight": w(F, D), p + "mlp.up_proj.weight": w(F, D),
               p + "mlp.down_proj.weight": w(D, F)}
        if bias:
            sd |= {p + "self_attn.q_proj.bias": w(H * hd, scale=0.5), p + "self_attn.k_proj.bias": w(Hkv * hd, scale=0.5),
                   p + "self_attn.v_proj.bias": w(Hkv * hd, scale=0.5)}
        if qk_norm:
            sd |= {p + "self_attn.q_norm.weight": 1 + 0.1 * w(hd, scale=1.0),
                   p + "self_attn.k_norm.weight": 1 + 0.1 * w(hd, scale=1.0)}
        if gemma_norms:  # stored as offsets from 1
            for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                      "post_feedforward_layernorm", *(("self_attn.q_norm", "self_attn.k_norm") if qk_norm else ())):
                sd[p + n + ".weight"] = 0.1 * w(hd if n.startswith("self_attn") else D, scale=1.0)
        if fused:
            sd[p + "self_attn.qkv_proj.weight"] = np.concatenate(
                [sd.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
            sd[p + "mlp.gate_up_proj.weight"] = np.concatenate([sd.pop(p + f"mlp.{x}_proj.weight") for x in ("gate", "up")])
    if gemma_norms:
        sd["model.norm.weight"] = 0.1 * w(D, scale=1.0)
    if dtype == "float16":
        sd = {k: v.astype(np.float16) for k, v in sd.items()}
    elif dtype == "bfloat16":
        # round to bf16 values; stored below as raw BF16 entries
        sd = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in sd.items()}

    out.mkdir(parents=True, exist_ok=True)
    names = sorted(sd)
    groups = [names[i::shards] for i in range(shards)]
    files = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for fname, group in zip(files, groups):
        if dtype == "bfloat16":
            write_bf16_safetensors(out / fname, {k: sd[k] for k in group})
        else:
            save_file({k: sd[k] for k in group}, str(out / fname))
    if shards > 1:
        json.dump({"weight_map": {k: f for f, g in zip(files, groups) for k in g}},
                  open(out / "model.safetensors.index.json", "w"))
    json.dump(cfg, open(out / "config.json", "w"), indent=1)
    if tokenizer == "bpe":
        (out / "tokenizer.json").write_text(byte_level_tokenizer_json())
        tc = {"bos_token": "<s>", "eos_token": "</s>",
              "chat_template": "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"}
    else:
        (out / "tokenizer.model").write_bytes(sentencepiece_model())
        tc = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
    json.dump(tc, open(out / "tokenizer_config.json", "w"))
    return {"config": cfg, "weights": {k: v.astype(np.float32) for k, v in sd.items()}}


def write_bf16_safetensors(path: Path, tensors: dict) -> None:
    """safetensors with BF16 entries (the safetensors numpy API cannot write bf16)."""
    header, blobs, offset = {}, [], 0
    for name, v in tensors.items():
        raw = (np.ascontiguousarray(v, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


# --- an independent numpy forward (float64), written from the Hugging Face modelling code ------

def reference_forward(ckpt: dict, ids) -> np.ndarray:
    """Logits [T, V] of `ids` under the checkpoint's weights: no cache, float64 throughout."""
    c, W = ckpt["config"], {k: v.astype(np.float64) for k, v in ckpt["weights"].items()}
    D, H, Hkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, eps, T = c.get("head_dim", D // H), c["rms_norm_eps"], len(ids)
    rope = c.get("rope_parameters") or {}
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    scaling = rope if rope.get("rope_type") not in (None, "default") else (c.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        f, lo, hi, old = (scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings"))
        wl = 2 * np.pi / inv_freq
        s = (old / wl - lo) / (hi - lo)
        inv_freq = np.where(wl < old / hi, inv_freq, np.where(wl > old / lo, inv_freq / f,
                                                               (1 - s) * inv_freq / f + s * inv_freq))
    ang = np.arange(T)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))  # [T, hd]

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rot(x):  # x [n, T, hd]
        half = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos + half * sin

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, W[p + "input_layernorm.weight"])
        q = rot(lin(h, p + "self_attn.q_proj").reshape(T, H, hd).transpose(1, 0, 2))
        k = rot(lin(h, p + "self_attn.k_proj").reshape(T, Hkv, hd).transpose(1, 0, 2))
        v = lin(h, p + "self_attn.v_proj").reshape(T, Hkv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, H // Hkv, 0), np.repeat(v, H // Hkv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        p_att = np.exp(s - s.max(-1, keepdims=True))
        p_att /= p_att.sum(-1, keepdims=True)
        x = x + lin((p_att @ v).transpose(1, 0, 2).reshape(T, H * hd), p + "self_attn.o_proj")
        h = norm(x, W[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = norm(x, W["model.norm.weight"])
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


# --- CLI -------------------------------------------------------------------------------------

def run_cli(*args, check=False, input=None, env=None):
    """Run `python -m llmrun.cli.main ARGS` the way a user would (`env` adds variables);
    returns the CompletedProcess."""
    r = subprocess.run([sys.executable, "-m", "llmrun.cli.main", *map(str, args)],
                       capture_output=True, text=True, input=input, timeout=600, env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"llmrun {args} failed ({r.returncode}):\n{r.stderr}")
    return r


# --- the real model ----------------------------------------------------------------------------

def _need_shared():
    if not (SHARED / "reference" / "reference.npz").exists():
        pytest.skip(f"the real-model reference is not here ({SHARED} is absent: it exists on the team's machines and in CI)")


@pytest.fixture(scope="session")
def smollm2_hf():
    """{"float32": dir, "float16": dir}: the SmolLM2-135M-Instruct HF checkpoints made by
    ../shared/tools/make_smollm2_hf.py from the GGUF (fetched once into the asset cache)."""
    _need_shared()
    gguf = subprocess.run(["bash", str(SHARED / "tools" / "fetch_smollm2_gguf.sh"), str(ASSETS)],
                          capture_output=True, text=True, check=True).stdout.strip()
    dirs = {}
    for dtype in ("float32", "float16"):
        d = ASSETS / f"smollm2-hf-{dtype}"
        if not d.exists():  # made beside, then renamed: an interrupted run leaves no half checkpoint
            part = ASSETS / f"smollm2-hf-{dtype}.part"
            shutil.rmtree(part, ignore_errors=True)
            subprocess.run([sys.executable, str(SHARED / "tools" / "make_smollm2_hf.py"), str(part),
                            "--dtype", dtype, "--gguf", gguf], check=True, capture_output=True)
            part.rename(d)
        dirs[dtype] = d
    return dirs


@pytest.fixture(scope="session")
def smollm2_q4_0(smollm2_hf, tmp_path_factory):
    """SmolLM2-135M-Instruct converted to q4_0 from the float32 checkpoint: its .llmr path."""
    from llmrun.models import convert
    path = tmp_path_factory.mktemp("smollm2-q4_0") / "smollm2-q4_0.llmr"
    convert(str(smollm2_hf["float32"]), str(path), "q4_0")
    return path


@pytest.fixture(scope="session")
def reference():
    _need_shared()
    npz = np.load(SHARED / "reference" / "reference.npz")
    return {k: npz[k] for k in npz.files}


# Tiny checkpoints of the families beyond LLaMA (llmrun/families.py), for what needs no reference
# of their own (the GPU backends against the CPU, the fuzz corpus); ../shared's checkpoints and
# transformers' logits check the families themselves (tests/test_families.py).
FAMILY_CHECKPOINTS = {
    "qwen3": dict(arch="Qwen3ForCausalLM", model_type="qwen3", head_dim=32, qk_norm=True),
    "smollm3": dict(arch="SmolLM3ForCausalLM", model_type="smollm3", no_rope_layers=[1, 0]),
    "phi3": dict(arch="Phi3ForCausalLM", model_type="phi3", fused=True, tied=False, partial_rotary_factor=0.75),
    "gemma3": dict(arch="Gemma3ForCausalLM", model_type="gemma3_text", qk_norm=True, gemma_norms=True, head_dim=32,
                   hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=4,
                   layer_types=["sliding_attention", "full_attention"], rope_local_base_freq=10000.0),
    "granite": dict(arch="GraniteForCausalLM", model_type="granite", embedding_multiplier=12.0,
                    residual_multiplier=0.22, attention_multiplier=0.0625, logits_scaling=8.0),
    "mistral-window": dict(arch="MistralForCausalLM", model_type="mistral", sliding_window=4, tied=False),
}


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """The FAMILY_CHECKPOINTS converted: {(family, type): .llmr path} for f32 and q8_0."""
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("family-models")
    out = {}
    for family, kw in FAMILY_CHECKPOINTS.items():
        make_hf_checkpoint(d / family, **kw)
        for type in ("f32", "q8_0"):
            out[family, type] = d / f"{family}-{type}.llmr"
            convert(str(d / family), str(out[family, type]), type)
    return out


# A checkpoint wide enough for the k-quants' 256-value blocks, whose feed-forward width (384) is
# not: its w_down falls back (q4_k -> q5_0, q6_k -> q8_0), as SmolLM2's 576 does in a Q4_K_M file.
WIDE = dict(hidden_size=256, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="session")
def wide_models(tmp_path_factory):
    """The WIDE LLaMA checkpoint converted on demand to a type or a k-quant mix (`--type`):
    get(type) -> (.llmr path, the set of types its tensors hold)."""
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("wide-models")
    make_hf_checkpoint(d / "hf", **WIDE)
    made = {}

    def get(type):
        if type not in made:
            path = d / f"wide-{type}.llmr"
            meta = convert(str(d / "hf"), str(path), type)
            made[type] = path, {c.split("->")[1] for c in meta["provenance"]["tensor_types"]}
        return made[type]
    return get


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny LLaMA, Qwen2 (biases, untied) and Mistral checkpoints in every type the GPU backends
    run, converted to .llmr: {(arch, type): path}."""
    from llmrun.models import convert
    d = tmp_path_factory.mktemp("gpu-models")
    out = {}
    for arch, kw in {"llama": {}, "qwen2": dict(arch="Qwen2ForCausalLM", model_type="qwen2", bias=True, tied=False),
                     "mistral": dict(arch="MistralForCausalLM", model_type="mistral", tied=False)}.items():
        make_hf_checkpoint(d / arch, **kw)
        for type in ("f16", "q8_0", "q4_0", "q4_1"):
            out[arch, type] = d / f"{arch}-{type}.llmr"
            convert(str(d / arch), str(out[arch, type]), type)
    return out
