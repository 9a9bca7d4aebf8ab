// q5_k weights in the x16 layout: q4_k's, with the fifth bits between the scales and the
// nibbles: a row's words 0 .. 2 the scales and mins, 3 .. 10 qh, 11 .. 42 the nibbles. Value
// 32s + l's fifth bit is bit s of qh byte l: for values 4i .. 4i + 3 of sub-block s, bit s of
// each byte of qh word i.
#pragma once

#include "q4_k.cuh"  // k_scale

struct Q5_K : X16Bytes<Q5_K, block_q5_K, 2> {
    static constexpr float OFFSET = 0.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return k_scale<Q5_K>(w, row, b / 8, nb / 8, b % 8);
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t s = b % 8;
        const uint32_t lo = (word(w, row, b / 8, nb / 8, 2, 11 + 8 * (s / 2) + i) >> (4 * (s % 2))) & 0x0F0F0F0Fu;
        return lo | ((word(w, row, b / 8, nb / 8, 2, 3 + i) >> s) & 0x01010101u) << 4;
    }
};
