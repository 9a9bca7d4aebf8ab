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
    static constexpr uint32_t SCALES = 1;  // (scale, min) pairs per 32 values (scale_of in common.cuh)

    HOST_DEVICE static uint32_t base(uint32_t row, uint32_t b, uint32_t nb) {
        return ((row / 16) * nb + b) * BLOCK_WORDS;
    }
    // One of the row's f16 fields of block b (0: d, 1: m).
    HOST_DEVICE static float field(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t f) {
        return __half2float(reinterpret_cast<const __half *>(w + base(row, b, nb) + f * 8)[row % 16]);
    }
    // Word c of the row's quants in block b, after `fields` f16 fields.
    HOST_DEVICE static uint32_t word(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t fields,
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
HOST_DEVICE inline void halves4(uint2 h, float (&out)[4]) {
    const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&h.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&h.y));
    out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
}

// 2^23 + v as a float, v < 2^23: exact, so bits23(v) - 2^23 - o is v - o exactly (no int-to-float
// conversion).
HOST_DEVICE inline float bits23(uint32_t v) {
#ifdef __CUDA_ARCH__
    return __int_as_float(0x4B000000u | v);
#else
    return float(v) + 8388608.0f;  // the host build (tests/cuda_host.cu): the same value
#endif
}

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

// The four bytes of v as floats.
HOST_DEVICE inline float4 byte_floats(uint32_t v) {
    return make_float4(float(v & 255u), float((v >> 8) & 255u), float((v >> 16) & 255u), float(v >> 24));
}

// sum over the word's four bytes of (q - offset) * x, each byte below 2^8: exact (bits23).
HOST_DEVICE inline float byte_dot(uint32_t q, float4 x, float offset) {
    const float o = 8388608.0f + offset;
    return (bits23(q & 255u) - o) * x.x + (bits23((q >> 8) & 255u) - o) * x.y + (bits23((q >> 16) & 255u) - o) * x.z +
           (bits23(q >> 24) - o) * x.w;
}

// The x16 types whose quants are assembled from several bit fields (q5_0, q5_1 and the
// k-quants) or looked up (iq4_nl's levels): W gives quant_bytes(w, row, b, nb, i), values 4i .. 4i + 3 of 32-value block b as
// the four bytes of a word, unsigned, W::OFFSET below their value (q5_0: 16, q6_k: 32), and
// scale(): value = d (q - OFFSET) + m. A k-quant's 32-value block b is sub-block b % 8 of
// super-block b / 8 (quant/layout.py), whose d * sc (and -dmin * m) are its block's scale (and
// min); q6_k (SCALES = 2) has one per half block of 16, scale(w, row, b, nb, half).
//
// The decode matvec (kernels/cuda/matmul.cuh): a lane takes values 8 (lane / 4) .. + 7 of a
// 64-value step (one half of a block: a single scale, q6_k's too) of rows 4 (lane % 4) .. + 3,
// their quants assembled as bytes and their (scale, min) worked out as it loads; the dot takes
// the bytes exactly (byte_dot).
template <class W, class Block, uint32_t Fields, uint32_t Scales = 1>
struct X16Bytes : X16<Block, Fields> {
    static constexpr uint32_t SCALES = Scales;

    HOST_DEVICE static float4 quants(const uint32_t *w, uint32_t row, uint32_t b, uint32_t nb, uint32_t i) {
        const float4 q = byte_floats(W::quant_bytes(w, row, b, nb, i));
        return make_float4(q.x - W::OFFSET, q.y - W::OFFSET, q.z - W::OFFSET, q.w - W::OFFSET);
    }

    static constexpr uint32_t MV_STEP = 64;
    static constexpr uint32_t MV_X_SECOND = 1;  // the second float4 of x follows the first
    struct Frag {
        uint32_t q[4][2];  // the 8 values of each of the quad's 4 rows, as bytes
        float d[4], m[4];  // their scale and min
        float4 x[2];       // token 0's activations for the 8 values
        uint32_t kx;       // the first value's place in a row of x
        bool live;
    };
    HOST_DEVICE static Frag mv_load(const uint32_t *w, uint32_t group, uint32_t k, uint32_t, uint32_t s,
                                    uint32_t steps, uint32_t lane, const float *x) {
        Frag f;
        f.kx = s * MV_STEP + (lane / 4) * 8;
        f.live = s < steps && f.kx < k;  // k is a multiple of 32: the last step may be half
        if (f.live) {
            const uint32_t nb = k / 32, b = f.kx / 32, i = (f.kx % 32) / 4;
            for (uint32_t j = 0; j < 4; j++) {
                const uint32_t row = group * 16 + 4 * (lane % 4) + j;
                f.q[j][0] = W::quant_bytes(w, row, b, nb, i);
                f.q[j][1] = W::quant_bytes(w, row, b, nb, i + 1);
                const float2 dm = scale_of<W>(w, row, b, nb, i);
                f.d[j] = dm.x, f.m[j] = dm.y;
            }
            const float4 *xv = reinterpret_cast<const float4 *>(x + f.kx);
            f.x[0] = xv[0];
            f.x[1] = xv[1];
        }
        return f;
    }
    HOST_DEVICE static void mv_dot(const Frag &f, float4 lo, float4 hi, float (&acc)[4]) {
        const float sx = (lo.x + lo.y + lo.z + lo.w) + (hi.x + hi.y + hi.z + hi.w);
#pragma unroll
        for (uint32_t j = 0; j < 4; j++)
            acc[j] += f.d[j] * (byte_dot(f.q[j][0], lo, W::OFFSET) + byte_dot(f.q[j][1], hi, W::OFFSET)) + f.m[j] * sx;
    }
};

// q5_0 / q5_1: bits 0 .. 3 of h as bit 4 of each of four bytes (the fifth bits of four values).
HOST_DEVICE inline uint32_t fifth_bits(uint32_t h) {
    return ((h & 1u) | ((h & 2u) << 7) | ((h & 4u) << 14) | ((h & 8u) << 21)) << 4;
}
