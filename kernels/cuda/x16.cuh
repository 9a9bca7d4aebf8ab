// Shared by the x16 weight types (quant/layout.py): a group of 16 rows stores each block as the
// 16 rows' f16 fields (d; then m, for q4_1), 16 to a field, then the rows' quant bytes as
// words, word c of row r at c * 16 + r. The block sizes come from the CPU's block structs.
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"

template <class Block>
struct X16 {
    static constexpr uint32_t BLOCK_WORDS = 16 * sizeof(Block) / 4;  // one block of 16 rows

    __device__ static uint32_t base(uint32_t row, uint32_t b, uint32_t nb) {
        return ((row / 16) * nb + b) * BLOCK_WORDS;
    }
    // One of the row's f16 fields of block b (0: d, 1: m).
    __device__ static float field(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t f) {
        return __half2float(reinterpret_cast<const __half *>(w + base(row, b, nb) + f * 8)[row % 16]);
    }
    // Word c of the row's quants in block b, after `fields` f16 fields.
    __device__ static uint32_t word(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t fields,
                                    uint32_t c) {
        return w[base(row, b, nb) + fields * 8 + c * 16 + row % 16];
    }
};

// The four nibbles of a word at bit `shift` of each byte, as floats.
__device__ inline float4 nibbles(uint32_t q, uint32_t shift) {
    q >>= shift;
    return make_float4(float(q & 15u), float((q >> 8) & 15u), float((q >> 16) & 15u), float((q >> 24) & 15u));
}
