// q2_k weights, re-laid into the x16 layout as they go up (quant/layout.py; files keep q2_k in
// rows): per group of 16 rows and super-block of 256 values, the rows' f16 d and dmin, then a
// row's words: 0 .. 3 the 16 bytes of (scale, min) nibbles, 4 .. 19 qs. 32-value block b is
// c = b % 8 = 4h + k of super-block b / 8: values 4i .. 4i + 3 are bits 2k of qs word 4 + 8h + i,
// in sub-block j = 2c + i / 4, whose byte j holds sc (low nibble) and m. Value (d sc) q - dmin m,
// both products exact in f32, as quant/kquants.py computes it: a (scale, min) per half block
// (SCALES = 2; the GEMM keeps each half's sums and sum(x) apart).
#pragma once

#include "x16.cuh"

struct Q2_K : X16Bytes<Q2_K, block_q2_K, 2, 2> {
    static constexpr float OFFSET = 0.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t half) {
        const uint32_t j = 2 * (b % 8) + half;  // the sub-block of 16
        const uint32_t sm = (word(w, row, b / 8, nb / 8, 2, j / 4) >> (8 * (j % 4))) & 255u;
        return make_float2(field(w, row, b / 8, nb / 8, 0) * float(sm & 15u),
                           -(field(w, row, b / 8, nb / 8, 1) * float(sm >> 4)));
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t c = b % 8;
        return (word(w, row, b / 8, nb / 8, 2, 4 + 8 * (c / 4) + i) >> (2 * (c % 4))) & 0x03030303u;
    }
};
