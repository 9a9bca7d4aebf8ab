/* What the gemm_x16_q6_k_<isa>.c files share (they run q3_k and q2_k too, whose sub-blocks are 16
 * values as q6_k's: their geometry at the end): q6_k's X16 super-block geometry, and the unpacked
 * form of a super-block (x16_q6k_quants: its 16 rows' quants times their sub-block scales) with
 * its unpacking in GCC / Clang vector extensions, which the NEON kernel uses; AVX-512 and AVX2
 * make the same bytes with their own intrinsics (the generic vectors compiled to a third of
 * their speed there).
 *
 * A super-block of a group is 16 rows' 210-byte blocks (3360 bytes): the 16 d (f16), then words
 * 0-31 of the rows' ql, 32-47 of their qh, 48-51 of their 16 int8 scales, word w of row r at
 * 32 + 4 (16 w + r). q16_a block j = 4h + k of the super-block (h < 2, k < 4) takes, for its
 * elements 4c .. 4c + 3 (word column c < 8), ql word 16h + 8 (k % 2) + c (the low nibbles for
 * k < 2, the high ones for k >= 2) and qh word 32 + 8h + c (bits 2k, 2k + 1 of each byte, the
 * quant's top two); columns 0-3 are sub-block 2j, 4-7 sub-block 2j + 1 (llmrun.h, block_q6_K). */
#ifndef LLMRUN_GEMM_X16_Q6_K_H
#define LLMRUN_GEMM_X16_Q6_K_H

#include <string.h>

#include "llmrun.h"

#define X16_Q6K_BLOCK (LLMR_X16 * sizeof(block_q6_K))
#define X16_Q6K_QL (LLMR_X16 * 2)
#define X16_Q6K_QH (X16_Q6K_QL + LLMR_X16 * 128)
#define X16_Q6K_SCALES (X16_Q6K_QH + LLMR_X16 * 64)
/* Tokens whose running sums a pass holds: each super-block is unpacked once for up to this many. */
#define X16_Q6K_TOKENS 64

typedef uint8_t x16_q6k_u8 __attribute__((vector_size(64)));   /* one word of 16 rows */
typedef int8_t x16_q6k_i8 __attribute__((vector_size(64)));
typedef int16_t x16_q6k_i16 __attribute__((vector_size(128)));
typedef int32_t x16_q6k_i32 __attribute__((vector_size(64)));   /* one lane per row */
typedef uint32_t x16_q6k_u32 __attribute__((vector_size(64)));
typedef float x16_q6k_f32 __attribute__((vector_size(64)));

/* A super-block's integer weights sc (q - 32) as int16, in the order the kernels read them:
 * w[j][c] is word column c of q16_a block j for rows 0-15, element 4c + i of row r at 4r + i.
 * |sc (q - 32)| <= 128 * 32 = 4096, so a q16_a block's 32 products with activations |qa| <=
 * 32767 (quantize_row_q16_a) sum within 32 * 4096 * 32767 < 2^32 in all, and an int32 lane of
 * int16 pairs, which holds 16 of them (the kernels' lanes (r, p)), within 16 * 4096 * 32767 =
 * 2,147,418,112 < 2^31: no lane can overflow. (Activations of -32768 could reach 2^31 exactly:
 * the activation quantisers never give it, |x / d| <= 32767 by construction.) */
typedef struct {
    int16_t w[QK_K / QK_Q16_A][8][LLMR_X16 * 4];
} x16_q6k_quants;

/* Sub-block scale i (< 4) of each row's scales word sw, sign-extended, at lanes 4r .. 4r + 3. */
static inline x16_q6k_i16 x16_q6k_scale_lanes(x16_q6k_u32 sw, int i) {
    typedef int16_t half_lanes __attribute__((vector_size(64)));
    const half_lanes s = (half_lanes)((x16_q6k_i32)(sw << (24 - 8 * i)) >> 24); /* row r's at 2r */
#define X16_Q6K_FOUR(r) 2 * (r), 2 * (r), 2 * (r), 2 * (r)
    return __builtin_shufflevector(s, s, X16_Q6K_FOUR(0), X16_Q6K_FOUR(1), X16_Q6K_FOUR(2), X16_Q6K_FOUR(3),
                                   X16_Q6K_FOUR(4), X16_Q6K_FOUR(5), X16_Q6K_FOUR(6), X16_Q6K_FOUR(7),
                                   X16_Q6K_FOUR(8), X16_Q6K_FOUR(9), X16_Q6K_FOUR(10), X16_Q6K_FOUR(11),
                                   X16_Q6K_FOUR(12), X16_Q6K_FOUR(13), X16_Q6K_FOUR(14), X16_Q6K_FOUR(15));
#undef X16_Q6K_FOUR
}

/* The 16-value sub-block k-quants the gemm_x16_q6_k_<isa>.c kernels run (their fmt switch). */
enum { K16_Q6_K, K16_Q3_K, K16_Q2_K };

/* q3_k, run by the same kernels: its 16-element sub-blocks meet the q16_a blocks as q6_k's do. A
 * super-block of a group is 16 rows' 110-byte blocks (1760 bytes): the 16 d (f16), then words 0-7
 * of the rows' hmask, 8-23 of their qs, 24-26 of their 12 packed scale bytes. q16_a block j = 4h +
 * k (h < 2, k < 4), elements 4c .. 4c + 3 (word column c < 8): bits 2k, 2k + 1 of qs word 8h + c's
 * bytes are the quants' low two bits, bit 4h + k of hmask word c's bytes their third (set: +0,
 * clear: -4, llmr_q3_k_quant). So q = low | third << 2 (0 .. 7) and the weight is sc (q - 4), as
 * q6_k's is sc (q - 32). */
#define X16_Q3K_BLOCK (LLMR_X16 * sizeof(block_q3_K))
#define X16_Q3K_HMASK (LLMR_X16 * 2)
#define X16_Q3K_QS (X16_Q3K_HMASK + LLMR_X16 * 32)
#define X16_Q3K_SCALES (X16_Q3K_QS + LLMR_X16 * 64)

/* q3_k's 16 sub-block scales less 32 (-32 .. 31) as int8 in q6_k's scale words: byte i of row r's
 * word w (at 64 w + 4 r + i) is sub-block 4w + i's, so that the kernels read them as q6_k's.
 * llmr_q3_k_scale on whole words: with w0, w1, w2 a row's three words of packed bytes, sub-blocks
 * 0-3 take the low nibbles of w0's bytes, 4-7 of w1's, 8-11 and 12-15 their high nibbles, and
 * their top two bits are bits 0-1, 2-3, 4-5 and 6-7 of w2's bytes. */
static inline void x16_q3k_scale_words(const uint8_t *g, uint8_t words[4 * 64]) {
    x16_q6k_u32 w0, w1, w2;
    memcpy(&w0, g + X16_Q3K_SCALES, sizeof w0);
    memcpy(&w1, g + X16_Q3K_SCALES + 64, sizeof w1);
    memcpy(&w2, g + X16_Q3K_SCALES + 128, sizeof w2);
    const x16_q6k_u32 s[4] = {(w0 & 0x0F0F0F0F) | ((w2 << 4) & 0x30303030), (w1 & 0x0F0F0F0F) | ((w2 << 2) & 0x30303030),
                              ((w0 >> 4) & 0x0F0F0F0F) | (w2 & 0x30303030), ((w1 >> 4) & 0x0F0F0F0F) | ((w2 >> 2) & 0x30303030)};
    for (int w = 0; w < 4; w++) {
        const x16_q6k_u8 less32 = (x16_q6k_u8)s[w] - 32; /* byte by byte: -32 .. 31 as int8 */
        memcpy(words + 64 * w, &less32, sizeof less32);
    }
}

/* q2_k: a super-block of a group is 16 rows' 84-byte blocks (1344 bytes): the 16 d (f16), the 16
 * dmin, then words 0-3 of the rows' 16 scale bytes (byte i of word w: sub-block 4w + i's scale sc
 * in its low nibble, its min m in the high one), 4-19 of their qs, whose bits lie as q3_k's: q16_a
 * block j = 4h + k, word column c, bits 2k, 2k + 1 of qs word 8h + c's bytes, the quant q (0 ..
 * 3). The weight is d sc q - dmin m: the kernels sum q against the activations as q6_k's, and
 * the mins go into the offsets with the block's s16. */
#define X16_Q2K_BLOCK (LLMR_X16 * sizeof(block_q2_K))
#define X16_Q2K_DMIN (LLMR_X16 * 2)
#define X16_Q2K_SCALES (LLMR_X16 * 4)
#define X16_Q2K_QS (X16_Q2K_SCALES + LLMR_X16 * 16)

/* Bytes of one super-block of a group, and the bias the unsigned quants carry (q - 32, q - 4; q2_k
 * none: its offsets are its mins). */
#define X16_K16_BLOCK(fmt) ((fmt) == K16_Q6_K ? X16_Q6K_BLOCK : (fmt) == K16_Q3_K ? X16_Q3K_BLOCK : X16_Q2K_BLOCK)
#define X16_K16_BIAS(fmt) ((fmt) == K16_Q6_K ? 32.0f : (fmt) == K16_Q3_K ? 4.0f : 1.0f)

/* A super-block's integer weights, in the order the kernels read them (x16_q6k_quants), in GCC /
 * Clang vector extensions (the NEON kernel's): q6_k's sc (q - 32), q3_k's sc (q - 4) (|.| <= 32 *
 * 4), q2_k's sc q (0 .. 45; its mins, which do not multiply q, are the kernel's). */
static inline void x16_k16_unpack(const int fmt, const uint8_t *g, x16_q6k_quants *u) {
    uint8_t q3_words[4 * 64];
    if (fmt == K16_Q3_K)
        x16_q3k_scale_words(g, q3_words);
    const uint8_t *words = fmt == K16_Q6_K ? g + X16_Q6K_SCALES : fmt == K16_Q3_K ? q3_words : g + X16_Q2K_SCALES;
    x16_q6k_i16 sc[QK_K / 16];
    for (int w = 0; w < 4; w++) {
        x16_q6k_u32 sw;
        memcpy(&sw, words + 64 * w, sizeof sw);
        if (fmt == K16_Q2_K) /* the scales: low nibbles */
            sw &= 0x0F0F0F0F;
        for (int i = 0; i < 4; i++)
            sc[4 * w + i] = x16_q6k_scale_lanes(sw, i);
    }
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < 8; c++)
            for (int k = 0; k < 4; k++) {
                const int j = 4 * h + k;
                x16_q6k_u8 q, a, b; /* q: the quant, unsigned */
                if (fmt == K16_Q6_K) { /* the low or high nibble of an ql word, bits 2k, 2k + 1 of the qh word */
                    memcpy(&a, g + X16_Q6K_QL + (16 * h + 8 * (k % 2) + c) * 64, sizeof a);
                    memcpy(&b, g + X16_Q6K_QH + (8 * h + c) * 64, sizeof b);
                    q = ((a >> (4 * (k / 2))) & 0x0F) | (((b >> (2 * k)) & 3) << 4);
                } else if (fmt == K16_Q3_K) { /* bits 2k, 2k + 1 of qs, bit 4h + k of hmask */
                    memcpy(&a, g + X16_Q3K_QS + (8 * h + c) * 64, sizeof a);
                    memcpy(&b, g + X16_Q3K_HMASK + c * 64, sizeof b);
                    q = ((a >> (2 * k)) & 3) | (((b >> (4 * h + k)) & 1) << 2);
                } else { /* bits 2k, 2k + 1 of qs */
                    memcpy(&a, g + X16_Q2K_QS + (8 * h + c) * 64, sizeof a);
                    q = (a >> (2 * k)) & 3;
                }
                const uint8_t bias = fmt == K16_Q6_K ? 32 : fmt == K16_Q3_K ? 4 : 0;
                const x16_q6k_i16 v = __builtin_convertvector((x16_q6k_i8)(q - bias), x16_q6k_i16) * sc[2 * j + c / 4];
                memcpy(u->w[j][c], &v, sizeof v);
            }
}

/* A gemm_x16_q6_k_<isa>.c's exported kernel for one format: the file's gemm(fmt, ...); act names
 * the activation blocks it reads (q16_a, q16_b). */
#define X16_K16_KERNEL(type, fmt, act, isa)                                                                 \
    void gemm_x16_##type##_##act##_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                         const void *a, size_t a_stride) {                                  \
        gemm(fmt, k, t, out, out_stride, w, a, a_stride);                                                    \
    }

/* A super-block's rows' d sc (dsc) and, for q2_k, dmin m (dmm), by the file's q6k_scales(g, scale
 * words, dsc) and q2k_scales(g, dsc, dmm): q3_k's packed scales made into q6_k's words first. */
#define X16_K16_SCALES(fmt, g, dsc, dmm)                  \
    do {                                                  \
        if ((fmt) == K16_Q2_K) {                          \
            q2k_scales(g, dsc, dmm);                      \
        } else if ((fmt) == K16_Q3_K) {                   \
            uint8_t words_[4 * 64];                       \
            x16_q3k_scale_words(g, words_);               \
            q6k_scales(g, words_, dsc);                   \
        } else {                                          \
            q6k_scales(g, (g) + X16_Q6K_SCALES, dsc);     \
        }                                                 \
    } while (0)

#endif
