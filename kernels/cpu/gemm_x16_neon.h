/* What the NEON X16 files share (gemm_x16_neon.c, gemm_x16_q5_k_neon.c): f16 fields to f32, the
 * int16 multiply-accumulate of four rows, and the super-block walk of q4_k and q5_k (q4k_gemm),
 * which differ only in how a qs word's quants become bytes. */
#ifndef LLMRUN_GEMM_X16_NEON_H
#define LLMRUN_GEMM_X16_NEON_H

#include <arm_neon.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Four f16 fields (of four consecutive rows) as f32; p may sit at any byte. */
static inline float32x4_t f16x4(const uint8_t *p) {
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

/* Row accumulators s[0..3] += the rows' four int16 weights (two rows per vector) times a. */
static inline void mla4(int32x4_t *s, int16x8_t w01, int16x8_t w23, int16x4_t a) {
    s[0] = vmlal_s16(s[0], vget_low_s16(w01), a);
    s[1] = vmlal_s16(s[1], vget_high_s16(w01), a);
    s[2] = vmlal_s16(s[2], vget_low_s16(w23), a);
    s[3] = vmlal_s16(s[3], vget_high_s16(w23), a);
}

static inline int16x8_t widen_u8(uint8x8_t v) { return vreinterpretq_s16_u16(vmovl_u8(v)); }

/* q4_k and q5_k, one token at a time, super-blocks outermost (as gemm_x16_avx2.c): each one's 16
 * rows' sub-block scales are unpacked once (x16_q4k_scales; q5_k's lie as q4_k's) for up to
 * Q4K_TOKENS tokens, whose running sums wait in memory between super-blocks. Per pair of
 * sub-blocks (the low and the high nibbles of qs words 8p .. 8p + 7) and four rows, each
 * sub-block sums in its own four int32 lanes per row, exact, reduced by two rounds of pairwise
 * adds; then per sub-block one conversion, one FMA with the rows' d sc times da and one fused
 * multiply-subtract of dmin m sa. A token's operations do not depend on the others: the same bits
 * whatever t. Error: each term (c = fl(d sc da): 1 rounding; offsets exact before the FMS) meets
 * at most 2 nb accumulations in its lane: within (2 nb + 1) u M, inside X16_DOT_BOUND(nb). */
#define Q4K_TOKENS 64

/* The quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c of rows 4j .. 4j + 3 of
 * the super-block at g, as bytes (byte 4r + i: row r's element). */
typedef void (*q4k_word_fn)(const uint8_t *g, int p, int c, int j, uint8x16_t *lo, uint8x16_t *hi);

/* One token's sums += the super-block at g (its scales unpacked) against its blocks y[0 .. 8). */
ALWAYS_INLINE void q4k_token(q4k_word_fn word, const uint8_t *g, float dsc[8][LLMR_X16], float dmm[8][LLMR_X16],
                             const block_q16_a *y, float32x4_t acc[4]) {
    for (int p = 0; p < 4; p++) {
        const block_q16_a *ylo = y + 2 * p, *yhi = y + 2 * p + 1;
        for (int j = 0; j < 4; j++) { /* rows 4j .. 4j + 3 */
            int32x4_t slo[4], shi[4];
            for (int r = 0; r < 4; r++)
                slo[r] = shi[r] = vdupq_n_s32(0);
            for (int c = 0; c < 8; c++) {
                uint8x16_t lo, hi;
                word(g, p, c, j, &lo, &hi);
                mla4(slo, widen_u8(vget_low_u8(lo)), widen_u8(vget_high_u8(lo)), vld1_s16(&ylo->qs[4 * c]));
                mla4(shi, widen_u8(vget_low_u8(hi)), widen_u8(vget_high_u8(hi)), vld1_s16(&yhi->qs[4 * c]));
            }
            const int32x4_t ilo = vpaddq_s32(vpaddq_s32(slo[0], slo[1]), vpaddq_s32(slo[2], slo[3]));
            const int32x4_t ihi = vpaddq_s32(vpaddq_s32(shi[0], shi[1]), vpaddq_s32(shi[2], shi[3]));
            acc[j] = vfmaq_f32(acc[j], vcvtq_f32_s32(ilo), vmulq_n_f32(vld1q_f32(dsc[2 * p] + 4 * j), ylo->d));
            acc[j] = vfmsq_f32(acc[j], vld1q_f32(dmm[2 * p] + 4 * j), vdupq_n_f32(ylo->s));
            acc[j] = vfmaq_f32(acc[j], vcvtq_f32_s32(ihi), vmulq_n_f32(vld1q_f32(dsc[2 * p + 1] + 4 * j), yhi->d));
            acc[j] = vfmsq_f32(acc[j], vld1q_f32(dmm[2 * p + 1] + 4 * j), vdupq_n_f32(yhi->s));
        }
    }
}

/* Up to Q4K_TOKENS tokens: every super-block (block bytes each) against every token. */
ALWAYS_INLINE void q4k_gemm_tokens(size_t block, q4k_word_fn word, int64_t nsb, int64_t t, float *out,
                                   size_t out_stride, const uint8_t *w, const uint8_t *a, size_t a_stride) {
    float32x4_t acc[Q4K_TOKENS][4];
    for (int64_t i = 0; i < t; i++)
        for (int j = 0; j < 4; j++)
            acc[i][j] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * block;
        float d[LLMR_X16], dmin[LLMR_X16], dsc[8][LLMR_X16], dmm[8][LLMR_X16];
        for (int j = 0; j < 4; j++) {
            vst1q_f32(d + 4 * j, f16x4(g + j * 8));
            vst1q_f32(dmin + 4 * j, f16x4(g + X16_Q4K_DMIN + j * 8));
        }
        x16_q4k_scales(g, d, dmin, dsc, dmm);
        for (int64_t i = 0; i < t; i++)
            q4k_token(word, g, dsc, dmm, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A), acc[i]);
    }
    for (int64_t i = 0; i < t; i++)
        for (int j = 0; j < 4; j++)
            vst1q_f32(out + i * out_stride + 4 * j, acc[i][j]);
}

/* All t tokens, Q4K_TOKENS at a time. */
ALWAYS_INLINE void q4k_gemm(size_t block, q4k_word_fn word, int64_t k, int64_t t, float *out, size_t out_stride,
                            const void *w, const void *a, size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q4K_TOKENS)
        q4k_gemm_tokens(block, word, k / QK_K, t - t0 < Q4K_TOKENS ? t - t0 : Q4K_TOKENS, out + t0 * out_stride,
                        out_stride, w, (const uint8_t *)a + t0 * a_stride, a_stride);
}

#endif
