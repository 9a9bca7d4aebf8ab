// q3_k weights, re-laid into the x16 layout as they go up (quant/layout.py; files keep q3_k in
// rows): per group of 16 rows and super-block of 256 values, the rows' f16 d, then a row's
// words: 0 .. 7 hmask, 8 .. 23 qs, 24 .. 26 the 12 bytes of packed 6-bit scales. 32-value block
// b is c = b % 8 = 4h + k of super-block b / 8: values 4i .. 4i + 3 have their low 2 bits at bit
// 2k of qs word 8 + 8h + i and their third at bit c of hmask word i, a 3-bit q whose value is
// q - 4 (OFFSET: a clear hmask bit subtracts 4; quant/kquants.py). Value (d (sc - 32)) (q - 4),
// sc the 6-bit scale of sub-block j = 2c + i / 4 (low 4 bits nibble j / 8 of scales byte j % 8,
// top 2 bits 2 (j / 4) of byte 8 + j % 4): a scale per half block (SCALES = 2), as q6_k's.
#pragma once

#include "x16.cuh"

struct Q3_K : X16Bytes<Q3_K, block_q3_K, 1, 2> {
    static constexpr float OFFSET = 4.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t half) {
        const uint32_t j = 2 * (b % 8) + half;  // the sub-block of 16
        const uint32_t lo = (word(w, row, b / 8, nb / 8, 1, 24 + (j % 8) / 4) >> (8 * (j % 4) + 4 * (j / 8))) & 15u;
        const uint32_t hi = (word(w, row, b / 8, nb / 8, 1, 26) >> (8 * (j % 4) + 2 * (j / 4))) & 3u;
        return make_float2(field(w, row, b / 8, nb / 8, 0) * float(int32_t(lo | hi << 4) - 32), 0.0f);
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t c = b % 8;
        const uint32_t lo = (word(w, row, b / 8, nb / 8, 1, 8 + 8 * (c / 4) + i) >> (2 * (c % 4))) & 0x03030303u;
        return lo | ((word(w, row, b / 8, nb / 8, 1, i) >> c) & 0x01010101u) << 2;
    }
};
