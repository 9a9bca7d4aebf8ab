/* arm64 NEON dot products for quantised weights (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q4_K, q6_K) against q16_a activations.
 * NEON is baseline on arm64: no extra flags, no CPU test (dispatch.c, under __aarch64__).
 *
 * Each block's weights are widened to int16 (vmovl_s8, or nibble masks and vmovl_u8) and
 * multiplied with the int16 activations by vmull_s16 / vmlal_s16 (int16 x int16 -> int32,
 * exact, no dot-product extension needed); the block's integer sum is reduced exactly
 * (vaddvq_s32; every partial sum fits int32, see block_q16_a), and the float step per block is
 * the scalar kernel's, operation for operation and in the same order: the results equal
 * vec_dot_*_ref's bit for bit (the build has -ffp-contract=off, so nothing is fused). */
#include <arm_neon.h>
#include <string.h>

#include "llmrun.h"

/* sum(w * a) for one block given as four int16 quarters w0..w3 (elements 0..7, .., 24..31). */
static inline int32_t isum_i16(int16x8_t w0, int16x8_t w1, int16x8_t w2, int16x8_t w3, const int16_t *a) {
    const int16x8_t a0 = vld1q_s16(a), a1 = vld1q_s16(a + 8), a2 = vld1q_s16(a + 16), a3 = vld1q_s16(a + 24);
    int32x4_t acc0 = vmull_s16(vget_low_s16(w0), vget_low_s16(a0));
    int32x4_t acc1 = vmull_high_s16(w0, a0);
    acc0 = vmlal_s16(acc0, vget_low_s16(w1), vget_low_s16(a1));
    acc1 = vmlal_high_s16(acc1, w1, a1);
    acc0 = vmlal_s16(acc0, vget_low_s16(w2), vget_low_s16(a2));
    acc1 = vmlal_high_s16(acc1, w2, a2);
    acc0 = vmlal_s16(acc0, vget_low_s16(w3), vget_low_s16(a3));
    acc1 = vmlal_high_s16(acc1, w3, a3);
    return vaddvq_s32(vaddq_s32(acc0, acc1));
}

static inline int32_t isum_q8(const int8_t *q, const int16_t *a) {
    const int8x16_t b0 = vld1q_s8(q), b1 = vld1q_s8(q + 16);
    return isum_i16(vmovl_s8(vget_low_s8(b0)), vmovl_high_s8(b0), vmovl_s8(vget_low_s8(b1)), vmovl_high_s8(b1), a);
}

/* Element j is the low nibble of qs[j], element j + 16 the high nibble (both 0..15, so the
 * unsigned widening reinterpreted as int16 is exact). */
static inline int32_t isum_q4(const uint8_t *qs, const int16_t *a) {
    const uint8x16_t b = vld1q_u8(qs);
    const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0F));
    const uint8x16_t hi = vshrq_n_u8(b, 4);
    return isum_i16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(lo))), vreinterpretq_s16_u16(vmovl_high_u8(lo)),
                    vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(hi))), vreinterpretq_s16_u16(vmovl_high_u8(hi)), a);
}

/* 5-bit: the nibbles as q4's, bit j of qh (little-endian u32) adds 16 to element j (byte j of
 * a 16-byte vector takes qh's byte j / 8 and tests bit j % 8), minus `offset` (16: q5_0's signed
 * weights; 0: q5_1's), widened as int8 (-16..31: exact). */
static inline int32_t isum_q5(const uint8_t *qh, const uint8_t *qs, int offset, const int16_t *a) {
    uint8_t h[4];
    memcpy(h, qh, 4);
    static const uint8_t BITS[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bit = vld1q_u8(BITS), sixteen = vdupq_n_u8(0x10), off = vdupq_n_u8((uint8_t)offset);
    const uint8x16_t hlo = vcombine_u8(vdup_n_u8(h[0]), vdup_n_u8(h[1]));
    const uint8x16_t hhi = vcombine_u8(vdup_n_u8(h[2]), vdup_n_u8(h[3]));
    const uint8x16_t b = vld1q_u8(qs);
    const int8x16_t lo = vreinterpretq_s8_u8(
        vsubq_u8(vorrq_u8(vandq_u8(b, vdupq_n_u8(0x0F)), vandq_u8(vtstq_u8(hlo, bit), sixteen)), off));
    const int8x16_t hi =
        vreinterpretq_s8_u8(vsubq_u8(vorrq_u8(vshrq_n_u8(b, 4), vandq_u8(vtstq_u8(hhi, bit), sixteen)), off));
    return isum_i16(vmovl_s8(vget_low_s8(lo)), vmovl_high_s8(lo), vmovl_s8(vget_low_s8(hi)), vmovl_high_s8(hi), a);
}

/* iq4_nl: the nibbles as q4's, each replaced by its level (-127..113) by one table lookup
 * (vqtbl1q_s8 of the 16 levels), widened as int8: exact. */
static inline int32_t isum_iq4_nl(const uint8_t *qs, const int16_t *a) {
    const int8x16_t levels = vld1q_s8(llmr_iq4_nl_values);
    const uint8x16_t b = vld1q_u8(qs);
    const int8x16_t lo = vqtbl1q_s8(levels, vandq_u8(b, vdupq_n_u8(0x0F)));
    const int8x16_t hi = vqtbl1q_s8(levels, vshrq_n_u8(b, 4));
    return isum_i16(vmovl_s8(vget_low_s8(lo)), vmovl_high_s8(lo), vmovl_s8(vget_low_s8(hi)), vmovl_high_s8(hi), a);
}

/* f16 -> f32 by the hardware conversion: exact, so equal to llmr_f16_to_f32. */
static inline float f16(uint16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

void vec_dot_q8_0_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q8_0 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK8_0; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_q8(x[i].qs, y[i].qs);
    *s = sum;
}

void vec_dot_q4_0_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q4_0 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK4_0; i++)
        sum += f16(x[i].d) * (y[i].d * (float)isum_q4(x[i].qs, y[i].qs) - 8.0f * y[i].s);
    *s = sum;
}

void vec_dot_q4_1_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q4_1 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK4_1; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_q4(x[i].qs, y[i].qs) + f16(x[i].m) * y[i].s;
    *s = sum;
}

void vec_dot_q5_0_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q5_0 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK5_0; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_q5(x[i].qh, x[i].qs, 16, y[i].qs);
    *s = sum;
}

void vec_dot_q5_1_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q5_1 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK5_1; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_q5(x[i].qh, x[i].qs, 0, y[i].qs) + f16(x[i].m) * y[i].s;
    *s = sum;
}

void vec_dot_iq4_nl_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_iq4_nl *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK4_NL; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_iq4_nl(x[i].qs, y[i].qs);
    *s = sum;
}

/* q4_K: vec_dot_q4_K_q16_a_ref's operations in its order, the integer sums by NEON: the low
 * (j even) or high (j odd) nibbles of the 32 bytes qs[32 (j / 2) ..], widened exactly. */
void vec_dot_q4_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q4_K *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = f16(x[i].d), dmin = f16(x[i].dmin);
        for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
            uint8_t sc, m;
            llmr_q4_k_scale_min(j, x[i].scales, &sc, &m);
            const uint8_t *q = x[i].qs + 32 * (j / 2);
            uint8x16_t b0 = vld1q_u8(q), b1 = vld1q_u8(q + 16);
            if (j % 2) {
                b0 = vshrq_n_u8(b0, 4);
                b1 = vshrq_n_u8(b1, 4);
            } else {
                b0 = vandq_u8(b0, vdupq_n_u8(0x0F));
                b1 = vandq_u8(b1, vdupq_n_u8(0x0F));
            }
            const int32_t isum = isum_i16(
                vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b0))), vreinterpretq_s16_u16(vmovl_high_u8(b0)),
                vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b1))), vreinterpretq_s16_u16(vmovl_high_u8(b1)), y->qs);
            sum += d * (float)sc * y->d * (float)isum - dmin * (float)m * y->s;
        }
    }
    *s = sum;
}

/* q6_K: vec_dot_q6_K_q16_a_ref's operations in its order, the integer sums by NEON. A sub-block
 * of 16 weights is one int8x16 of q - 32 (-32..31). */

/* Half h of a super-block (its 64 bytes ql, 32 bytes qh): q16_a block k (0..3) of the half as
 * q[k][0] (elements 0..15, sub-block 2k of the half) and q[k][1] (16..31, sub-block 2k + 1). The
 * low four bits from ql (k % 2 picks the 32 bytes, k / 2 the nibble), the top two from qh (bits 2k). */
static inline void q6k_half(const uint8_t *ql, const uint8_t *qh, int8x16_t q[4][2]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(0x30), bias = vdupq_n_u8(32);
    for (int p = 0; p < 2; p++) {
        const uint8x16_t l0 = vld1q_u8(ql + 16 * p), l1 = vld1q_u8(ql + 32 + 16 * p), h = vld1q_u8(qh + 16 * p);
        const uint8x16_t u[4] = {
            vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(h, 4), m2)),
            vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(h, 2), m2)),
            vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h, m2)),
            vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(h, 2), m2)),
        };
        for (int k = 0; k < 4; k++)
            q[k][p] = vreinterpretq_s8_u8(vsubq_u8(u[k], bias)); /* 0..63 - 32, as signed bytes */
    }
}

/* sum(w * a) over a sub-block: 16 signed weights, 16 int16 activations; exact in int32. */
static inline int32_t isum_sub(int8x16_t w, const int16_t *a) {
    const int16x8_t w0 = vmovl_s8(vget_low_s8(w)), w1 = vmovl_high_s8(w);
    const int16x8_t a0 = vld1q_s16(a), a1 = vld1q_s16(a + 8);
    int32x4_t acc = vmull_s16(vget_low_s16(w0), vget_low_s16(a0));
    acc = vmlal_high_s16(acc, w0, a0);
    acc = vmlal_s16(acc, vget_low_s16(w1), vget_low_s16(a1));
    acc = vmlal_high_s16(acc, w1, a1);
    return vaddvq_s32(acc);
}

/* A row against T tokens' activation rows ys[t] into sums[t]: each half super-block unpacked
 * once; per token the reference's operations in its order, whatever T. */
static inline void q6k_row(int64_t k, const block_q6_K *x, const block_q16_a *const *ys, int T, float *sums) {
    for (int t = 0; t < T; t++)
        sums[t] = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = f16(x[i].d);
        for (int h = 0; h < 2; h++) {
            int8x16_t q[4][2];
            q6k_half(x[i].ql + 64 * h, x[i].qh + 32 * h, q);
            for (int kk = 0; kk < 4; kk++) {
                const int j = 4 * h + kk; /* the q16_a block of the super-block */
                const int64_t sc0 = x[i].scales[2 * j], sc1 = x[i].scales[2 * j + 1];
                for (int t = 0; t < T; t++) {
                    const block_q16_a *y = ys[t] + QK_K / QK_Q16_A * i + j;
                    const int64_t isum = sc0 * isum_sub(q[kk][0], y->qs) + sc1 * isum_sub(q[kk][1], y->qs + 16);
                    sums[t] += d * y->d * (float)isum;
                }
            }
        }
    }
}

void vec_dot_q6_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q16_a *ys[1] = {a};
    q6k_row(k, w, ys, 1, s);
}

/* LLMR_TILE tokens: each output the single-token kernel's bit for bit (so the scalar one's). */
void vec_dot_tile_q6_K_q16_a_neon(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                  size_t a_stride) {
    const block_q16_a *ys[LLMR_TILE];
    for (int t = 0; t < LLMR_TILE; t++)
        ys[t] = (const block_q16_a *)((const uint8_t *)a + t * a_stride);
    float sums[LLMR_TILE];
    q6k_row(k, w, ys, LLMR_TILE, sums);
    for (int t = 0; t < LLMR_TILE; t++)
        s[t * s_stride] = sums[t];
}
