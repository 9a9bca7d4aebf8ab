#!/usr/bin/env bash
# What a GPU machine without network needs beyond the project, fetched here (a machine with the
# package registries) into DIR (default .carry/, which git ignores, so the device tool carries
# it when asked: carry [".carry"]):
#   wheels/  wgpu and what it imports (cffi, pycparser, rendercanvas), for the WebGPU backend,
#            and gguf, for benchmarks/synthetic.py: pure Python but cffi, built for this
#            machine's Python (the GPU machine's must match: python3 --version on both);
#   debs/    Vulkan's loader and glvnd (../shared/GPU.md: with libvulkan1 alone wgpu found no
#            adapter on the NVIDIA driver).
# benchmarks/cuda_device_check.sh installs them from there (about 4 MB) before it starts.
#   bash benchmarks/gpu_carry.sh [DIR]
set -euo pipefail
dir=${1:-.carry}
mkdir -p "$dir/wheels" "$dir/debs"
python3 -m pip download -q --no-deps -d "$dir/wheels" wgpu cffi pycparser rendercanvas gguf
(cd "$dir/debs" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh "$dir"
