// q5_0 weights in the x16 layout: word 0 of a row's block is qh (bit j: the fifth bit of
// element j), words 1 .. 4 the nibbles as q4_0's (values 4i .. 4i + 3: word 1 + i % 4, low
// nibbles for i < 4, high ones after). Value d (q - 16).
#pragma once

#include "x16.cuh"

struct Q5_0 : X16Bytes<Q5_0, block_q5_0, 1> {
    static constexpr float OFFSET = 16.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), 0.0f);
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t lo = (word(w, row, b, nb, 1, 1 + i % 4) >> (4 * (i / 4))) & 0x0F0F0F0Fu;
        return lo | fifth_bits(word(w, row, b, nb, 1, 0) >> (4 * i));
    }
};
