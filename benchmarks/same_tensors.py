"""Do two model files hold the same tensors, block for block? (e.g. llmrun's `quantize --type
q4_k_m` against llama-quantize's Q4_K_M of the same weights.)

    python benchmarks/same_tensors.py A B

A and B are anything llmrun loads (.llmr, GGUF, checkpoint); each is imported losslessly (a
GGUF's blocks are kept as they are) and every tensor compared by name, type and GGML's blocks
(`Tensor.rows()`, the X16 layout undone). Prints one line per differing tensor and a summary;
exits 1 if any differ.
"""
from __future__ import annotations

import sys

from llmrun import store
from llmrun.format import LlmrFile


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = (LlmrFile(store.resolve(p)) for p in sys.argv[1:])
    names = sorted(set(a.tensors) | set(b.tensors))
    differ = 0
    for name in names:
        if name not in a.tensors or name not in b.tensors:
            print(f"{name}: only in {'A' if name in a.tensors else 'B'}")
            differ += 1
            continue
        ta, tb = a.tensor(name), b.tensor(name)
        if ta.type != tb.type or ta.shape != tb.shape:
            print(f"{name}: {ta.type.name}{list(ta.shape)} against {tb.type.name}{list(tb.shape)}")
            differ += 1
        elif ta.rows().tobytes() != tb.rows().tobytes():
            print(f"{name}: {ta.type.name}, blocks differ")
            differ += 1
    types = {}
    for name in names:
        if name in a.tensors:
            t = a.tensors[name].type.name
            types[t] = types.get(t, 0) + 1
    print(f"{len(names) - differ} of {len(names)} tensors the same ({', '.join(f'{t} x{n}' for t, n in sorted(types.items()))})")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
