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
};
