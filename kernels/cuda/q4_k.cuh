// q4_k weights in the x16 layout: per group of 16 rows and super-block of 256 values, the rows'
// f16 d and dmin, then a row's words: 0 .. 2 the packed 6-bit scales and mins, 3 .. 34 the
// nibbles. 32-value block b is sub-block s = b % 8 of super-block b / 8: values 4i .. 4i + 3
// are nibble s % 2 of nibble word 8 (s / 2) + i. Value (d sc) q - dmin m: both products exact
// in f32, as quant/kquants.py computes them.
#pragma once

#include "x16.cuh"

// Sub-block s's 6-bit (scale, min) of super-block sb, from the 12 packed bytes a[4] b[4] c[4]
// (llmr_q4_k_scale_min), times the rows' d and dmin: the block's (d sc, -dmin m).
template <class K>
HOST_DEVICE inline float2 k_scale(const uint32_t *w, uint32_t row, uint32_t sb, uint32_t nsb, uint32_t s) {
    const uint32_t shift = 8 * (s % 4);
    const uint32_t a = (K::word(w, row, sb, nsb, 2, 0) >> shift) & 255u;
    const uint32_t m = (K::word(w, row, sb, nsb, 2, 1) >> shift) & 255u;
    uint32_t sc = a & 63u, mn = m & 63u;
    if (s >= 4) {
        const uint32_t c = (K::word(w, row, sb, nsb, 2, 2) >> shift) & 255u;
        sc = (c & 15u) | ((a >> 6) << 4), mn = (c >> 4) | ((m >> 6) << 4);
    }
    return make_float2(K::field(w, row, sb, nsb, 0) * float(sc), -(K::field(w, row, sb, nsb, 1) * float(mn)));
}

struct Q4_K : X16Bytes<Q4_K, block_q4_K, 2> {
    static constexpr float OFFSET = 0.0f;
    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return k_scale<Q4_K>(w, row, b / 8, nb / 8, b % 8);
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t s = b % 8;
        return (word(w, row, b / 8, nb / 8, 2, 3 + 8 * (s / 2) + i) >> (4 * (s % 2))) & 0x0F0F0F0Fu;
    }
};
