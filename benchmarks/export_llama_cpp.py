"""llama.cpp reads what `llmrun export` writes (issue 22's acceptance; figures for the closing
note, not CI):

    LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin python benchmarks/export_llama_cpp.py MODEL.llmr ... \
        [--text ../shared/data/janeausten/prideprejudice.txt --chunks 20]

For each MODEL: exports it to GGUF, then llama-perplexity on the text (c=512) beside `llmrun
perplexity` on the same .llmr (llama.cpp multiplies in 8-bit activations for quantised weights,
so the two differ a little). For the first MODEL: llama-tokenize on the export against llmrun's ids
on every test string of ../shared/tokenizers, and llama.cpp's rendering of its chat template
example (llama-completion -cnv --jinja) against llmrun's. Then, for each of llama.cpp's test
vocabularies, a tiny random model carrying it is exported and llama-tokenize's ids on the export
are held to the vocabulary's reference ids (.out).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
TOK = ROOT.parent / "shared" / "tokenizers"
VOCABS = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2"]


def lc(tool: str) -> str:
    bin_dir = os.environ.get("LLAMA_CPP_BIN") or sys.exit("set LLAMA_CPP_BIN to llama.cpp's build/bin")
    return os.path.join(bin_dir, tool)


def llama_tokenize(gguf, texts, work) -> list:
    out = []
    for text in texts:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", delete=False, dir=work) as f:
            f.write(text)
        r = subprocess.run([lc("llama-tokenize"), "-m", str(gguf), "-f", f.name, "--ids", "--no-bos", "--no-escape",
                            "--log-disable"], capture_output=True, text=True)
        os.unlink(f.name)
        lines = [line for line in r.stdout.splitlines() if line.startswith("[")]
        out.append(json.loads(lines[-1]) if lines else None)
    return out


def test_strings(vocab):
    texts = (TOK / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").removesuffix("\n")
    lines = (TOK / f"ggml-vocab-{vocab}.gguf.out").read_text().split("\n")
    return texts, [[int(x) for x in line.split()] for line in lines[:len(texts)]]


def perplexity(model, gguf, text, chunks):
    r = subprocess.run([lc("llama-perplexity"), "-m", str(gguf), "-f", text, "-c", "512", "--chunks", str(chunks),
                        "-b", "512"], capture_output=True, text=True)
    theirs = float(re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)[1])
    r = subprocess.run([sys.executable, "-m", "llmrun.cli.main", "perplexity", str(model), "-f", text, "-c", "512",
                        "--chunks", str(chunks), "-o", "json"], capture_output=True, text=True, check=True)
    ours = json.loads(r.stdout)["ppl"]
    print(f"{Path(model).name}: llama-perplexity {theirs:.4f}, llmrun {ours:.4f} ({(theirs / ours - 1) * 100:+.2f}%)")


def main():
    import llmrun
    from llmrun.chat import render_chat
    from llmrun.models import export
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "janeausten" / "prideprejudice.txt"))
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--work", default=tempfile.mkdtemp(prefix="export-llama-cpp-"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ggufs = []
    for model in a.models:
        ggufs.append(work / (Path(model).stem + ".gguf"))
        export(model, str(ggufs[-1]))
        if a.chunks:
            perplexity(model, ggufs[-1], a.text, a.chunks)

    m = llmrun.load(a.models[0])
    total = agree = 0
    for vocab in VOCABS:
        texts, _ = test_strings(vocab)
        for text, ids in zip(texts, llama_tokenize(ggufs[0], texts, work)):
            total, agree = total + 1, agree + (ids == m.tokenizer.encode(text, add_special_tokens=False))
    print(f"llama-tokenize on {ggufs[0].name} == llmrun's ids on {agree}/{total} shared test strings")

    messages = [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "How are you?"}]
    r = subprocess.run([lc("llama-completion"), "-m", str(ggufs[0]), "-cnv", "--jinja", "-n", "1", "-c", "256"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    log = r.stdout + r.stderr
    marker = "chat template example:\n"
    theirs = log[log.find(marker) + len(marker):].split("\n\n")[0] if marker in log else None
    ours = render_chat(m, messages, add_generation_prompt=True)
    # the log line ends where the example does, so a final newline of the template cannot be told apart
    print(f"chat template example: llama.cpp's == llmrun's: {theirs is not None and ours.rstrip(chr(10)) == theirs}")

    from conftest import make_hf_checkpoint
    from llmrun.format import LlmrFile, PendingTensor, write
    from llmrun.models import convert
    from llmrun.models.gguf_file import GGUFFile
    from llmrun.models.gguf_tokenizer import tokenizer_from_gguf
    for vocab in VOCABS:
        meta = GGUFFile(str(TOK / f"ggml-vocab-{vocab}.gguf")).metadata
        info, blob = tokenizer_from_gguf(meta)
        d = work / f"vocab-{vocab}"
        make_hf_checkpoint(d / "hf", vocab_size=len(meta["tokenizer.ggml.tokens"]))
        convert(str(d / "hf"), str(d / "tmp.llmr"), "f32")
        f = LlmrFile(d / "tmp.llmr")
        write(str(d / "m.llmr"), dict(f.metadata, tokenizer=info, chat_template=None), blob,
              [PendingTensor(k, i.type, i.shape, lambda k=k: [f.tensor(k).rows()]) for k, i in f.tensors.items()])
        export(str(d / "m.llmr"), str(d / "m.gguf"))
        texts, expected = test_strings(vocab)
        got = llama_tokenize(d / "m.gguf", texts, work)
        print(f"{vocab}: llama-tokenize on the export == llama.cpp's reference ids on "
              f"{sum(g == e for g, e in zip(got, expected))}/{len(texts)} strings")


if __name__ == "__main__":
    main()
