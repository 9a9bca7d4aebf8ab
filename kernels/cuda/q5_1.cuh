// q5_1 weights in the x16 layout: q5_0's quants after two f16 fields, d and m. Value d q + m.
#pragma once

#include "x16.cuh"

struct Q5_1 : X16Bytes<Q5_1, block_q5_1, 2> {
    static constexpr float OFFSET = 0.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), field(w, row, b, nb, 1));
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t lo = (word(w, row, b, nb, 2, 1 + i % 4) >> (4 * (i / 4))) & 0x0F0F0F0Fu;
        return lo | fifth_bits(word(w, row, b, nb, 2, 0) >> (4 * i));
    }
};
