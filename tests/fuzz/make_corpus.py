"""Write the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/seed-*.

    python tests/fuzz/make_corpus.py

Seeds are small valid inputs of every kind each parser reads (the fuzzers mutate them);
inputs that once found a bug are kept beside them as crash-* files and never rewritten here.
Deterministic: run again, the same bytes.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import gguf  # noqa: E402
from conftest import FAMILY_CHECKPOINTS, byte_level_tokenizer_json, make_hf_checkpoint, sentencepiece_model  # noqa: E402
from test_gguf import TYPE_MIXES, _tokens_for_gguf, write_tiny_gguf  # noqa: E402

import targets  # noqa: E402
from llmrun.models import convert  # noqa: E402

MICRO = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=272, max_position_embeddings=64)

TEMPLATES = {
    "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "headers": "{{ bos_token }}{% for m in messages %}{% set content = '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    "inst": "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
            "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}"
            "{% endif %}{% endfor %}",
    "namespace": "{% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %}"
                 "{% set ns.system = m.content %}{% endif %}{% endfor %}{{ ns.system | tojson }}"
                 "{% for m in messages | selectattr('role', 'ne', 'system') %}{{ m.role | upper }}: "
                 "{{ m.content }}{% if not loop.last %}\n{% endif %}{% endfor %}{{ strftime_now('%Y') | length }}",
    "loops": "{% for i in range(3) %}{% for m in messages[::-1] %}{% if loop.index > 2 %}{% break %}{% endif %}"
             "{{ m.content[:4] * 2 }}{% endfor %}{% endfor %}{{ messages | length }}{{ (messages | first).role }}",
}


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def spm_vocab_gguf(path: Path) -> None:
    """A vocabulary-only GGUF of the tiny sentencepiece model (tokenizer.ggml.model "llama")."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model("identity"))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    w.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    w.add_token_types([2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 1 for i in range(sp.get_piece_size())])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def bpe_vocab_gguf(path: Path) -> None:
    tokens, merges, types = _tokens_for_gguf()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmrun-corpus-"))
    # Hugging Face checkpoints, and the .llmr files they convert to
    for name, kw in {"bpe-tied": dict(), "spm-untied": dict(tokenizer="spm", tied=False),
                     "qwen2-bias": dict(arch="Qwen2ForCausalLM", model_type="qwen2", bias=True,
                                        dtype="bfloat16"),
                     "llama3-rope": dict(dtype="float16", rope={"rope_theta": 500000.0, "rope_scaling": {
                         "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}})}.items():
        d = tmp / name
        make_hf_checkpoint(d, **{**MICRO, **kw})
        if (d / "tokenizer.model").exists():
            (d / "tokenizer.model").write_bytes(sentencepiece_model("identity"))
        files = {f: (d / f).read_bytes() for f in targets.HF_FILES if (d / f).exists()}
        write("hf", name, targets.pack_hf(files))
        for type in ("q4_0", "q8_0") if name == "bpe-tied" else ("q4_1",) if name == "spm-untied" else ():
            out = tmp / f"{name}-{type}.llmr"
            convert(str(d), str(out), type)
            body = out.read_bytes()
            write("llmr", f"{name}-{type}", b"\x00" + body)
            write("llmr", f"{name}-{type}-fix", b"\x03" + body)
    # a checkpoint of each family beyond LLaMA (its own tensors and config keys), and its .llmr
    # (the family switches in the metadata)
    for family, kw in FAMILY_CHECKPOINTS.items():
        d = tmp / family
        make_hf_checkpoint(d, **{**kw, **MICRO, "head_dim": 16})
        files = {f: (d / f).read_bytes() for f in targets.HF_FILES if (d / f).exists()}
        write("hf", f"family-{family}", targets.pack_hf(files))
        out = tmp / f"{family}.llmr"
        convert(str(d), str(out), "q8_0")
        write("llmr", f"family-{family}-q8_0", b"\x00" + out.read_bytes())
    d = tmp / "bpe-tied"  # once more with an index naming the shard of every tensor
    files = {f: (d / f).read_bytes() for f in targets.HF_FILES if (d / f).exists()}
    n = int.from_bytes(files["model.safetensors"][:8], "little")
    names = [k for k in json.loads(files["model.safetensors"][8:8 + n]) if k != "__metadata__"]
    index = {"weight_map": {k: "model.safetensors" for k in names}}
    write("hf", "index", targets.pack_hf({**files, "model.safetensors.index.json": json.dumps(index).encode()}))

    # GGUF models
    arch, types = TYPE_MIXES["llama-runnable"]
    for name, a in (("llama-mixed", arch), ("qwen2-mixed", "qwen2")):
        path = tmp / f"{name}.gguf"
        write_tiny_gguf(path, a, types, vocab=272, dim=32, ffn=64, n_layers=1, n_heads=2, n_kv=1)
        write("gguf", name, path.read_bytes())
    path = tmp / "iq4nl.gguf"  # iq4_nl beside q5_0 and q8_0, and its .llmr (X16, as q4_0)
    write_tiny_gguf(path, *TYPE_MIXES["llama-iq4nl"], vocab=272, dim=32, ffn=64, n_layers=1, n_heads=2, n_kv=1)
    write("gguf", "llama-iq4nl", path.read_bytes())
    convert(str(path), str(tmp / "iq4nl.llmr"))
    write("llmr", "iq4nl", b"\x00" + (tmp / "iq4nl.llmr").read_bytes())
    write("llmr", "iq4nl-fix", b"\x03" + (tmp / "iq4nl.llmr").read_bytes())
    path = tmp / "kquants.gguf"  # k-quant blocks are 256 wide: the smallest model that holds them
    write_tiny_gguf(path, *TYPE_MIXES["llama-kquants"], vocab=272, dim=256, ffn=256, n_layers=1, n_heads=2, n_kv=1)
    write("gguf", "llama-kquants", path.read_bytes())
    out = tmp / "kquants.llmr"  # every k-quant kept, in the X16 layout
    convert(str(path), str(out))
    write("llmr", "kquants", b"\x00" + out.read_bytes())
    write("llmr", "kquants-fix", b"\x03" + out.read_bytes())
    path = tmp / "iq4xs.gguf"  # iq4_xs, which the importer turns into iq4_nl blocks
    write_tiny_gguf(path, *TYPE_MIXES["llama-iq4xs"], vocab=272, dim=256, ffn=256, n_layers=1, n_heads=2, n_kv=1)
    write("gguf", "llama-iq4xs", path.read_bytes())

    # tokenizers: the kind byte indexes targets.TOKENIZER_NAMES
    write("tokenizer", "bpe-json", b"\x00" + byte_level_tokenizer_json().encode())
    write("tokenizer", "spm-model", b"\x01" + sentencepiece_model("identity"))
    for name, make in (("spm-gguf", spm_vocab_gguf), ("bpe-gguf", bpe_vocab_gguf)):
        make(tmp / f"{name}.gguf")
        write("tokenizer", name, b"\x02" + (tmp / f"{name}.gguf").read_bytes())

    for name, text in TEMPLATES.items():
        write("template", name, text.encode())
    for p in sorted((HERE / "corpus").rglob("seed-*")):
        print(f"{p.stat().st_size:>8}  {p.relative_to(HERE)}")


if __name__ == "__main__":
    main()
