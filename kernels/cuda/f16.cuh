// f16 weights in the rows layout: element k of row r is half r * K + k; no scale.
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"

struct F16 {
    static constexpr uint32_t SCALES = 1;  // scale_of (common.cuh)
    __device__ static float2 scale(const uint32_t *, uint32_t, uint32_t, uint32_t) { return make_float2(1.0f, 0.0f); }
    __device__ static float4 quants(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint2 u = reinterpret_cast<const uint2 *>(w + (row * nb + b) * 16)[i];
        const float2 lo = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
        const float2 hi = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
        return make_float4(lo.x, lo.y, hi.x, hi.y);
    }

    // The decode matvec (kernels/cuda/matmul.cuh): lane l takes values 8 (l / 4) .. + 7 of a
    // 64-value step of rows 4 (l % 4) .. + 3, one 16-byte load each, so a warp's load is 128
    // contiguous bytes of each of 4 rows. Rows past the matrix (a partial last group) read as 0.
    static constexpr uint32_t MV_STEP = 64;
    static constexpr uint32_t MV_X_SECOND = 1;
    struct Frag {
        uint4 q[4];
        float4 x[2];
        uint32_t kx;
        bool live;
    };
    __device__ static Frag mv_load(const uint32_t *w, uint32_t group, uint32_t k, uint32_t rows, uint32_t s,
                                   uint32_t steps, uint32_t lane, const float *x) {
        Frag f;
        f.kx = s * MV_STEP + (lane / 4) * 8;
        f.live = s < steps && f.kx < k;
        if (f.live) {
#pragma unroll
            for (uint32_t j = 0; j < 4; j++) {
                const uint32_t row = group * 16 + 4 * (lane % 4) + j;
                f.q[j] = row < rows ? __ldg(reinterpret_cast<const uint4 *>(w + ((size_t)row * k + f.kx) / 2))
                                    : make_uint4(0, 0, 0, 0);
            }
            const float4 *xv = reinterpret_cast<const float4 *>(x + f.kx);
            f.x[0] = __ldg(xv);
            f.x[1] = __ldg(xv + 1);
        }
        return f;
    }
    __device__ static void mv_dot(const Frag &f, float4 a, float4 b, float (&acc)[4]) {
#pragma unroll
        for (uint32_t j = 0; j < 4; j++) {
            const uint4 u = f.q[j];
            const float2 h0 = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
            const float2 h1 = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
            const float2 h2 = __half22float2(*reinterpret_cast<const __half2 *>(&u.z));
            const float2 h3 = __half22float2(*reinterpret_cast<const __half2 *>(&u.w));
            acc[j] += h0.x * a.x + h0.y * a.y + h1.x * a.z + h1.y * a.w + h2.x * b.x + h2.y * b.y + h3.x * b.z +
                      h3.y * b.w;
        }
    }
};
