/* NEON products of X16 weight groups (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl; q4_k at the end) with q16_a activations, one token at a
 * time (NEON is the arm64 baseline: no flags, no dotprod extension).
 *
 * A 16-byte load holds quant word c of four rows (rows 4j .. 4j + 3 of the group); widened to
 * int16, each row's four elements meet activation elements 4c .. 4c + 3 in vmlal_s16, so row r's
 * int32x4 accumulator sums its block in four lanes, exact. At the block's end two rounds of
 * pairwise adds (exact) turn four rows' accumulators into one int32x4 of four rows' block sums,
 * and from there each lane is one row: converted to float once and multiply-added with the
 * rows' scales times the activation's, then the q4 offset (-8 d sa, m sa) by a second FMA. The
 * error is gemm_x16_avx512.c's: within X16_DOT_BOUND (tests/neon/test_neon.c). */
#include "gemm_x16_neon.h"

/* 5-bit weights of four rows' quant word: nibble bytes nib plus 16 where their bit of the rows'
 * qh words h is set (X16_Q5_SEL / X16_Q5_BIT, gemm_x16.h), minus off; as int8 (-16..31). */
static inline int8x16_t q5_bytes(uint8x16_t nib, uint8x16_t h, uint8x16_t sel, uint8x16_t bit, uint8x16_t off) {
    const uint8x16_t set = vtstq_u8(vqtbl1q_u8(h, sel), bit);
    return vreinterpretq_s8_u8(vsubq_u8(vorrq_u8(nib, vandq_u8(set, vdupq_n_u8(0x10))), off));
}

static inline void one_token(const int fmt, int64_t nb, float *out, const uint8_t *w, const block_q16_a *y) {
    const int n_scales = X16_HAS_M(fmt) ? 2 : 1;
    const size_t group_block = X16_GROUP_BLOCK(fmt);
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};

    for (int64_t b = 0; b < nb; b++, y++) {
        const uint8_t *g = w + b * group_block;
        const uint8_t *q = g + n_scales * LLMR_X16 * 2;
        int32x4_t s[16];
        for (int r = 0; r < 16; r++)
            s[r] = vdupq_n_s32(0);
        if (fmt == F_Q8_0) {
            for (int c = 0; c < 8; c++) {
                const int16x4_t a = vld1_s16(&y->qs[4 * c]);
                for (int j = 0; j < 4; j++) {
                    const int8x16_t raw = vld1q_s8((const int8_t *)q + c * 64 + j * 16);
                    mla4(&s[4 * j], vmovl_s8(vget_low_s8(raw)), vmovl_s8(vget_high_s8(raw)), a);
                }
            }
        } else if (X16_IS_Q5(fmt)) {
            const uint8x16_t nibble = vdupq_n_u8(0x0F), off = vdupq_n_u8(fmt == F_Q5_0 ? 16 : 0);
            for (int c = 0; c < 4; c++) {
                const int16x4_t alo = vld1_s16(&y->qs[4 * c]), ahi = vld1_s16(&y->qs[16 + 4 * c]);
                const uint8x16_t sel_lo = vld1q_u8(X16_Q5_SEL[c >> 1]), sel_hi = vld1q_u8(X16_Q5_SEL[2 + (c >> 1)]);
                const uint8x16_t bit = vld1q_u8(X16_Q5_BIT[c & 1]);
                for (int j = 0; j < 4; j++) {
                    const uint8x16_t raw = vld1q_u8(q + 64 + c * 64 + j * 16), h = vld1q_u8(q + j * 16);
                    const int8x16_t lo = q5_bytes(vandq_u8(raw, nibble), h, sel_lo, bit, off);
                    const int8x16_t hi = q5_bytes(vshrq_n_u8(raw, 4), h, sel_hi, bit, off);
                    mla4(&s[4 * j], vmovl_s8(vget_low_s8(lo)), vmovl_high_s8(lo), alo);
                    mla4(&s[4 * j], vmovl_s8(vget_low_s8(hi)), vmovl_high_s8(hi), ahi);
                }
            }
        } else if (fmt == F_IQ4_NL) {
            /* q4's nibbles replaced by their levels (one table lookup each), widened as int8 */
            const uint8x16_t nibble = vdupq_n_u8(0x0F);
            const int8x16_t levels = vld1q_s8(llmr_iq4_nl_values);
            for (int c = 0; c < 4; c++) {
                const int16x4_t alo = vld1_s16(&y->qs[4 * c]), ahi = vld1_s16(&y->qs[16 + 4 * c]);
                for (int j = 0; j < 4; j++) {
                    const uint8x16_t raw = vld1q_u8(q + c * 64 + j * 16);
                    const int8x16_t lo = vqtbl1q_s8(levels, vandq_u8(raw, nibble));
                    const int8x16_t hi = vqtbl1q_s8(levels, vshrq_n_u8(raw, 4));
                    mla4(&s[4 * j], vmovl_s8(vget_low_s8(lo)), vmovl_high_s8(lo), alo);
                    mla4(&s[4 * j], vmovl_s8(vget_low_s8(hi)), vmovl_high_s8(hi), ahi);
                }
            }
        } else {
            const uint8x16_t nibble = vdupq_n_u8(0x0F);
            for (int c = 0; c < 4; c++) {
                const int16x4_t alo = vld1_s16(&y->qs[4 * c]), ahi = vld1_s16(&y->qs[16 + 4 * c]);
                for (int j = 0; j < 4; j++) {
                    const uint8x16_t raw = vld1q_u8(q + c * 64 + j * 16);
                    const uint8x16_t lo = vandq_u8(raw, nibble), hi = vshrq_n_u8(raw, 4);
                    mla4(&s[4 * j], widen_u8(vget_low_u8(lo)), widen_u8(vget_high_u8(lo)), alo);
                    mla4(&s[4 * j], widen_u8(vget_low_u8(hi)), widen_u8(vget_high_u8(hi)), ahi);
                }
            }
        }

        const float32x4_t sa = vdupq_n_f32(y->s);
        for (int j = 0; j < 4; j++) {
            const int32x4_t isum = vpaddq_s32(vpaddq_s32(s[4 * j], s[4 * j + 1]), vpaddq_s32(s[4 * j + 2], s[4 * j + 3]));
            const float32x4_t d = f16x4(g + j * 8);
            acc[j] = vfmaq_f32(acc[j], vcvtq_f32_s32(isum), vmulq_n_f32(d, y->d));
            if (fmt == F_Q4_0)
                acc[j] = vfmaq_f32(acc[j], vmulq_n_f32(d, -8.0f), sa);
            else if (X16_HAS_M(fmt))
                acc[j] = vfmaq_f32(acc[j], f16x4(g + 32 + j * 8), sa);
        }
    }
    for (int j = 0; j < 4; j++)
        vst1q_f32(out + 4 * j, acc[j]);
}

static inline void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                        const void *a, size_t a_stride) {
    for (int64_t i = 0; i < t; i++)
        one_token(fmt, k / QK_Q16_A, /* blocks: these types' are q16_a's (llmrun.h) */
                   out + i * out_stride, w, (const block_q16_a *)((const uint8_t *)a + i * a_stride));
}

/* q4_k: q4k_gemm (gemm_x16_neon.h), its quants the nibbles of each qs word. */
ALWAYS_INLINE void q4k_word(const uint8_t *g, int p, int c, int j, uint8x16_t *lo, uint8x16_t *hi) {
    const uint8x16_t raw = vld1q_u8(g + X16_Q4K_QS + (8 * p + c) * 64 + j * 16);
    *lo = vandq_u8(raw, vdupq_n_u8(0x0F));
    *hi = vshrq_n_u8(raw, 4);
}

static void gemm_q4_k(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                      size_t a_stride) {
    q4k_gemm(X16_Q4K_BLOCK, q4k_word, k, t, out, out_stride, w, a, a_stride);
}

LLMR_GEMM_X16_KERNELS(neon)
LLMR_GEMM_X16_KERNEL_Q4_K(neon)
