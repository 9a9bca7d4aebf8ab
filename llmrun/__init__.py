"""llmrun: LLaMA-style models on hand-written quantised kernels, from one memory-mapped file.

    import llmrun
    model = llmrun.load("smollm2.llmr")
    for r in llmrun.generate(model, "The capital of France is", max_tokens=16, temperature=0):
        print(r.text, end="", flush=True)
"""
import importlib
import importlib.util
import os
import sys

from .errors import ContextError, ConvertError, FormatError, LlmrunError, SettingError

__version__ = "0.1.0"

# Loaded on first use, not at `import llmrun`: the kernels read LLMRUN_ISA / LLMRUN_THREADS when
# they load, and the command line must be running (to report a bad setting in one line) by then.
_LAZY = {"load": "model", "Model": "model", "KVCache": "model", "generate": "generation",
         "GenerationResponse": "generation", "Sampler": "sampling", "Tokenizer": "tokenizer",
         "load_tokenizer": "tokenizer"}

# LLMRUN_KERNELS_PATH: load the kernels from this file instead of the installed one (a build of
# one's own: tests/test_sanitizers.py runs the tests on an AddressSanitizer build this way).
if os.environ.get("LLMRUN_KERNELS_PATH"):
    _spec = importlib.util.spec_from_file_location(f"{__name__}._kernels", os.environ["LLMRUN_KERNELS_PATH"])
    sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_spec.name])

__all__ = [*_LAZY, "LlmrunError", "FormatError", "ConvertError", "ContextError", "SettingError", "__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'llmrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
