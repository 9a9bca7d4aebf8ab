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
#include <arm_neon.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

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

/* q4_k, one token at a time, super-blocks outermost (as gemm_x16_avx2.c): each one's 16 rows'
 * sub-block scales are unpacked once (x16_q4k_scales) for up to Q4K_TOKENS tokens, whose running
 * sums wait in memory between super-blocks. Per pair of sub-blocks (the low and the high nibbles
 * of qs words 8p .. 8p + 7) and four rows, each sub-block sums in its own four int32 lanes per
 * row, exact, reduced by one_token's pairwise adds; then per sub-block one conversion, one FMA
 * with the rows' d sc times da and one fused multiply-subtract of dmin m sa. A token's
 * operations do not depend on the others: the same bits whatever t. Error: each term (c =
 * fl(d sc da): 1 rounding; offsets exact before the FMS) meets at most 2 nb accumulations in its
 * lane: within (2 nb + 1) u M, inside X16_DOT_BOUND(nb). */
#define Q4K_TOKENS 64

/* One token's sums += the super-block at g (its scales unpacked) against its blocks y[0 .. 8). */
static inline void q4k_token(const uint8_t *g, float dsc[8][LLMR_X16], float dmm[8][LLMR_X16], const block_q16_a *y,
                             float32x4_t acc[4]) {
    const uint8x16_t nibble = vdupq_n_u8(0x0F);
    for (int p = 0; p < 4; p++) {
        const uint8_t *q = g + X16_Q4K_QS + p * 8 * 64;
        const block_q16_a *ylo = y + 2 * p, *yhi = y + 2 * p + 1;
        for (int j = 0; j < 4; j++) { /* rows 4j .. 4j + 3 */
            int32x4_t slo[4], shi[4];
            for (int r = 0; r < 4; r++)
                slo[r] = shi[r] = vdupq_n_s32(0);
            for (int c = 0; c < 8; c++) {
                const uint8x16_t raw = vld1q_u8(q + c * 64 + j * 16);
                const uint8x16_t lo = vandq_u8(raw, nibble), hi = vshrq_n_u8(raw, 4);
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

/* Up to Q4K_TOKENS tokens: every super-block against every token. */
static void gemm_q4_k_tokens(int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                             const uint8_t *a, size_t a_stride) {
    float32x4_t acc[Q4K_TOKENS][4];
    for (int64_t i = 0; i < t; i++)
        for (int j = 0; j < 4; j++)
            acc[i][j] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_Q4K_BLOCK;
        float d[LLMR_X16], dmin[LLMR_X16], dsc[8][LLMR_X16], dmm[8][LLMR_X16];
        for (int j = 0; j < 4; j++) {
            vst1q_f32(d + 4 * j, f16x4(g + j * 8));
            vst1q_f32(dmin + 4 * j, f16x4(g + X16_Q4K_DMIN + j * 8));
        }
        x16_q4k_scales(g, d, dmin, dsc, dmm);
        for (int64_t i = 0; i < t; i++)
            q4k_token(g, dsc, dmm, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A), acc[i]);
    }
    for (int64_t i = 0; i < t; i++)
        for (int j = 0; j < 4; j++)
            vst1q_f32(out + i * out_stride + 4 * j, acc[i][j]);
}

static void gemm_q4_k(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                      size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q4K_TOKENS)
        gemm_q4_k_tokens(k / QK_K, t - t0 < Q4K_TOKENS ? t - t0 : Q4K_TOKENS, out + t0 * out_stride, out_stride, w,
                         (const uint8_t *)a + t0 * a_stride, a_stride);
}

LLMR_GEMM_X16_KERNELS(neon)
