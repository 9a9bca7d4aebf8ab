#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU, in one run (issue 9):
#   bash benchmarks/cuda_device_check.sh [MODEL.llmr ...]
# 1. builds llmrun there (nvcc's register/spill report of every kernel goes to build.txt);
# 2. tests/test_cuda_device.py: each kernel against its numpy twin and quant/'s reference, the
#    tiny models' whole graph against the CPU backend, and SmolLM2 q8_0 / q4_0 at every
#    reference position (needs ../shared beside the repository, as on the team's machines;
#    skipped without it), then tests/test_cuda.py (the host side, on the emulator);
# 3. `llmrun bench` pp512 / tg128 with --backend cuda on each MODEL given (e.g. SmolLM2 q4_0 and
#    q8_0) and on the synthetic LLaMA-3.2-1B shape in q4_0 (made here by benchmarks/synthetic.py,
#    which needs the gguf package);
# 4. benchmarks/batch_decode.py on the 1B shape with --backend cuda: B = 1, 2, 4, 8 contexts
#    decoding together, aggregate tokens/s against B = 1; then the server itself
#    (benchmarks/serve_clients.py --backend cuda --parallel 8, 1 and 8 streaming clients: issue
#    21's aggregate >= 4x one client's).
# 5. the WebGPU backend on the same GPU through Vulkan (the Mac path's kernels): its tests and
#    bench on the 1B shape, beside CUDA's (issue 21: WebGPU decode >= 40% of CUDA's), where wgpu
#    imports and finds an adapter that is not a CPU.
# What the machine lacks comes from $CARRY (default .carry/, made by benchmarks/gpu_carry.sh
# and carried with the project): wheels on PYTHONPATH, Vulkan's loader unpacked into /.
# Results go to $OUT (or /tmp/cuda-check): gpu.txt, build.txt, tests.txt, bench.txt, webgpu.txt.
set -uo pipefail
out=${OUT:-/tmp/cuda-check}
mkdir -p "$out"
carry=${CARRY:-.carry}
if [ -d "$carry/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/carried "$carry"/wheels/*.whl \
        && export PYTHONPATH=/tmp/carried${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d "$carry/debs" ] && [ "$(id -u)" = 0 ]; then
    for deb in "$carry"/debs/*.deb; do dpkg -x "$deb" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=${VK_DRIVER_FILES:-$icd}
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$out/gpu.txt"
python3 -m pip install --no-build-isolation --no-deps -e . -v >"$out/build-full.txt" 2>&1 || { tail -30 "$out/build-full.txt"; exit 1; }
grep -E "Compiling entry|spill|Used [0-9]+ registers" "$out/build-full.txt" >"$out/build.txt"
echo "kernels with spills: $(grep -cE "\b[1-9][0-9]* bytes spill stores" "$out/build.txt")"
python3 -m pytest -q -p no:cacheprovider -s tests/test_cuda_device.py tests/test_cuda.py 2>&1 | tee "$out/tests.txt" | tail -15
python3 -m llmrun.cli.main info --backends | tee -a "$out/bench.txt"
python3 -m llmrun.cli.main selftest --backend cuda | tee -a "$out/bench.txt"
models=("$@")
if python3 benchmarks/synthetic.py llama-3.2-1b q4_0 /tmp/synthetic >/dev/null 2>&1; then
    models+=(/tmp/synthetic/llama-3.2-1b-q4_0.llmr)
else
    echo "synthetic 1B: not made (the gguf package is missing?)" | tee -a "$out/bench.txt"
fi
for m in "${models[@]}"; do
    for backend in cuda cpu; do
        python3 -m llmrun.cli.main bench "$m" --backend "$backend" -p 512 -n 128 -r 3 2>&1 | tee -a "$out/bench.txt"
    done
done
if [ -f /tmp/synthetic/llama-3.2-1b-q4_0.llmr ]; then
    python3 benchmarks/batch_decode.py /tmp/synthetic/llama-3.2-1b-q4_0.llmr --backend cuda -b 1,2,4,8 -n 64 -r 3 2>&1 \
        | tee -a "$out/bench.txt"
    python3 benchmarks/serve_clients.py /tmp/synthetic/llama-3.2-1b-q4_0.llmr --backend cuda --parallel 8 -c 1,8 \
        --prompt-ids 32 -n 128 -s 5 -r 2 2>&1 | tee -a "$out/bench.txt"
fi
if python3 -c "import sys; from llmrun.backends import webgpu
sys.exit(not any(a['type'] != 'CPU' for a in webgpu.adapters()))" 2>/dev/null; then
    python3 -m pytest -q -p no:cacheprovider tests/test_webgpu.py 2>&1 | tee "$out/webgpu.txt" | tail -5
    for m in "${models[@]}"; do
        python3 -m llmrun.cli.main bench "$m" --backend webgpu -p 512 -n 128 -r 3 2>&1 | tee -a "$out/webgpu.txt"
    done
else
    echo "webgpu: no GPU adapter (wgpu missing, or Vulkan's loader: see benchmarks/gpu_carry.sh)" | tee "$out/webgpu.txt"
fi
