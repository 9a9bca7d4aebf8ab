#!/usr/bin/env bash
# Scaling out (issue 22): a model exported by `llmrun export` and run by llama.cpp's RPC backend
# over two local rpc-server processes gives the same greedy text as llama.cpp in one process,
# and, as far as activation precision allows, as `llmrun generate`.
#
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin bash benchmarks/scale_out.sh [MODEL] [N_TOKENS]
#
# MODEL: anything llmrun loads (default: the default model); N_TOKENS greedy tokens (default 48).
# llama.cpp is built outside the repository with RPC on:
#   cmake -B build -DGGML_RPC=ON -DLLAMA_CURL=OFF && cmake --build build -j2 \
#         --target rpc-server llama-completion   (ggml-rpc-server in newer trees)
# The two servers here stand in for two machines: on a real cluster, run `rpc-server -H 0.0.0.0`
# on each and list them all in --rpc. Results go to $OUT (default /tmp/scale-out).
# Prints the three continuations, whether they agree, and where llmrun's first differs
# (llama.cpp multiplies in 8-bit activations on the CPU, llmrun in q16_a / f32: near-ties in the
# logits can go either way, and greedy text follows the first one that does).
set -uo pipefail
bin=${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to llama.cpp build/bin (with rpc-server and llama-completion)}
model=${1:-smollm2-135m-instruct}
n=${2:-48}
out=${OUT:-/tmp/scale-out}
prompt=${PROMPT:-"The history of the printing press begins"}
llmrun=${LLMRUN:-python3 -m llmrun.cli.main}
mkdir -p "$out"
rpc_server=$bin/rpc-server
[ -x "$rpc_server" ] || rpc_server=$bin/ggml-rpc-server  # its name in newer llama.cpp
for tool in "$rpc_server" "$bin/llama-completion"; do
    [ -x "$tool" ] || { echo "no $tool: build llama.cpp with -DGGML_RPC=ON (see the header)"; exit 1; }
done

$llmrun export "$model" "$out/model.gguf" || exit 1

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
ports=(50152 50153)
for port in "${ports[@]}"; do
    "$rpc_server" -H 127.0.0.1 -p "$port" -t 1 >"$out/rpc-$port.log" 2>&1 &
    pids+=($!)
done
sleep 2
rpc=$(printf "127.0.0.1:%s," "${ports[@]}")
rpc=${rpc%,}

greedy() {  # llama.cpp's greedy continuation (extra flags in "$@"), text only
    "$bin/llama-completion" -m "$out/model.gguf" -p "$prompt" -n "$n" --temp 0 --top-k 1 -no-cnv \
        --no-display-prompt --seed 0 -c 512 -t 2 "$@" 2>>"$out/llama.log" | sed 's/ \[end of text\]$//'
}
greedy -ngl 0 >"$out/one-process.txt"
greedy -ngl 99 --rpc "$rpc" -lv 4 >"$out/rpc.txt"  # -lv 4: the log says where each layer went
$llmrun generate "$model" -p "$prompt" --raw -n "$n" --temp 0 2>/dev/null >"$out/llmrun.txt"

python3 - "$out" <<'EOF'
import sys, pathlib
out = pathlib.Path(sys.argv[1])
one, rpc, ours = ((out / f).read_text().strip() for f in ("one-process.txt", "rpc.txt", "llmrun.txt"))
print(f"llama.cpp, one process : {one!r}")
print(f"llama.cpp, 2 rpc-server: {rpc!r}")
print(f"llmrun generate        : {ours!r}")
print("rpc == one process:", rpc == one)
same = next((i for i, (a, b) in enumerate(zip(ours, one)) if a != b), min(len(ours), len(one)))
print(f"llmrun == llama.cpp: {ours == one} (the first {same} characters agree of {len(one)})")
EOF
# where llmrun's greedy path leaves llama.cpp's: llmrun's logit gap there (a near-tie is what
# activation precision decides)
python3 - "$model" "$prompt" "$out/one-process.txt" <<'EOF'
import sys
import numpy as np
import llmrun
m = llmrun.load(sys.argv[1])
prompt, theirs = sys.argv[2], open(sys.argv[3]).read().strip()
ids = m.tokenizer.encode(prompt)
cont = m.tokenizer.encode(prompt + " " + theirs)[len(ids):]
logits = m.logits(ids + cont)[len(ids) - 1:]
for i, tok in enumerate(cont):
    best = int(np.argmax(logits[i]))
    if best != tok:
        print(f"llmrun leaves llama.cpp's path at token {i}: llama.cpp {m.tokenizer.decode([tok])!r}, llmrun "
              f"{m.tokenizer.decode([best])!r}, {logits[i][best] - logits[i][tok]:.3f} apart in llmrun's logits")
        break
else:
    print("llmrun's greedy choice at every step of llama.cpp's continuation is llama.cpp's")
EOF
grep -E "offloaded|RPC.*model buffer size" "$out/llama.log" | sed 's/^/  /'
