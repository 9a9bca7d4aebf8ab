// q4_1 weights in the x16 layout: value d q + m; nibbles as q4_0.
#pragma once

#include "x16.cuh"

struct Q4_1 : X16<block_q4_1> {
    __device__ static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), field(w, row, b, nb, 1));
    }
    __device__ static float4 quants(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        return nibbles(word(w, row, b, nb, 2, i % 4), 4 * (i / 4));
    }
};
