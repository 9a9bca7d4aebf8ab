// q8_0 weights in the x16 layout: value d * q, q an int8; word i holds values 4i .. 4i + 3.
#pragma once

#include "x16.cuh"

struct Q8_0 : X16<block_q8_0> {
    __device__ static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), 0.0f);
    }
    __device__ static float4 quants(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t q = word(w, row, b, nb, 1, i);
        return make_float4(int8_t(q), int8_t(q >> 8), int8_t(q >> 16), int8_t(q >> 24));
    }
    // The matvec: word c of 4 rows against x[4c ..]; a byte q is bits23(q ^ 128) - 2^23 - 128.
    __device__ static void mv_dot(const Frag &f, float4 x, float4, float (&acc)[4]) {
        float d[4];
        halves4(f.d, d);
        const uint32_t q[4] = {f.q.x, f.q.y, f.q.z, f.q.w};
        const float o = 8388608.0f + 128.0f;
#pragma unroll
        for (uint32_t j = 0; j < 4; j++) {
            const uint32_t v = q[j] ^ 0x80808080u;
            acc[j] += d[j] * ((bits23(v & 255u) - o) * x.x + (bits23((v >> 8) & 255u) - o) * x.y +
                              (bits23((v >> 16) & 255u) - o) * x.z + (bits23(v >> 24) - o) * x.w);
        }
    }
};
