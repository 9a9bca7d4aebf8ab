// q6_k weights in the x16 layout: per group of 16 rows and super-block of 256 values, the
// rows' f16 d, then a row's words: 0 .. 31 ql, 32 .. 47 qh, 48 .. 51 the 16 int8 scales of
// its sub-blocks of 16. 32-value block b is c = b % 8 = 4h + k of super-block b / 8: values
// 4i .. 4i + 3 have their low 4 bits in nibble k / 2 of ql word 16h + 8 (k % 2) + i and their
// high 2 at bit 2k of qh word 8h + i (quant/kquants.py). Value (d sc) (q - 32), sc the scale
// of sub-block 2c + i / 4: a scale per half block (SCALES = 2), so the GEMM's f16 quants stay
// whole numbers below 2^11.
#pragma once

#include "x16.cuh"

struct Q6_K : X16Bytes<Q6_K, block_q6_K, 1, 2> {
    static constexpr float OFFSET = 32.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t half) {
        const uint32_t j = 2 * (b % 8) + half;  // the sub-block of 16
        const int8_t sc = int8_t(word(w, row, b / 8, nb / 8, 1, 48 + j / 4) >> (8 * (j % 4)));
        return make_float2(field(w, row, b / 8, nb / 8, 0) * float(sc), 0.0f);
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t c = b % 8, h = c / 4, k = c % 4;
        const uint32_t lo = (word(w, row, b / 8, nb / 8, 1, 16 * h + 8 * (k % 2) + i) >> (4 * (k / 2))) & 0x0F0F0F0Fu;
        return lo | ((word(w, row, b / 8, nb / 8, 1, 32 + 8 * h + i) >> (2 * k)) & 0x03030303u) << 4;
    }
};
