"""The `llmrun` command line. User errors print one line to stderr and exit 1."""
from __future__ import annotations

import math
import os
import signal
import sys
from collections import Counter
from typing import Annotated, Optional

import typer

from llmrun.quant.mixes import names as _mix_names  # the type table and the mixes: no numpy, so
from llmrun.quant.types import names as _type_names  # cheap at start-up



def _types_help() -> str:
    mixes = _mix_names()
    return _type_names() + (f", or a k-quant mix: {mixes}" if mixes else "")


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run LLaMA-style models from one memory-mapped .llmr file.")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _read_text(path: str) -> str:
    """A UTF-8 text file the user named, or one error line saying why not."""
    from llmrun.errors import LlmrunError
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LlmrunError(f"cannot read {path}: {e}") from None


class _Progress:
    """A progress bar on stderr fed (done, total) byte counts; silent when stderr is not a
    terminal, so logs and pipes get no bar debris."""

    def __init__(self, label: str):
        self.label, self.bar, self.done = label, None, 0
        self.shown = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.shown:
            return
        if self.bar is None:
            self.bar = typer.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=False)
            self.bar.__enter__()
        self.bar.label = self.label  # a label may carry a running figure
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@app.command()
def convert(src: str = typer.Argument(..., help="Hugging Face checkpoint directory, GGUF file or Hub name (org/repo[:QUANT])"),
            out: str = typer.Argument(..., help="the .llmr file to write"),
            type: Optional[str] = typer.Option(None, "--type", "-t", help=f"{_types_help()} (default: a GGUF's own "
                                               "types, f16 for a checkpoint)"),
            allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                                  help="let a k-quant mix quantise a GGUF's quantised tensors again")):
    """Convert a checkpoint into one .llmr file (norms and biases stay f32)."""
    from llmrun import store
    from llmrun.models import convert as run_convert
    from llmrun.quant.policy import target
    if type is not None:
        target(type)  # a bad --type (or a mix of types we cannot store) fails before any work
    src = store.source(src)
    bar = _Progress(f"converting to {type or 'llmr'}")
    try:
        meta = run_convert(src, out, type, bar, allow_requantize=allow_requantize)
    finally:
        bar.close()
    cfg, prov = meta["config"], meta["provenance"]
    types = ", ".join(f"{k} x{v}" for k, v in prov["tensor_types"].items())
    typer.echo(f"wrote {out}: {cfg['arch']}, {cfg['n_layers']} layers, dim {cfg['dim']}, "
               f"{_bytes(os.path.getsize(out))}; tensors: {types}", err=True)


MODEL_HELP = (".llmr file, GGUF file, Hugging Face checkpoint directory, Hub name (org/repo[@REVISION][:QUANT], "
              "or its address) or model name (default: smollm2-135m-instruct, downloaded on first use)")


def _open_model(model: Optional[str], backend: Optional[str] = None, kv_type: Optional[str] = None):
    """Load what the user named, fetching the default model or converting a GGUF/checkpoint
    into the cache on first use, for the backend and KV cache type asked for."""
    import llmrun
    from llmrun import store
    bar = _Progress("converting")
    try:
        path = store.resolve(model, download=True, progress=bar)
    finally:
        bar.close()
    return llmrun.load(path, backend=backend, kv_type=kv_type)


Backend = Annotated[Optional[str], typer.Option("--backend", help="cpu, webgpu or cuda (default: LLMRUN_BACKEND, else cpu)")]
KvType = Annotated[Optional[str], typer.Option("--kv-type", help="the KV cache's element type: f32; f16 for half its "
                                               "memory (CPU, WebGPU); q8_0 for 0.27x (CPU) (default: LLMRUN_KV_TYPE, "
                                               "else f32)")]

# Sampling options shared by generate and chat.
Temp = Annotated[float, typer.Option("--temp", min=0.0, help="temperature; 0 is greedy")]
TopK = Annotated[int, typer.Option("--top-k", min=0, help="keep the k likeliest tokens; 0 disables")]
def _top_p(value: float) -> float:
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value} is not in (0, 1]; 1 keeps every token")
    return value


TopP = Annotated[float, typer.Option("--top-p", callback=_top_p, help="keep the likeliest tokens up to this mass (0, 1]")]
MinP = Annotated[float, typer.Option("--min-p", min=0.0, max=0.99, help="drop tokens under this fraction of the top one's probability")]
RepeatPenalty = Annotated[float, typer.Option("--repeat-penalty", min=0.01, help="1.0 disables")]
RepeatWindow = Annotated[int, typer.Option("--repeat-window", min=0, help="tokens the repeat penalty looks back over")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="fix the random draws")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="end the reply at this text (repeatable)")]
Ctx = Annotated[Optional[int], typer.Option("--ctx", min=16, help="context size in tokens")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, max=512,
                                                help="kernel threads (default: LLMRUN_THREADS, else physical cores)")]


def _set_threads(n: Optional[int]) -> None:
    if n is not None:
        from llmrun import _kernels
        _kernels.set_threads(n)


@app.command()
def generate(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
             prompt: str = typer.Option(..., "--prompt", "-p", help="the prompt; - reads it from stdin"),
             n: int = typer.Option(128, "--n-predict", "--max-tokens", "-n", min=1, help="tokens to generate"),
             temp: Temp = 0.8, top_k: TopK = 40, top_p: TopP = 0.95, min_p: MinP = 0.0,
             repeat_penalty: RepeatPenalty = 1.0, repeat_window: RepeatWindow = 64, seed: Seed = None,
             stop: Stop = None, ctx: Ctx = None, threads: Threads = None, backend: Backend = None, kv_type: KvType = None,
             raw: bool = typer.Option(False, "--raw", help="continue the prompt as is, without the model's chat template"),
             json_schema: Optional[str] = typer.Option(None, "--json-schema", help="a JSON schema file: the answer is "
                                                       "JSON valid against it (needs llmrun[agents])"),
             grammar: Optional[str] = typer.Option(None, "--grammar", help="a Lark grammar file (llguidance's dialect): "
                                                   "the answer is in its language (needs llmrun[agents])")):
    """Answer a prompt (through the model's chat template, if it has one) or, with --raw,
    continue it; text streams to stdout, speeds to stderr."""
    import llmrun
    from llmrun.chat import chat_ids
    from llmrun.grammar import as_grammar
    if json_schema and grammar:
        raise typer.BadParameter("give --json-schema or --grammar, not both", param_hint="--grammar")
    if prompt == "-":
        prompt = sys.stdin.read()
    _set_threads(threads)
    m = _open_model(model, backend, kv_type)
    # checked before any work: a bad schema or grammar is one line
    constraint = as_grammar(m.tokenizer, json_schema=_read_text(json_schema) if json_schema else None,
                            grammar=_read_text(grammar) if grammar else None)
    cache = m.new_cache(ctx) if ctx else None
    if m.chat_template and not raw:
        prompt = chat_ids(m, [{"role": "user", "content": prompt}])
    last = None
    for last in llmrun.generate(m, prompt, max_tokens=n, temperature=temp, top_k=top_k,
                                top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                repeat_window=repeat_window, seed=seed, stop=stop, cache=cache, grammar=constraint):
        sys.stdout.write(last.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if last.finish_reason == "length" and last.generation_tokens < n:
        size = cache.n_ctx if cache else m.config.max_seq_len
        typer.echo(f"[the reply was cut after {last.generation_tokens} tokens: the context of {size} positions "
                   "is full; --ctx sets it]", err=True)
    typer.echo(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s | "
               f"generated: {last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s | "
               f"finish: {last.finish_reason}", err=True)


@app.command()
def chat(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
         system: Optional[str] = typer.Option(None, "--system", help="system message"),
         system_file: Optional[str] = typer.Option(None, "--system-file", help="read the system message from a file"),
         chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja file to use instead of the model's template"),
         max_tokens: int = typer.Option(1024, "--max-tokens", "-n", min=1, help="longest reply, in tokens"),
         temp: Temp = 0.8, top_k: TopK = 40, top_p: TopP = 0.95, min_p: MinP = 0.05,
         repeat_penalty: RepeatPenalty = 1.0, repeat_window: RepeatWindow = 64, seed: Seed = None,
         stop: Stop = None, ctx: Ctx = None, threads: Threads = None, backend: Backend = None, kv_type: KvType = None,
         context_overflow: str = typer.Option("shift", "--context-overflow", help="when the context is full: "
                                              "shift (drop the oldest turns) or stop"),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="speeds and context use after each reply"),
         single: bool = typer.Option(False, "--single", help="without a terminal: the whole input is one message")):
    """Talk with a model in the terminal (one message per line when stdin is not a terminal)."""
    from llmrun.chat import ChatSession, Settings
    from .chat import run
    if system_file:
        with open(system_file, encoding="utf-8") as f:
            system = f.read()
    template = None
    if chat_template:
        with open(chat_template, encoding="utf-8") as f:
            template = f.read()
    _set_threads(threads)
    m = _open_model(model, backend, kv_type)
    settings = Settings(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, repeat_window=repeat_window, seed=seed, max_tokens=max_tokens)
    session = ChatSession(m, system=system, template=template, n_ctx=ctx, overflow=context_overflow,
                          settings=settings, stop=stop or ())
    if ctx is None and (why := m.default_context()[1]):
        typer.echo(f"[context: {why}]", err=True)
    raise typer.Exit(run(session, verbose=verbose, single=single))


@app.command()
def bench(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
          n_prompt: int = typer.Option(512, "--n-prompt", "-p", min=0, help="prompt tokens (pp test); 0 skips"),
          n_gen: int = typer.Option(128, "--n-gen", "-n", min=0, help="generated tokens (tg test); 0 skips"),
          threads: str = typer.Option("1,2", "--threads", "-t", help="comma-separated thread counts"),
          repetitions: int = typer.Option(3, "--repetitions", "-r", min=1),
          depth: int = typer.Option(0, "--n-depth", "-d", min=0, help="tokens already in the context when each "
                                    "test starts (filled once, untimed), as llama-bench's -d"),
          output: str = typer.Option("md", "--output", "-o", help="md, json or csv"), backend: Backend = None,
          kv_type: KvType = None):
    """Measure prompt and generation speed, like llama-bench."""
    import json
    from llmrun.bench import bench as run_bench
    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{threads!r} is not a list of numbers", param_hint="--threads") from None
    if output not in ("md", "json", "csv"):
        raise typer.BadParameter(f"{output!r}: use md, json or csv", param_hint="--output")
    m = _open_model(model, backend, kv_type)
    results = run_bench(m, os.path.basename(m.file.path), n_prompt, n_gen, counts, repetitions, depth=depth)
    if output == "json":
        typer.echo(json.dumps([r.to_dict() for r in results], indent=1))
        return
    rows = [(r.model, _bytes(r.model_bytes), f"{r.params / 1e6:.1f}M", r.type, r.kv_type, r.isa, str(r.threads), r.test,
             f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}", f"{r.gb_s:.1f}" if r.gb_s is not None else "")
            for r in results]
    head = ("model", "size", "params", "type", "kv", "isa", "threads", "test", "t/s", "GB/s")
    if output == "csv":
        for row in [head, *rows]:
            typer.echo(",".join(row))
        return
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    typer.echo("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    typer.echo("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        typer.echo("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


@app.command()
def serve(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback: this machine only)"),
          port: int = typer.Option(8080, "--port", min=0, max=65535, help="port to listen on (0: any free one)"),
          parallel: int = typer.Option(4, "--parallel", "-np", min=1, max=256,
                                       help="requests decoded together, each in its own KV cache slot"),
          ctx_size: Optional[int] = typer.Option(None, "--ctx-size", "--ctx", "-c", min=16,
                                                 help="context of each slot in tokens (default: the model's)"),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LLMRUN_API_KEY",
                                                help="require 'Authorization: Bearer KEY' (or set LLMRUN_API_KEY)"),
          max_queue: int = typer.Option(64, "--max-queue", min=0, help="requests that may wait for a slot; "
                                        "more are answered 503"),
          batch_size: int = typer.Option(512, "--batch-size", "-b", min=1, help="prompt tokens run per step "
                                         "(a long prompt runs in pieces, so the others keep streaming)"),
          alias: Optional[str] = typer.Option(None, "--alias", help="the model's name in the API (default: its file's)"),
          chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Jinja file to use instead of the "
                                                      "model's template (one that renders tools, say)"),
          temp: Temp = 0.8, top_k: TopK = 40, top_p: TopP = 0.95, min_p: MinP = 0.0,
          repeat_penalty: RepeatPenalty = 1.0, threads: Threads = None, backend: Backend = None, kv_type: KvType = None):
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /v1/models), decoding concurrent requests together. Sampling options are the defaults for
    requests that leave them out."""
    from llmrun.server import serve as run_server
    template = _read_text(chat_template) if chat_template else None
    _set_threads(threads)
    m = _open_model(model, backend, kv_type)
    if template is not None:
        m.chat_template = template
    run_server(m, host, port, parallel=parallel, n_ctx=ctx_size, api_key=api_key, max_queue=max_queue,
               batch_size=batch_size, model_id=alias or _model_id(model),
               defaults={"temperature": temp, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                         "repeat_penalty": repeat_penalty})


def _model_id(model: Optional[str]) -> Optional[str]:
    """The model's name in the API: a Hub name as given, else its file's name."""
    from llmrun import store
    if not model:
        return None
    return str(store.hub_name(model) or "") or os.path.splitext(os.path.basename(model.rstrip("/")))[0]


@app.command()
def quantize(src: str = typer.Argument(..., help="a .llmr file, Hugging Face checkpoint directory, GGUF file or "
                                                  "Hub name (org/repo[:QUANT])"),
             out: Optional[str] = typer.Argument(None, help="the .llmr file to write (default: SRC's name with "
                                                                 "the type, beside it)"),
             type: str = typer.Option(..., "--type", "-t", help=_types_help()),
             output_type: Optional[str] = typer.Option(None, "--output-type", help="type of the output head"),
             embedding_type: Optional[str] = typer.Option(None, "--embedding-type", help="type of the embedding table"),
             tensor_type: list[str] = typer.Option([], "--tensor-type",
                                                   help="REGEX=TYPE: tensors whose name matches REGEX get TYPE "
                                                        "(repeatable; the first match wins)"),
             pure: bool = typer.Option(False, "--pure", help="every matrix in --type (no default policy)"),
             allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                                   help="quantise tensors that are already quantised"),
             calibrate: Optional[str] = typer.Option(None, "--calibrate",
                                                     help="a text to measure activations on: the scales of every "
                                                          "quantised type but q8_0 then minimise the error "
                                                          "weighted by them"),
             calibrate_chunks: int = typer.Option(16, "--calibrate-chunks", min=1,
                                                  help="512-token chunks of the --calibrate text to run")):
    """Quantise a model by a per-tensor policy: norms f32, embeddings and output head one step up,
    wk / wv / w_down at q8_0 for 4-bit types, unless overridden."""
    import dataclasses
    import re
    from llmrun.models import quantize as run_quantize
    from llmrun.quant import qtype
    from llmrun.quant.policy import target
    try:
        overrides = []
        for spec in tensor_type:
            pattern, sep, name = spec.rpartition("=")
            if not sep or not pattern:
                raise typer.BadParameter(f"{spec!r}: use REGEX=TYPE", param_hint="--tensor-type")
            re.compile(pattern)
            overrides.append((pattern, qtype(name)))
        policy = dataclasses.replace(target(type), output_type=qtype(output_type) if output_type else None,
                                     embedding_type=qtype(embedding_type) if embedding_type else None,
                                     tensor_types=tuple(overrides), pure=pure, allow_requantize=allow_requantize)
    except re.error as e:
        raise typer.BadParameter(f"bad regular expression: {e}", param_hint="--tensor-type") from None
    from llmrun import store
    name = store.hub_name(src)
    src = store.source(src)
    if calibrate:
        import llmrun
        from llmrun.quant.calibrate import importance_of_text
        text = _read_text(calibrate)
        shown = sys.stderr.isatty()
        # a checkpoint or GGUF runs as its lossless import, from the cache
        stats, n = importance_of_text(llmrun.load(src), text, calibrate_chunks,
                                      say=(lambda m: print(f"\r{m}", end="", file=sys.stderr, flush=True))
                                      if shown else None)
        if shown:
            print(file=sys.stderr)
        policy = dataclasses.replace(policy, importance=stats, calibration=f"{os.path.basename(calibrate)}, {n} tokens")
    if out is None:  # beside the source; a Hub name's here, named after its repository
        stem = name.repo.split("/")[1] if name else os.path.splitext(os.path.basename(os.path.normpath(src)))[0]
        scheme = policy.name + ("-pure" if pure else "") + ("-cal" if calibrate else "")
        out = os.path.join("." if name else os.path.dirname(os.path.abspath(src)), f"{stem}-{scheme}.llmr")
    bar = _Progress(f"quantizing to {policy.name}")
    try:
        meta = run_quantize(src, out, policy, bar)
    finally:
        bar.close()
    types = meta["provenance"]["tensor_types"]
    typer.echo(f"wrote {out} ({_bytes(os.path.getsize(out))}): " + ", ".join(f"{k} x{v}" for k, v in types.items()))


@app.command()
def export(model: str = typer.Argument(..., help=MODEL_HELP.replace(" (default: smollm2-135m-instruct, downloaded "
                                                                    "on first use)", "")),
           out: str = typer.Argument(..., help="the GGUF file, or (--format hf) the checkpoint folder, to write"),
           format: str = typer.Option("gguf", "--format", "-f", help="gguf (llama.cpp, ollama: every tensor in "
                                      "its stored type, lossless) or hf (transformers, vLLM, SGLang, TGI)"),
           dtype: Optional[str] = typer.Option(None, "--dtype", help="--format hf: bf16 (default), f16 or f32")):
    """Export a model to run it on another engine: GGUF for llama.cpp (its RPC backend spans
    machines), a Hugging Face checkpoint for GPU servers."""
    from llmrun import store
    from llmrun.models import check_export, export as run_export
    check_export(format, dtype)  # before a model is fetched or converted
    bar = _Progress("converting")
    try:
        path = store.resolve(model, download=True, progress=bar)
    finally:
        bar.close()
    bar = _Progress(f"exporting to {format}")
    try:
        done = run_export(path, out, format, dtype, bar, say=lambda m: typer.echo(m, err=True))
    finally:
        bar.close()
    types = ", ".join(f"{k} x{v}" for k, v in done["tensor_types"].items())
    typer.echo(f"wrote {out}: {done['arch']}, {_bytes(done['bytes'])}; tensors: {types}", err=True)


@app.command("quant-report")
def quant_report(src: str = typer.Argument(..., help="the model to sweep: a checkpoint directory, GGUF or .llmr"),
                 types: str = typer.Option("f16,q8_0,q4_1,q4_0", "--types", help="comma-separated types and k-quant mixes"),
                 text_file: str = typer.Option(..., "--file", "-f", help="the text for perplexity and KLD"),
                 ctx: int = typer.Option(512, "--ctx-size", "-c", min=4),
                 chunks: Optional[int] = typer.Option(None, "--chunks", min=1, help="score only the first N chunks"),
                 out_dir: Optional[str] = typer.Option(None, "--out-dir", "-o",
                                                       help="where the quantised models and the report go "
                                                            "(default: quant-report-<name> here)"),
                 threads: Optional[int] = typer.Option(None, "--threads", min=1, help="threads for the speed test"),
                 calibrate: Optional[str] = typer.Option(None, "--calibrate",
                                                         help="also each type or mix with a calibrated quantiser, calibrated on this text (rows *-cal)")):
    """Quantise a model to several types and measure each: size, PPL, KLD and top-1 agreement against
    the highest-precision type, pp512 / tg128; a Markdown table, CSV, JSON and a PNG."""
    from llmrun import quant_report as qr
    text = _read_text(text_file)
    calibration = _read_text(calibrate) if calibrate else None
    name = os.path.splitext(os.path.basename(os.path.normpath(src)))[0]
    out_dir = out_dir or f"quant-report-{name}"
    rows = qr.sweep(src, [t for t in types.split(",") if t], text, out_dir, ctx, chunks, threads=threads,
                    say=lambda msg: print(msg, file=sys.stderr, flush=True), calibration=calibration)
    written = qr.write(rows, out_dir, f"{name}: {os.path.basename(text_file)}, c={ctx}, "
                                      f"{rows[0]['chunks']} chunks; KLD against {rows[0]['type']}")
    typer.echo(qr.markdown(rows))
    typer.echo("wrote " + ", ".join(written))
    if not any(p.endswith(".png") for p in written):
        typer.echo("for the picture: pip install 'llmrun[plot]' (matplotlib) and run again", err=True)


@app.command()
def perplexity(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
               text_file: str = typer.Option(..., "--file", "-f", help="the text to score (UTF-8)"),
               ctx: int = typer.Option(512, "--ctx-size", "-c", min=4, help="tokens per chunk"),
               chunks: Optional[int] = typer.Option(None, "--chunks", min=1, help="score only the first N chunks"),
               batch: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1,
                                                   help="tokens per forward call (default: a whole chunk)"),
               save_logits: Optional[str] = typer.Option(None, "--save-logits",
                                                         help="save this model's top log-probabilities (a .npz) "
                                                              "for --kl-divergence"),
               kl_divergence: Optional[str] = typer.Option(None, "--kl-divergence",
                                                           help="compare with log-probabilities saved by "
                                                                "--save-logits: KLD, top-1 agreement, PPL ratio"),
               output: str = typer.Option("md", "--output", "-o", help="md or json"), backend: Backend = None,
               kv_type: KvType = None):
    """Perplexity of a text, by llama.cpp's method: chunks of -c tokens, the second half of each scored."""
    import json
    from llmrun import perplexity as ppl
    if output not in ("md", "json"):
        raise typer.BadParameter(f"{output!r}: use md or json", param_hint="--output")
    text = _read_text(text_file)
    base = ppl.load(kl_divergence) if kl_divergence else None
    m = _open_model(model, backend, kv_type)
    tokens = m.tokenizer.encode(text)
    bar = _Progress("perplexity")

    def progress(done, total, running):
        bar.label = f"perplexity [{done}/{total}] PPL {running:.4f}"
        bar(done, total)

    try:
        run = ppl.perplexity(m, tokens, ctx, chunks, batch, keep_top=bool(save_logits), base=base, progress=progress)
    finally:
        bar.close()
    if save_logits:
        ppl.save(save_logits, run)
    r = run.report()
    if output == "json":
        typer.echo(json.dumps(r, indent=1))
        return
    typer.echo(f"PPL = {r['ppl']:.4f} +/- {r['ppl_err']:.4f}  ({r['chunks']} chunks of {ctx}, {r['scored']} tokens scored)")
    if base is not None:
        typer.echo(f"base PPL = {r['base_ppl']:.4f} +/- {r['base_ppl_err']:.4f}; ratio {r['ppl_ratio']:.5f} +/- "
                   f"{r['ppl_ratio_err']:.5f}; delta {r['ppl_delta']:+.4f} +/- {r['ppl_delta_err']:.4f}")
        typer.echo(f"KLD mean {r['kld_mean']:.6f} +/- {r['kld_mean_err']:.6f}, median {r['kld_median']:.6f}, "
                   f"p99 {r['kld_p99']:.6f}, max {r['kld_max']:.6f}; top-1 agreement {r['top1_agreement']:.2f}%")


def _switch(name: str, value) -> str:
    """One family switch as `info` shows it: a flag by its name, a number or list after it."""
    if value is True:
        return name
    if isinstance(value, float):
        return f"{name} {value:.6g}"
    if isinstance(value, list):
        return f"{name} {','.join(map(str, value))}"
    return f"{name} {value}"


@app.command()
def info(model: Optional[str] = typer.Argument(None, help=MODEL_HELP),
         verify: bool = typer.Option(False, "--verify", help="check every tensor's checksum"),
         tensors: bool = typer.Option(False, "--tensors", help="list every tensor"),
         backends: bool = typer.Option(False, "--backends", help="list the backends and GPU adapters found, "
                                                                 "and load no model")):
    """Show a model's config, tensor types and sizes, and the kernel path in use."""
    from llmrun.backends import cpu
    from llmrun.quant.layout import NAMES as LAYOUT_NAMES
    if backends:
        _show_backends()
        return
    m = _open_model(model)
    f = m.file
    cfg = m.config
    typer.echo(f"file:        {f.path} ({_bytes(os.path.getsize(f.path))})")
    typer.echo(f"model:       {cfg.arch}, {cfg.n_layers} layers, dim {cfg.dim}, ffn {cfg.ffn_dim}, "
               f"heads {cfg.n_heads}/{cfg.n_kv_heads} (q/kv), head dim {cfg.head_dim}, vocab {cfg.vocab_size}")
    from llmrun.families import family, switches_of
    typer.echo(f"family:      {cfg.arch}: {family(cfg.arch).summary}")
    if switches_of(cfg):
        typer.echo("switches:    " + ", ".join(_switch(k, v) for k, v in switches_of(cfg).items()))
    typer.echo(f"context:     {cfg.max_seq_len}, rope theta {cfg.rope_theta:g}"
               + (f", scaling {cfg.rope_scaling}" if cfg.rope_scaling else ""))
    typer.echo(f"embeddings:  {'tied' if cfg.tie_embeddings else 'untied'}"
               f"{', q/k/v biases' if cfg.attn_bias else ''}")
    tok = m.tokenizer
    typer.echo(f"tokenizer:   {tok.kind}, {tok.vocab_size} tokens, bos {tok.bos_id}, eos {tok.eos_ids}"
               f"{', chat template' if m.chat_template else ''}")
    count, size = Counter(), Counter()
    for t in f.tensors.values():
        count[t.type.name] += 1
        size[t.type.name] += t.nbytes
    n_params = sum(math.prod(t.shape) for t in f.tensors.values())
    typer.echo(f"tensors:     {len(f.tensors)}, {n_params / 1e6:.1f}M parameters: "
               + ", ".join(f"{k} x{count[k]} ({_bytes(size[k])})" for k in sorted(count)))
    prov = f.metadata.get("provenance", {})
    typer.echo(f"provenance:  {prov.get('source_format', '?')} {prov.get('source', '')}, "
               f"{prov.get('converter', '?')}, type {prov.get('type', '?')}")
    if prov.get("tensor_types"):
        typer.echo("conversion:  " + ", ".join(f"{k} x{v}" for k, v in prov["tensor_types"].items()))
    prefetch = f", {cpu.prefetch()} prefetch" if cpu.prefetch() else ""
    typer.echo(f"kernels:     {cpu.isa()}, {cpu.threads()} threads{prefetch}")
    if tensors:
        for t in f.tensors.values():
            layout = LAYOUT_NAMES[t.layout]
            typer.echo(f"  {t.name:40s} {t.type.name:5s} {str(list(t.shape)):16s} {layout:4s} crc32 {t.crc32:08x}")
    if verify:
        bar = _Progress("verifying")
        try:
            bad = f.verify(bar)
        finally:
            bar.close()
        if bad:
            typer.echo(f"llmrun: error: {f.path}: checksum mismatch in {len(bad)} tensors, the first {bad[0]}: "
                       "the file is corrupt; download or convert it again", err=True)
            raise typer.Exit(1)
        typer.echo(f"verify:      all {len(f.tensors)} tensor checksums match")


def _show_backends() -> None:
    from llmrun.backends import cpu, cuda, webgpu
    from llmrun.errors import LlmrunError
    typer.echo(f"cpu:     {cpu.isa()}, {cpu.threads()} threads")
    try:
        found = webgpu.adapters()
        if not found:
            typer.echo("webgpu:  no adapter found (on Linux: install a Vulkan driver, e.g. mesa-vulkan-drivers)")
        for a in found:
            typer.echo(f"webgpu:  {a['name']} ({a['backend']}, {a['type']}); shader-f16 {'yes' if a['f16'] else 'no'}, "
                       f"subgroups {'yes' if a['subgroups'] else 'no'}, storage binding up to {_bytes(a['max_binding'])}")
    except LlmrunError as e:
        typer.echo(f"webgpu:  unavailable: {e}")
    try:
        found = cuda.devices()
        if not found:
            typer.echo("cuda:    no CUDA GPU found (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
        for i, d in enumerate(found):
            typer.echo(f"cuda:    {i}: {d['name']}, compute capability {d['capability']}, {_bytes(d['memory'])}")
    except LlmrunError as e:
        typer.echo(f"cuda:    unavailable: {e}")


@app.command()
def selftest(backend: str = typer.Option("webgpu", "--backend", help="the GPU backend to check against the CPU: "
                                                                      "webgpu or cuda")):
    """Check a GPU backend against the CPU on small random models, one per weight type; prints
    PASS or FAIL (exit 1) for each."""
    from llmrun import selftest as st
    failed = 0
    for c in st.run(backend):
        failed += not c.passed
        typer.echo(f"{'PASS' if c.passed else 'FAIL'}  {c.type:5s} argmax {'same' if c.argmax_same else 'DIFFERS'} "
                   f"at every position, max |logit difference| {c.max_diff:.1e} of the largest (bound {st.BOUND:g})")
    raise typer.Exit(1 if failed else 0)


@app.command()
def tokenize(model: str = typer.Argument(..., help=".llmr, GGUF (vocabulary-only too), tokenizer.model, "
                                                  "tokenizer.json or Hugging Face directory"),
             text: str = typer.Argument(...),
             no_special: bool = typer.Option(False, "--no-special", help="do not add BOS or other special tokens")):
    """Print the token ids of TEXT."""
    import llmrun
    tok = llmrun.load_tokenizer(model)
    typer.echo(" ".join(map(str, tok.encode(text, add_special_tokens=not no_special))))


@app.command()
def pull(model: str = typer.Argument("smollm2-135m-instruct", help="Hub name (org/repo[@REVISION][:QUANT], or its "
                                     "address), model name, GGUF file or checkpoint directory")):
    """Download a model into the cache and convert it (a Hub name: asks the Hub for its newest
    files, even when a copy is here); prints its path."""
    from llmrun import store
    bar = _Progress("converting")
    try:
        name = store.hub_name(model)
        path = store.pull_hub(name, bar) if name else store.resolve(model, download=True, progress=bar)
    finally:
        bar.close()
    typer.echo(path)


def _ago(t: float) -> str:
    import time
    s = max(0, time.time() - t)
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            return f"{int(s // n)} {unit}{'s' if s >= 2 * n else ''} ago"
    return "just now"


def _table(head: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


@app.command("list")
def list_models(remote: Optional[str] = typer.Option(None, "--remote", metavar="ORG/REPO",
                                                     help="list a Hub repository's quantisations and sizes instead")):
    """Show the models in the cache ($LLMRUN_HOME, default ~/.cache/llmrun): name, quantisation,
    size, path, last used."""
    from llmrun import hub, store
    if remote:
        _list_remote(remote)
        return
    models = store.cached()
    if not models:
        typer.echo(f"no models in {store.home()}; `llmrun pull` fetches the default one, `llmrun pull org/repo` "
                   "one from the Hub", err=True)
        return
    _table(("NAME", "QUANT", "SIZE", "LAST USED", "PATH"),
           [(m.name + ("*" if m.earlier else ""), m.quant, hub._size(m.size), _ago(m.last_used), m.path)
            for m in models])
    earlier = {m.path: m.size for m in models if m.earlier}  # by path: two tags may share one file
    if earlier:
        typer.echo(f"* converted by another llmrun version ({hub._size(sum(earlier.values()))} in all): "
                   "`llmrun pull NAME` converts a Hub name again, a path is converted again on its next use, "
                   "and `llmrun rm PATH` frees an old file", err=True)


def _list_remote(text: str) -> None:
    from llmrun import hub
    from llmrun.errors import LlmrunError
    name = hub.parse(text)
    if name is None:
        raise LlmrunError(f"{text}: not a Hub name (org/repo, or its address)")
    commit, files = hub.list_files(name)
    quants = hub.gguf_quants(files)
    if quants:
        chosen = hub.choose(hub.HubName(name.repo, revision=name.revision), files).quant
        rows = [(q + (" (default)" if q == chosen else ""), hub._size(sum(f.size for f in fs)),
                 f"{hub.bits(q):.2f}" if hub.bits(q) else "not readable by llmrun",
                 fs[0].name + (f" (+{len(fs) - 1} parts)" if len(fs) > 1 else ""))
                for q, fs in sorted(quants.items(), key=lambda kv: sum(f.size for f in kv[1]))]
        typer.echo(f"{name.repo} at {commit[:12]}: GGUF files")
        _table(("QUANT", "SIZE", "BITS/WEIGHT", "FILE"), rows)
        return
    hub.choose(hub.HubName(name.repo, revision=name.revision), files)  # neither GGUF nor a checkpoint: says so
    weights = [f for f in files if f.name.endswith(".safetensors")]
    typer.echo(f"{name.repo} at {commit[:12]}: a safetensors checkpoint, {hub._size(sum(f.size for f in weights))} "
               f"in {len(weights)} file{'s' if len(weights) != 1 else ''}; converted to f16 by default, or to the "
               f"type a tag names (:q8_0, :q4_0, ...)")


@app.command("rm")
def remove(model: str = typer.Argument(..., help="a name as `llmrun list` shows it (org/repo removes every "
                                                 "quantisation of it), or a cached .llmr's path")):
    """Delete a model from the cache (and the files downloaded for it)."""
    from llmrun import store
    for path in store.remove(model):
        typer.echo(f"removed {path}")


def _on_sigterm(signum, frame):
    """SIGTERM (`kill`, `timeout`, a service manager's stop) as an exit raised where Python is, so
    that the process unwinds: an atomic write in progress removes its temporary file, `serve`
    ends its requests in flight, `chat` saves its history (a KeyboardInterrupt would be taken
    for a Ctrl-C, which only stops a reply)."""
    sys.exit(143)


def main() -> None:
    from llmrun.errors import LlmrunError
    signal.signal(signal.SIGTERM, _on_sigterm)
    # click's UsageError, from click itself or from the copy newer typers carry
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `llmrun`: the help
            e.show()
            sys.exit(2)
        # a bad flag or value: one line, and where to look
        where = f"llmrun {e.ctx.info_name} --help" if e.ctx and e.ctx.parent else "llmrun --help"
        print(f"llmrun: error: {e.format_message()} (see `{where}`)", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except BrokenPipeError:  # the reader left (`| head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except (LlmrunError, ValueError, OSError) as e:
        msg = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"llmrun: error: {msg}", file=sys.stderr)
        sys.exit(1)
    except ImportError as e:
        if not str(e).startswith("LLMRUN_"):  # a broken install, not a setting: keep the traceback
            raise
        print(f"llmrun: error: {e}", file=sys.stderr)  # a bad LLMRUN_ISA / LLMRUN_THREADS
        sys.exit(1)
    except MemoryError:
        print("llmrun: error: out of memory: use a smaller model or context (--ctx)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
