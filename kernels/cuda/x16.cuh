// Shared by the x16 weight types (quant/layout.py): a group of 16 rows stores each block as the
// 16 rows' f16 fields (d; then m, for q4_1), 16 to a field, then the rows' quant bytes as
// words, word c of row r at c * 16 + r. The block sizes come from the CPU's block structs.
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"

template <class Block, uint32_t Fields = 1>
struct X16 {
    static constexpr uint32_t BLOCK_WORDS = 16 * sizeof(Block) / 4;  // one block of 16 rows
    static constexpr uint32_t FIELDS = Fields;                         // f16 fields a row has per block
    static constexpr uint32_t QUANT_WORDS = (sizeof(Block) - 2 * Fields) / 4;  // quant words of a row's block

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

    // The decode matvec (kernels/cuda/matmul.cuh): a block's quants are 4 * QUANT_WORDS lanes'
    // 16-byte loads (word c of rows 4 quad .. + 3, quad = lane % 4), so a warp's step is one
    // block (q8_0) or two (q4_0, q4_1) of the group, MV_STEP values of k.
    static constexpr uint32_t MV_LANES = 4 * QUANT_WORDS;
    static constexpr uint32_t MV_STEP = 32 * (32 / MV_LANES);
    static constexpr uint32_t MV_X_SECOND = QUANT_WORDS == 4 ? 4 : 0;  // float4s to the high nibbles' x
    struct Frag {
        uint4 q;          // word c of the quad's 4 rows
        uint2 d, m;       // their f16 d (and m)
        float4 x[2];      // token 0's activations for the word's values
        uint32_t kx;      // the first value's place in a row of x
        bool live;
    };
    __device__ static Frag mv_load(const uint32_t *w, uint32_t group, uint32_t k, uint32_t, uint32_t s,
                                   uint32_t steps, uint32_t lane, const float *x) {
        const uint32_t nb = k / 32, b = s * (32 / MV_LANES) + lane / MV_LANES, c = (lane % MV_LANES) / 4;
        const uint32_t quad = lane % 4;
        Frag f;
        f.live = s < steps && b < nb;
        if (f.live) {
            const uint32_t *g = w + ((size_t)group * nb + b) * BLOCK_WORDS;
            f.q = __ldg(reinterpret_cast<const uint4 *>(g + Fields * 8 + c * 16 + quad * 4));
            f.d = __ldg(reinterpret_cast<const uint2 *>(g + quad * 2));
            if (Fields == 2)
                f.m = __ldg(reinterpret_cast<const uint2 *>(g + 8 + quad * 2));
            f.kx = b * 32 + 4 * c;
            const float4 *xv = reinterpret_cast<const float4 *>(x + f.kx);
            f.x[0] = __ldg(xv);
            f.x[1] = __ldg(xv + MV_X_SECOND);
        }
        return f;
    }
};

// The four f16 fields of a quad's rows as floats.
__device__ inline void halves4(uint2 h, float (&out)[4]) {
    const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&h.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&h.y));
    out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
}

// 2^23 + v as a float, v < 2^23: exact, so bits23(v) - 2^23 - o is v - o exactly (no int-to-float
// conversion).
__device__ inline float bits23(uint32_t v) { return __int_as_float(0x4B000000u | v); }

// sum over the word's four bytes' nibbles at bit `shift` of (q - offset) * x: the nibbles exact.
__device__ inline float nibble_dot(uint32_t q, float4 x, float offset) {
    const float o = 8388608.0f + offset;
    return (bits23(q & 15u) - o) * x.x + (bits23((q >> 8) & 15u) - o) * x.y + (bits23((q >> 16) & 15u) - o) * x.z +
           (bits23((q >> 24) & 15u) - o) * x.w;
}

// The four nibbles of a word at bit `shift` of each byte, as floats.
__device__ inline float4 nibbles(uint32_t q, uint32_t shift) {
    q >>= shift;
    return make_float4(float(q & 15u), float((q >> 8) & 15u), float((q >> 16) & 15u), float((q >> 24) & 15u));
}
