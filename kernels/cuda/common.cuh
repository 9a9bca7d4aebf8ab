// What every CUDA kernel shares: the step state and the launch geometry of the elementwise
// kernels, both as the WGSL kernels have them (kernels/wgsl/step.wgsl), so that one graph
// builder (llmrun/gpu.py) drives either backend with the same parameters and grids.
#pragma once

#include <stdint.h>

#include "llmrun.h"  // the block structs, shared with the CPU kernels

// What changes from one forward step to the next, in device memory, written once per step:
// every kernel argument is fixed when the graph is built, so a step can be replayed as a CUDA
// graph.
struct Step {
    uint32_t n_past;  // positions already in the KV cache
    uint32_t tokens;  // tokens in this step
    uint32_t first;   // the first token whose logits are wanted
};

// What the tests also compile for the host (tests/cuda_host.cu): the weight types' decoding.
#define HOST_DEVICE __host__ __device__

// The (scale, min) of values 4i .. 4i + 3 of block b of a weight type W: one per 32-value
// block, or (W::SCALES = 2: q6_k's sub-blocks of 16) one per half block.
template <class W>
HOST_DEVICE inline float2 scale_of(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
    if constexpr (W::SCALES == 1)
        return W::scale(w, row, b, nb);
    else
        return W::scale(w, row, b, nb, i / 4);
}

// An entry point of the module: C linkage (llmrun/cuda.py finds it by name), at most `threads`
// threads a block.
#define KERNEL(threads) extern "C" __global__ void __launch_bounds__(threads)

constexpr uint32_t WORKGROUP = 64;      // threads of the elementwise, norm and embed kernels
constexpr uint32_t MAX_GROUPS = 65535;  // blocks per grid row before a kernel's grid grows in y

// Index of this thread in an elementwise kernel's grid (llmrun/gpu.py: groups()).
__device__ inline uint32_t element_index() {
    return blockIdx.x * WORKGROUP + threadIdx.x + blockIdx.y * MAX_GROUPS * WORKGROUP;
}

__device__ inline float warp_sum(float s) {
    for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, lane_mask);
    return s;
}

// The feed-forward's gates, shared by silu_mul / gelu_mul and the fused gate/up matvec:
// silu(g) * u = g / (1 + exp(-g)) * u, and GELU in its tanh form (Gemma's GeGLU) as the CPU
// computes it: 0.5 * g * (1 + tanh(sqrt(2/pi) * (g + 0.044715 g^3))) * u.
__device__ inline float silu_gate(float g, float u) { return g / (1.0f + expf(-g)) * u; }
__device__ inline float gelu_gate(float g, float u) {
    return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))) * u;
}
