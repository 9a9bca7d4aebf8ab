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
};
