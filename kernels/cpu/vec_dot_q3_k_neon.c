/* q3_k's dot product with q16_a activations on NEON: vec_dot_q3_K_q16_a_ref's operations in its
 * order (vec_dot_q3_k_ref.c), the integer sums by NEON, so bit for bit the scalar result. q16_a
 * block j = 4h + kk's quants are bits 2kk of the 32 bytes qs[32h ..], less 4 where bit j of the
 * matching hmask byte is clear (vtst), as int8 -4..3, widened exactly. */
#include <arm_neon.h>

#include "llmrun.h"

/* sum of 16 quants q (int8) times the activations a: exact in int32. */
static inline int32_t isum16(int8x16_t q, const int16_t *a) {
    int32x4_t acc = vmull_s16(vget_low_s16(vmovl_s8(vget_low_s8(q))), vld1_s16(a));
    acc = vmlal_s16(acc, vget_high_s16(vmovl_s8(vget_low_s8(q))), vld1_s16(a + 4));
    acc = vmlal_s16(acc, vget_low_s16(vmovl_high_s8(q)), vld1_s16(a + 8));
    acc = vmlal_s16(acc, vget_high_s16(vmovl_high_s8(q)), vld1_s16(a + 12));
    return vaddvq_s32(acc);
}

void vec_dot_q3_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q3_K *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(x[i].d);
        const uint8x16_t hm[2] = {vld1q_u8(x[i].hmask), vld1q_u8(x[i].hmask + 16)};
        for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
            const uint8_t *qs = x[i].qs + 32 * (j / 4);
            const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * (j % 4)));
            const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j));
            int32_t p[2];
            for (int half = 0; half < 2; half++) {
                const uint8x16_t low = vandq_u8(vshlq_u8(vld1q_u8(qs + 16 * half), shift), vdupq_n_u8(3));
                const uint8x16_t minus = vbicq_u8(vdupq_n_u8(4), vtstq_u8(hm[half], bit)); /* 4 where clear */
                p[half] = isum16(vreinterpretq_s8_u8(vsubq_u8(low, minus)), y->qs + 16 * half);
            }
            const int32_t isum = llmr_q3_k_scale(x[i].scales, 2 * j) * p[0] + llmr_q3_k_scale(x[i].scales, 2 * j + 1) * p[1];
            sum += d * y->d * (float)isum;
        }
    }
    *s = sum;
}
