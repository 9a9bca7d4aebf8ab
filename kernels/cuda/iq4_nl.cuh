// iq4_nl weights in the x16 layout: q4_0's bytes (element j the low nibble of byte j, j + 16 the
// high one: values 4i .. 4i + 3 are word i % 4's low nibbles for i < 4, its high ones after),
// each nibble an index into GGML's 16 int8 levels (llmr_iq4_nl_values). Value d * level, one
// rounding as the reference's. A quant byte is level + 128 (OFFSET), taken from the levels packed
// as two 64-bit constants, eight bytes each: a shift in registers, no table in memory (a
// __constant__ one would serialise a warp's different nibbles). The GEMM's f16 quants are the
// levels themselves, whole numbers under 128: exact.
#pragma once

#include "x16.cuh"

// Levels first .. first + 7 as bytes level + 128, level `first` in the low byte.
constexpr uint64_t iq4_nl_level_bytes(uint32_t first) {
    uint64_t t = 0;
    for (uint32_t n = 0; n < 8; n++)
        t |= uint64_t(uint8_t(llmr_iq4_nl_values[first + n] + 128)) << (8 * n);
    return t;
}

struct IQ4_NL : X16Bytes<IQ4_NL, block_iq4_nl, 1> {
    static constexpr float OFFSET = 128.0f;
    static constexpr uint64_t LOW = iq4_nl_level_bytes(0), HIGH = iq4_nl_level_bytes(8);

    HOST_DEVICE static float2 scale(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb) {
        return make_float2(field(w, row, b, nb, 0), 0.0f);
    }
    // level + 128 of nibble n
    HOST_DEVICE static uint32_t level_byte(uint32_t n) {
        return uint32_t(((n & 8) ? HIGH : LOW) >> (8 * (n & 7))) & 255u;
    }
    HOST_DEVICE static uint32_t quant_bytes(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const uint32_t q = word(w, row, b, nb, 1, i % 4) >> (4 * (i / 4));
        return level_byte(q & 15u) | level_byte((q >> 8) & 15u) << 8 | level_byte((q >> 16) & 15u) << 16 |
               level_byte((q >> 24) & 15u) << 24;
    }
};
