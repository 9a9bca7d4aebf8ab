/* NEON q6_k, q3_k and q2_k X16 kernels, one token at a time (NEON is the arm64 baseline: no flags,
 * no dotprod extension). Super-blocks outermost, as on x86: each one's integer weights sc (q - 32)
 * are unpacked once (x16_k16_unpack, gemm_x16_q6_k.h; q3_k's sc (q - 4), q2_k's sc q) for up to
 * X16_Q6K_TOKENS tokens, whose running sums wait in memory between super-blocks. Per sub-block
 * (word columns 4s .. 4s + 3 of an activation block) and row, vmlal_s16 sums the row's four int16
 * weights against activation elements 4c .. 4c + 3 in four int32 lanes; two rounds of pairwise adds
 * (exact) make four rows' sub-block sums of 16 products, within 16 * 4096 * 32767 < 2^31 (a whole
 * activation block's 32 could pass it, so the sums are taken per sub-block); each is converted to
 * float once and multiply-added with the rows' d times the block's da (q2_k: its rows' dmin m
 * times da and the sub-block's sum of activations go into offsets, taken off at the end).
 *
 * Error against float64: a term c P (c = fl(d da), P's conversion: 1 rounding each) meets at most
 * 2 nb FMAs (q2_k's, and its offsets', then the subtraction): |err| <= (2 nb + 3) u M + O(u^2),
 * inside X16_DOT_BOUND(nb) = (2 nb + 4) u (tests/neon/test_neon.c). */
#include <arm_neon.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16_q6_k.h"

/* One token's sums (rows 4q .. 4q + 3 in acc[q]) += the unpacked super-block against its
 * activation blocks y[0 .. 8); d: the 16 rows' d; dmm (q2_k; else NULL): the rows' dmin m of each
 * sub-block, which times the sub-block's da sum(qa) go into off[q] (taken off at the end: kept
 * apart, each sum meets 2 nb operations, as q6_k's). */
static inline void q6k_token(const x16_q6k_quants *u, const float32x4_t *d, const float32x4_t (*dmm)[4],
                             const block_q16_a *y, float32x4_t *acc, float32x4_t *off) {
    for (int j = 0; j < QK_K / QK_Q16_A; j++)
        for (int s = 0; s < 2; s++) { /* sub-block 2j + s */
            int32x4_t p[16];
            for (int r = 0; r < 16; r++)
                p[r] = vdupq_n_s32(0);
            for (int c = 4 * s; c < 4 * s + 4; c++) {
                const int16x4_t a = vld1_s16(&y[j].qs[4 * c]);
                for (int r = 0; r < 16; r += 2) {
                    const int16x8_t w = vld1q_s16(u->w[j][c] + 4 * r); /* rows r, r + 1 */
                    p[r] = vmlal_s16(p[r], vget_low_s16(w), a);
                    p[r + 1] = vmlal_s16(p[r + 1], vget_high_s16(w), a);
                }
            }
            for (int q = 0; q < 4; q++) {
                const int32x4_t isum = vpaddq_s32(vpaddq_s32(p[4 * q], p[4 * q + 1]), vpaddq_s32(p[4 * q + 2], p[4 * q + 3]));
                acc[q] = vfmaq_f32(acc[q], vcvtq_f32_s32(isum), vmulq_n_f32(d[q], y[j].d));
            }
            if (dmm) {
                const int32x4_t pairs = vaddq_s32(vpaddlq_s16(vld1q_s16(&y[j].qs[16 * s])),
                                                  vpaddlq_s16(vld1q_s16(&y[j].qs[16 * s + 8])));
                const float32x4_t sa = vdupq_n_f32(y[j].d * (float)vaddvq_s32(pairs));
                for (int q = 0; q < 4; q++)
                    off[q] = vfmaq_f32(off[q], dmm[2 * j + s][q], sa);
            }
        }
}

/* The 16 rows' f16 fields at p as f32, rows 4q .. 4q + 3 in f[q]. */
static inline void f16x16(const uint8_t *p, float32x4_t f[4]) {
    for (int q = 0; q < 4; q++) {
        uint16_t h[4];
        memcpy(h, p + 8 * q, sizeof h);
        f[q] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
    }
}

/* Up to X16_Q6K_TOKENS tokens: every super-block (of format fmt) against every token. */
static inline void gemm_tokens(const int fmt, int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                               const uint8_t *a, size_t a_stride) {
    float32x4_t acc[X16_Q6K_TOKENS][4], off[X16_Q6K_TOKENS][4];
    x16_q6k_quants u;
    for (int64_t i = 0; i < t; i++)
        for (int q = 0; q < 4; q++)
            acc[i][q] = off[i][q] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_K16_BLOCK(fmt);
        float32x4_t d[4], dmm[QK_K / 16][4];
        f16x16(g, d);
        if (fmt == K16_Q2_K) {
            float32x4_t dmin[4];
            f16x16(g + X16_Q2K_DMIN, dmin);
            for (int sb = 0; sb < QK_K / 16; sb++) /* sub-block sb's m: the high nibble of scale byte sb */
                for (int q = 0; q < 4; q++) {
                    uint8_t m[4];
                    for (int r = 0; r < 4; r++)
                        m[r] = g[X16_Q2K_SCALES + 64 * (sb / 4) + 4 * (4 * q + r) + sb % 4] >> 4;
                    const uint32x4_t mu = {m[0], m[1], m[2], m[3]};
                    dmm[sb][q] = vmulq_f32(dmin[q], vcvtq_f32_u32(mu));
                }
        }
        x16_k16_unpack(fmt, g, &u);
        for (int64_t i = 0; i < t; i++)
            q6k_token(&u, d, fmt == K16_Q2_K ? dmm : NULL, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A),
                      acc[i], off[i]);
    }
    for (int64_t i = 0; i < t; i++)
        for (int q = 0; q < 4; q++)
            vst1q_f32(out + i * out_stride + 4 * q, vsubq_f32(acc[i][q], off[i][q]));
}

static void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                 size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += X16_Q6K_TOKENS)
        gemm_tokens(fmt, k / QK_K, t - t0 < X16_Q6K_TOKENS ? t - t0 : X16_Q6K_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}

X16_K16_KERNEL(q6_K, K16_Q6_K, q16_a, neon)
X16_K16_KERNEL(q3_K, K16_Q3_K, q16_a, neon)
X16_K16_KERNEL(q2_K, K16_Q2_K, q16_a, neon)
