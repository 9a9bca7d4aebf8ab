"""llmrun: LLaMA-style models on hand-written quantised kernels, from one memory-mapped file.

    import llmrun
    model = llmrun.load("smollm2.llmr")
    for r in llmrun.generate(model, "The capital of France is", max_tokens=16, temperature=0):
        print(r.text, end="", flush=True)
"""
import importlib

from .errors import ContextError, ConvertError, FormatError, LlmrunError

__version__ = "0.1.0"

# Loaded on first use, not at `import llmrun`: the kernels read LLMRUN_ISA / LLMRUN_THREADS when
# they load, and the command line must be running (to report a bad setting in one line) by then.
_LAZY = {"load": "model", "Model": "model", "KVCache": "model", "generate": "generation",
         "GenerationResponse": "generation", "Sampler": "sampling", "Tokenizer": "tokenizer",
         "load_tokenizer": "tokenizer"}

__all__ = [*_LAZY, "LlmrunError", "FormatError", "ConvertError", "ContextError", "__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'llmrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
