// q4_1 weights in the x16 layout: value d q + m; nibbles as q4_0.
#pragma once

#include "x16.cuh"

struct Q4_1 : X16<block_q4_1, 2> {
    __device__ static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), field(w, row, b, nb, 1));
    }
    __device__ static float4 quants(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        return nibbles(word(w, row, b, nb, 2, i % 4), 4 * (i / 4));
    }
    // The matvec: as q4_0's, plus m times the sum of the 8 activations.
    __device__ static void mv_dot(const Frag &f, float4 lo, float4 hi, float (&acc)[4]) {
        float d[4], m[4];
        halves4(f.d, d);
        halves4(f.m, m);
        const float sx = (lo.x + lo.y + lo.z + lo.w) + (hi.x + hi.y + hi.z + hi.w);
        const uint32_t q[4] = {f.q.x, f.q.y, f.q.z, f.q.w};
#pragma unroll
        for (uint32_t j = 0; j < 4; j++)
            acc[j] += d[j] * (nibble_dot(q[j], lo, 0.0f) + nibble_dot(q[j] >> 4, hi, 0.0f)) + m[j] * sx;
    }
};
