/* q5_k's rows-layout dot product with q16_a activations on NEON: vec_dot_q5_K_q16_a_ref's
 * operations in its order (vec_dot_q5_k_ref.c), the integer sums by NEON, so bit for bit the scalar
 * result. Sub-block j's quants are the low (j even) or high (j odd) nibbles of the 32 bytes
 * qs[32 (j / 2) ..], plus 16 where bit j of the matching qh byte is set (vtst), widened exactly. */
#include <arm_neon.h>

#include "llmrun.h"

/* sum of the 32 quants q (bytes 0..31) times the activations a: exact in int32. */
static inline int32_t isum_q5(uint8x16_t q0, uint8x16_t q1, const int16_t *a) {
    const int16x8_t w[4] = {vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(q0))), vreinterpretq_s16_u16(vmovl_high_u8(q0)),
                            vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(q1))), vreinterpretq_s16_u16(vmovl_high_u8(q1))};
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    for (int v = 0; v < 4; v++) {
        const int16x8_t av = vld1q_s16(a + 8 * v);
        acc0 = vmlal_s16(acc0, vget_low_s16(w[v]), vget_low_s16(av));
        acc1 = vmlal_high_s16(acc1, w[v], av);
    }
    return vaddvq_s32(vaddq_s32(acc0, acc1));
}

void vec_dot_q5_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q5_K *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(x[i].d), dmin = llmr_f16_to_f32(x[i].dmin);
        const uint8x16_t h0 = vld1q_u8(x[i].qh), h1 = vld1q_u8(x[i].qh + 16), sixteen = vdupq_n_u8(0x10);
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
            const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j));
            b0 = vorrq_u8(b0, vandq_u8(vtstq_u8(h0, bit), sixteen));
            b1 = vorrq_u8(b1, vandq_u8(vtstq_u8(h1, bit), sixteen));
            const int32_t isum = isum_q5(b0, b1, y->qs);
            sum += d * (float)sc * y->d * (float)isum - dmin * (float)m * y->s;
        }
    }
    *s = sum;
}
