// q4_0 weights in the x16 layout: value d (q - 8). Byte j of a block holds element j in its low
// nibble and j + 16 in its high one: values 4i .. 4i + 3 are word i's low nibbles for i < 4,
// word i - 4's high ones after.
#pragma once

#include "x16.cuh"

struct Q4_0 : X16<block_q4_0> {
    __device__ static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), 0.0f);
    }
    __device__ static float4 quants(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const float4 q = nibbles(word(w, row, b, nb, 1, i % 4), 4 * (i / 4));
        return make_float4(q.x - 8.0f, q.y - 8.0f, q.z - 8.0f, q.w - 8.0f);
    }
    // The matvec: word c of 4 rows, low nibbles against x[4c ..], high ones against x[16 + 4c ..].
    __device__ static void mv_dot(const Frag &f, float4 lo, float4 hi, float (&acc)[4]) {
        float d[4];
        halves4(f.d, d);
        const uint32_t q[4] = {f.q.x, f.q.y, f.q.z, f.q.w};
#pragma unroll
        for (uint32_t j = 0; j < 4; j++)
            acc[j] += d[j] * (nibble_dot(q[j], lo, 8.0f) + nibble_dot(q[j] >> 4, hi, 8.0f));
    }
};
