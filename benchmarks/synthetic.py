"""Random-weight models of real shapes, for speed comparisons beyond the small test model
(speed does not depend on the values).

    python benchmarks/synthetic.py llama-3.2-1b q4_0 OUT_DIR   ->  OUT_DIR/llama-3.2-1b-q4_0.gguf and .llmr

The GGUF (written with gguf.GGUFWriter, a sentencepiece-style vocabulary of the right size) is
what llama-bench reads; the .llmr is llmrun's lossless import of that same file.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

SHAPES = {
    "llama-3.2-1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn=8192, vocab=128256, tied=True),
    "llama-2-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn=11008, vocab=32000, tied=False),
}


def random_blocks(gtype, rows: int, cols: int, rng) -> np.ndarray:
    """Random quants with small finite scales (no NaN, no denormals), as uint8 [rows, row bytes]."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as G
    block, size = GGML_QUANT_SIZES[gtype]
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    if gtype == G.Q6_K:  # its f16 d comes last; it scales int8 sub-block scales times 6-bit quants
        data[..., 208:210] = np.array([0.0001], np.float16).view(np.uint8)
        return data.reshape(rows, -1)
    data[..., 0:2] = np.array([0.01], np.float16).view(np.uint8)  # every other type here starts with its f16 scale
    if gtype == G.Q4_1:
        data[..., 2:4] = np.array([-0.05], np.float16).view(np.uint8)
    if gtype in (G.Q4_K, G.Q5_K):  # d (above) and dmin scale 6-bit sub-block scales and mins
        data[..., 0:2] = np.array([0.002], np.float16).view(np.uint8)
        data[..., 2:4] = np.array([0.001], np.float16).view(np.uint8)
    return data.reshape(rows, -1)


def write_gguf(path: str, shape: dict, qtype: str, seed: int = 0) -> None:
    import gguf
    G = gguf.GGMLQuantizationType
    gtype = {"q4_0": G.Q4_0, "q4_1": G.Q4_1, "q8_0": G.Q8_0, "q4_k": G.Q4_K, "q5_k": G.Q5_K,
             "q6_k": G.Q6_K}[qtype]
    rng = np.random.default_rng(seed)
    d, hd = shape["dim"], shape["dim"] // shape["n_heads"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(shape["n_layers"])
    w.add_context_length(4096)
    w.add_embedding_length(d)
    w.add_feed_forward_length(shape["ffn"])
    w.add_head_count(shape["n_heads"])
    w.add_head_count_kv(shape["n_kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    n_bytes = 256
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(n_bytes)]
    tokens += [f"\u2581t{i}" for i in range(shape["vocab"] - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [0.0] * n_bytes + [-float(i) for i in range(shape["vocab"] - 3 - n_bytes)])
    w.add_token_types([2, 3, 3] + [6] * n_bytes + [1] * (shape["vocab"] - 3 - n_bytes))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def matrix(name, rows, cols):
        w.add_tensor(name, random_blocks(gtype, rows, cols, rng), raw_dtype=gtype)

    matrix("token_embd.weight", shape["vocab"], d)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    if not shape["tied"]:
        matrix("output.weight", shape["vocab"], d)
    for i in range(shape["n_layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, np.float32))
        matrix(p + "attn_q.weight", shape["n_heads"] * hd, d)
        matrix(p + "attn_k.weight", shape["n_kv_heads"] * hd, d)
        matrix(p + "attn_v.weight", shape["n_kv_heads"] * hd, d)
        matrix(p + "attn_output.weight", d, shape["n_heads"] * hd)
        matrix(p + "ffn_gate.weight", shape["ffn"], d)
        matrix(p + "ffn_up.weight", shape["ffn"], d)
        matrix(p + "ffn_down.weight", d, shape["ffn"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("type", choices=["q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k"])  # k-quants: rows must be multiples of 256
    ap.add_argument("out_dir")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    stem = os.path.join(a.out_dir, f"{a.shape}-{a.type}")
    write_gguf(stem + ".gguf", SHAPES[a.shape], a.type)
    from llmrun.models import convert
    convert(stem + ".gguf", stem + ".llmr")
    print(f"wrote {stem}.gguf and {stem}.llmr")


if __name__ == "__main__":
    main()
