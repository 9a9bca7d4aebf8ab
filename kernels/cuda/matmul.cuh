// out[t, row] = sum_k w[row, k] * x[t, k] for the few tokens of a decode step: weights read
// once, activations in f32. The weight format W gives block b's (d, m) by scale() and its
// values 4i .. 4i + 3 before scaling by quants(), so a block's dot with x is
// d * sum(q x) + m * sum(x), as in kernels/wgsl/matmul.wgsl.
//
// A block of 64 threads takes 16 rows (one x16 group) and MATMUL_TOKENS tokens. In a warp,
// lane r and lane 16 + r share row r, each taking half of a block's values, so a warp's load
// of a quant word is 32 consecutive words of the x16 layout; the block's two warps take every
// other block of the row, and meet in shared memory.
#pragma once

#include "common.cuh"

constexpr uint32_t MATMUL_ROWS = 16;
constexpr uint32_t MATMUL_TOKENS = 8;
constexpr uint32_t MATMUL_WARPS = 2;

// Arguments as kernels/wgsl/matmul.wgsl's: k the row length (a multiple of 32); rows of w;
// row0 the first row's place in out, whose rows are out_rows long; from_first: x holds only
// the tokens from step.first on (the output head).
template <class W>
__device__ void matmul(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k, uint32_t rows,
                       uint32_t row0, uint32_t out_rows, uint32_t from_first) {
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, half = lane / 16;
    const uint32_t row = blockIdx.x * MATMUL_ROWS + lane % 16;
    const uint32_t t0 = blockIdx.y * MATMUL_TOKENS;
    const uint32_t tokens = min(MATMUL_TOKENS, step->tokens - from_first * step->first - t0);
    const uint32_t nb = k / 32;
    const bool live = row < rows;  // the last group of a rows-layout matrix may be partial
    const float4 *x4 = reinterpret_cast<const float4 *>(x);

    float acc[MATMUL_TOKENS] = {};
    for (uint32_t b = warp; live && b < nb; b += MATMUL_WARPS) {
        float qx[MATMUL_TOKENS] = {}, sx[MATMUL_TOKENS] = {};  // sum(q x) and sum(x) over the block
#pragma unroll
        for (uint32_t j = 0; j < 4; j++) {
            const uint32_t i = half * 4 + j;
            const float4 q = W::quants(w, row, b, nb, i);
#pragma unroll
            for (uint32_t t = 0; t < MATMUL_TOKENS; t++) {
                if (t < tokens) {
                    const float4 xv = x4[((size_t)(t0 + t) * k + b * 32) / 4 + i];
                    qx[t] += q.x * xv.x + q.y * xv.y + q.z * xv.z + q.w * xv.w;
                    sx[t] += xv.x + xv.y + xv.z + xv.w;
                }
            }
        }
        const float2 dm = W::scale(w, row, b, nb);
#pragma unroll
        for (uint32_t t = 0; t < MATMUL_TOKENS; t++)
            acc[t] += dm.x * qx[t] + dm.y * sx[t];
    }
    __shared__ float part[MATMUL_WARPS][MATMUL_ROWS][MATMUL_TOKENS];
#pragma unroll
    for (uint32_t t = 0; t < MATMUL_TOKENS; t++) {
        acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], 16);  // the other half of the row
        if (half == 0)
            part[warp][lane][t] = acc[t];
    }
    __syncthreads();
    const uint32_t r = threadIdx.x % MATMUL_ROWS, t = threadIdx.x / MATMUL_ROWS;
    for (uint32_t tt = t; tt < tokens; tt += blockDim.x / MATMUL_ROWS) {
        if (blockIdx.x * MATMUL_ROWS + r < rows) {
            float s = 0.0f;
            for (uint32_t wi = 0; wi < MATMUL_WARPS; wi++)
                s += part[wi][r][tt];
            out[(size_t)(t0 + tt) * out_rows + row0 + blockIdx.x * MATMUL_ROWS + r] = s;
        }
    }
}
