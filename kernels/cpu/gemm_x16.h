/* What the gemm_x16_<isa>.c files share: the weight formats they tell apart, q4_k's super-block
 * geometry and scale unpacking, and their exported kernels, made from the file's own
 *     gemm(fmt, k, t, out, out_stride, w, a, a_stride)      (the six 32-element formats)
 *     gemm_q4_k(k, t, out, out_stride, w, a, a_stride)
 * by LLMR_GEMM_X16_KERNELS(isa) and LLMR_GEMM_X16_KERNEL_Q4_K(isa) at the end of the file
 * (avx512vnni's q4_k kernel is another: gemm_x16_q4_k_avx512vnni.c). */
#ifndef LLMRUN_GEMM_X16_H
#define LLMRUN_GEMM_X16_H

enum { F_Q8_0, F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_IQ4_NL };

/* Bytes of one block of an X16 group (16 rows' blocks) of format fmt. */
#define X16_GROUP_BLOCK(fmt)                                                                         \
    (LLMR_X16 * ((fmt) == F_Q8_0 ? sizeof(block_q8_0) : (fmt) == F_Q4_0 ? sizeof(block_q4_0)          \
                 : (fmt) == F_Q4_1 ? sizeof(block_q4_1) : (fmt) == F_Q5_0 ? sizeof(block_q5_0)        \
                 : (fmt) == F_Q5_1 ? sizeof(block_q5_1) : sizeof(block_iq4_nl)))
/* The formats with a second f16 field, m (the group's 16 m after its 16 d): offset m sa. */
#define X16_HAS_M(fmt) ((fmt) == F_Q4_1 || (fmt) == F_Q5_1)
/* The formats with an offset term per block: q4_0's -8 d sa, and m sa. q8_0's, q5_0's and
 * iq4_nl's weights are signed integers (q5_0's q - 16 and iq4_nl's levels are taken before the
 * multiply-add): none. */
#define X16_HAS_OFFSET(fmt) ((fmt) == F_Q4_0 || X16_HAS_M(fmt))
/* 5-bit formats: the block's quant word 0 (16 rows' u32 qh, 64 bytes) comes before its four qs
 * words. Within 4 consecutive rows' 16 bytes of a qs word c, byte 4r + i is element 4c + i (low
 * nibble) and 16 + 4c + i (high nibble) of row r: its fifth bit is bit 4 (c % 2) + i of byte
 * c / 2 (low) or 2 + c / 2 (high) of row r's qh. X16_Q5_SEL[s] picks byte s of each row's qh
 * (a byte shuffle within 16 bytes), X16_Q5_BIT[c % 2] the bit. */
#define X16_IS_Q5(fmt) ((fmt) == F_Q5_0 || (fmt) == F_Q5_1)
static const uint8_t X16_Q5_SEL[4][16] = {
    {0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12},
    {1, 1, 1, 1, 5, 5, 5, 5, 9, 9, 9, 9, 13, 13, 13, 13},
    {2, 2, 2, 2, 6, 6, 6, 6, 10, 10, 10, 10, 14, 14, 14, 14},
    {3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11, 11, 15, 15, 15, 15}};
/* The same bits for int16 lanes (the bytes widened): lane 4r + i of a word c tests bit 4c + i of
 * row r's low (or high) qh half; 8 rows, for AVX-512's 32 lanes (AVX2 reads the first 16). */
#define X16_Q5_BITS(c) 1 << (4 * (c)), 2 << (4 * (c)), 4 << (4 * (c)), (8 << (4 * (c))) & 0xFFFF
#define X16_Q5_BITS8(c) X16_Q5_BITS(c), X16_Q5_BITS(c), X16_Q5_BITS(c), X16_Q5_BITS(c), \
                        X16_Q5_BITS(c), X16_Q5_BITS(c), X16_Q5_BITS(c), X16_Q5_BITS(c)
static const uint16_t X16_Q5_BIT16[4][32] = {{X16_Q5_BITS8(0)}, {X16_Q5_BITS8(1)}, {X16_Q5_BITS8(2)},
                                             {X16_Q5_BITS8(3)}};
static const uint8_t X16_Q5_BIT[2][16] = {{1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8},
                                          {16, 32, 64, 128, 16, 32, 64, 128, 16, 32, 64, 128, 16, 32, 64, 128}};

/* q4_k: a super-block of a group is 16 rows' 144-byte blocks (2304 bytes): the 16 d (f16), the
 * 16 dmin, then words 0-2 of the rows' 12 packed scale bytes, then qs words 0-31, each word w of
 * row r at 4 (16 w + r) from where its kind starts. qs word c holds bytes 4c .. 4c + 3 of each
 * row's qs: elements 4 (c % 8) .. + 3 of sub-block 2 (c / 8) (low nibbles) and of sub-block
 * 2 (c / 8) + 1 (high nibbles), which meet activation blocks 2 (c / 8) and 2 (c / 8) + 1. */
#define X16_Q4K_BLOCK (LLMR_X16 * sizeof(block_q4_K))
#define X16_Q4K_DMIN (LLMR_X16 * 2)
#define X16_Q4K_SCALES (LLMR_X16 * 4)
#define X16_Q4K_QS (X16_Q4K_SCALES + LLMR_X16 * 12)

/* q5_k: a super-block of a group is 16 rows' 176-byte blocks (2816 bytes): q4_k's d, dmin and
 * packed scale words at the same offsets, then the rows' qh words 0-7, then qs words 0-31. qh word
 * c holds qh[4c .. 4c + 3] of each row, the fifth bits of elements 4c .. 4c + 3 of every
 * sub-block (bit s for sub-block s): the bits of qs words c, 8 + c, 16 + c and 24 + c. */
#define X16_Q5K_BLOCK (LLMR_X16 * sizeof(block_q5_K))
#define X16_Q5K_QH (X16_Q4K_SCALES + LLMR_X16 * 12)
#define X16_Q5K_QS (X16_Q5K_QH + LLMR_X16 * 32)

/* One lane per row of a group (GCC / Clang vector extensions: one zmm on AVX-512, two ymm on
 * AVX2, four q registers on NEON). */
typedef int32_t x16_i32 __attribute__((vector_size(64)));
typedef float x16_f32 __attribute__((vector_size(64)));

/* The 16 rows' sub-block scales of the q4_k super-block at g, as floats: dsc[j][r] = d_r sc_rj and
 * dmm[j][r] = dmin_r m_rj, both exact (an f16 times a 6-bit integer); d and dmin are the rows'
 * f16 fields as f32 (each ISA converts them its own way). The unpacking is llmr_q4_k_scale_min
 * on whole words: with w0, w1, w2 a row's three words of packed bytes, the scales of sub-blocks
 * 0-3 are the bytes of w0 & 0x3f3f3f3f and the mins those of w1 & 0x3f3f3f3f; sub-blocks 4-7
 * take the low (scales) or high (mins) nibbles of w2's bytes as their low four bits and the top
 * two bits of w0's (scales) or w1's (mins) bytes as their top two. */
static inline void x16_q4k_scales(const uint8_t *g, const float *d, const float *dmin, float dsc[8][LLMR_X16],
                                  float dmm[8][LLMR_X16]) {
    x16_i32 w0, w1, w2;
    memcpy(&w0, g + X16_Q4K_SCALES, sizeof w0);
    memcpy(&w1, g + X16_Q4K_SCALES + 64, sizeof w1);
    memcpy(&w2, g + X16_Q4K_SCALES + 128, sizeof w2);
    const x16_i32 sc[2] = {w0 & 0x3f3f3f3f, (w2 & 0x0f0f0f0f) | ((w0 >> 2) & 0x30303030)};
    const x16_i32 mn[2] = {w1 & 0x3f3f3f3f, ((w2 >> 4) & 0x0f0f0f0f) | ((w1 >> 2) & 0x30303030)};
    x16_f32 vd, vdmin;
    memcpy(&vd, d, sizeof vd);
    memcpy(&vdmin, dmin, sizeof vdmin);
    for (int j = 0; j < 8; j++) {
        const int shift = 8 * (j % 4); /* byte j % 4 of each lane (the & also drops >>'s sign bits) */
        const x16_f32 s = vd * __builtin_convertvector((sc[j / 4] >> shift) & 0xFF, x16_f32);
        const x16_f32 m = vdmin * __builtin_convertvector((mn[j / 4] >> shift) & 0xFF, x16_f32);
        memcpy(dsc[j], &s, sizeof s);
        memcpy(dmm[j], &m, sizeof m);
    }
}

#define LLMR_GEMM_X16_KERNEL(type, fmt, isa)                                                         \
    void gemm_x16_##type##_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                       const void *a, size_t a_stride) {                            \
        gemm(fmt, k, t, out, out_stride, w, a, a_stride);                                            \
    }
/* (through one more macro, so that an isa given as a macro, X16_ISA, is expanded before ##) */
#define LLMR_GEMM_X16_KERNEL_Q4_K(isa) LLMR_GEMM_X16_KERNEL_Q4_K_(isa)
#define LLMR_GEMM_X16_KERNEL_Q4_K_(isa)                                                              \
    void gemm_x16_q4_K_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride) {                                \
        gemm_q4_k(k, t, out, out_stride, w, a, a_stride);                                            \
    }
#define LLMR_GEMM_X16_KERNELS(isa)                                                                   \
    LLMR_GEMM_X16_KERNEL(q8_0, F_Q8_0, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(q4_0, F_Q4_0, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(q4_1, F_Q4_1, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(q5_0, F_Q5_0, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(q5_1, F_Q5_1, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(iq4_nl, F_IQ4_NL, isa)

#endif
