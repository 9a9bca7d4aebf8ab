// The same product for prefill, on tensor cores, to f32 accuracy: a block of 128 threads takes
// 64 rows and 64 tokens. For each block of 32 values along k, shared memory gets the 64 rows'
// quants q (whole numbers below 2^11 in magnitude, or f16 weights: exact in f16) with their
// (d, m), and the 64 tokens' activations split into two f16 parts, x = hi + lo (22 significant
// bits of the 24 of f32); each warp multiplies its 16 rows by both parts with wmma (f32 sums),
// and the block's sums, scaled by each row's d, plus m * sum(x), are added up in registers. A
// type with a scale per half block (W::SCALES = 2, q6_k) has each half's sums apart: one wmma
// k-step of 16 each, scaled by its own d.
// Only the range is f16's: activations beyond 65504 would become inf.
#pragma once

#include <mma.h>

#include "common.cuh"

constexpr uint32_t GEMM_ROWS = 64;
constexpr uint32_t GEMM_TOKENS = 64;
constexpr uint32_t GEMM_THREADS = 128;  // 4 warps, 16 rows each
constexpr uint32_t GEMM_PAD = 8;        // f16 padding per tile row, against bank conflicts
constexpr uint32_t GEMM_PER_THREAD = GEMM_ROWS * GEMM_TOKENS / GEMM_THREADS;

template <class W>
__device__ void gemm(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k, uint32_t rows,
                     uint32_t row0, uint32_t out_rows, uint32_t from_first, uint32_t accumulate) {
    using namespace nvcuda;
    // wmma wants 32-byte aligned tiles: row strides of 80 and 272 bytes keep every 16-row slab so
    __shared__ __align__(32) __half qs[GEMM_ROWS][32 + GEMM_PAD];         // quants [row, k]
    __shared__ __align__(32) __half xs[2][GEMM_TOKENS][32 + GEMM_PAD];    // hi, lo [token, k]
    __shared__ __align__(32) float cs[GEMM_ROWS][GEMM_TOKENS + 4];        // a block's sums [row, token]
    constexpr uint32_t S = W::SCALES, PER = 8 / S;                       // (d, m) pairs a block, float4s each
    __shared__ float2 dm[GEMM_ROWS][S];                                   // the rows' (d, m)
    __shared__ float sx[GEMM_TOKENS][S];                                  // the tokens' sum(x)
    const uint32_t r0 = blockIdx.x * GEMM_ROWS, t0 = blockIdx.y * GEMM_TOKENS;
    const uint32_t tokens = min(GEMM_TOKENS, step->tokens - from_first * step->first - t0);
    const uint32_t nb = k / 32, warp = threadIdx.x / 32;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);

    float acc[GEMM_PER_THREAD] = {};  // element it * GEMM_THREADS + threadIdx.x of [token, row]
    for (uint32_t b = 0; b < nb; b++) {
        for (uint32_t it = threadIdx.x; it < GEMM_ROWS * 8; it += GEMM_THREADS) {
            const uint32_t r = it % GEMM_ROWS, i = it / GEMM_ROWS;  // consecutive threads: consecutive rows
            const bool live = r0 + r < rows;
            const float4 q = live ? W::quants(w, r0 + r, b, nb, i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            *reinterpret_cast<__half2 *>(&qs[r][4 * i]) = __floats2half2_rn(q.x, q.y);
            *reinterpret_cast<__half2 *>(&qs[r][4 * i + 2]) = __floats2half2_rn(q.z, q.w);
            if (i % PER == 0)
                dm[r][i / PER] = live ? scale_of<W>(w, r0 + r, b, nb, i) : make_float2(0.0f, 0.0f);
        }
        for (uint32_t t = threadIdx.x; t < GEMM_TOKENS; t += GEMM_THREADS) {
            float s[S] = {};
            for (uint32_t i = 0; i < 8; i++) {
                const float4 v = t < tokens ? x4[((size_t)(t0 + t) * k + b * 32) / 4 + i] : make_float4(0, 0, 0, 0);
                const __half2 hi0 = __floats2half2_rn(v.x, v.y), hi1 = __floats2half2_rn(v.z, v.w);
                const float2 h0 = __half22float2(hi0), h1 = __half22float2(hi1);
                *reinterpret_cast<__half2 *>(&xs[0][t][4 * i]) = hi0;
                *reinterpret_cast<__half2 *>(&xs[0][t][4 * i + 2]) = hi1;
                *reinterpret_cast<__half2 *>(&xs[1][t][4 * i]) = __floats2half2_rn(v.x - h0.x, v.y - h0.y);
                *reinterpret_cast<__half2 *>(&xs[1][t][4 * i + 2]) = __floats2half2_rn(v.z - h1.x, v.w - h1.y);
                s[i / PER] += v.x + v.y + v.z + v.w;
            }
            for (uint32_t h = 0; h < S; h++)
                sx[t][h] = s[h];
        }
        __syncthreads();
        for (uint32_t h = 0; h < S; h++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sums[GEMM_TOKENS / 16];
            for (auto &f : sums)
                wmma::fill_fragment(f, 0.0f);
#pragma unroll
            for (uint32_t kk = h * 32 / S; kk < (h + 1) * 32 / S; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
                wmma::load_matrix_sync(a, &qs[warp * 16][kk], 32 + GEMM_PAD);
#pragma unroll
                for (uint32_t f = 0; f < GEMM_TOKENS / 16; f++) {
                    for (uint32_t part = 0; part < 2; part++) {
                        // x as k x tokens: element (k, t) at xs[part][t][k], column-major
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bx;
                        wmma::load_matrix_sync(bx, &xs[part][f * 16][kk], 32 + GEMM_PAD);
                        wmma::mma_sync(sums[f], a, bx, sums[f]);
                    }
                }
            }
            for (uint32_t f = 0; f < GEMM_TOKENS / 16; f++)
                wmma::store_matrix_sync(&cs[warp * 16][f * 16], sums[f], GEMM_TOKENS + 4, wmma::mem_row_major);
            __syncthreads();
#pragma unroll
            for (uint32_t it = 0; it < GEMM_PER_THREAD; it++) {
                const uint32_t e = it * GEMM_THREADS + threadIdx.x, r = e % GEMM_ROWS, t = e / GEMM_ROWS;
                acc[it] += dm[r][h].x * cs[r][t] + dm[r][h].y * sx[t][h];
            }
            __syncthreads();  // before the next half's sums or the next block's tiles overwrite these
        }
    }
#pragma unroll
    for (uint32_t it = 0; it < GEMM_PER_THREAD; it++) {
        const uint32_t e = it * GEMM_THREADS + threadIdx.x, r = e % GEMM_ROWS, t = e / GEMM_ROWS;
        if (r0 + r < rows && t < tokens) {
            float *o = out + (size_t)(t0 + t) * out_rows + row0 + r0 + r;
            *o = accumulate ? *o + acc[it] : acc[it];  // accumulate: the residual add, as matmul's
        }
    }
}
