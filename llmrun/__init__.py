"""llmrun: LLaMA-style models on hand-written quantised kernels, from one memory-mapped file.

    import llmrun
    model = llmrun.load("smollm2.llmr")
    for r in llmrun.generate(model, "The capital of France is", max_tokens=16, temperature=0):
        print(r.text, end="", flush=True)
"""
from .errors import ContextError, ConvertError, FormatError, LlmrunError
from .model import KVCache, Model, load
from .generate import GenerationResponse, Sampler, generate
from .tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = ["load", "load_tokenizer", "Tokenizer", "generate", "Model", "KVCache", "Sampler", "GenerationResponse",
           "LlmrunError", "FormatError", "ConvertError", "ContextError", "__version__"]
