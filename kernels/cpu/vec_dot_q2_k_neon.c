/* q2_k's dot product with q16_a activations on NEON: vec_dot_q2_K_q16_a_ref's operations in its
 * order (vec_dot_q2_k_ref.c), the integer sums by NEON, so bit for bit the scalar result. q16_a
 * block j = 4h + kk's quants are bits 2kk of the 32 bytes qs[32h ..], widened exactly; the
 * activations' sums per sub-block of 16 (for the mins) are taken beside them. */
#include <arm_neon.h>

#include "llmrun.h"

void vec_dot_q2_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a) {
    const block_q2_K *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(x[i].d), dmin = llmr_f16_to_f32(x[i].dmin);
        for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
            const uint8_t *qs = x[i].qs + 32 * (j / 4);
            const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * (j % 4)));
            int32_t p[2], as[2];
            for (int half = 0; half < 2; half++) {
                const uint8x16_t q = vandq_u8(vshlq_u8(vld1q_u8(qs + 16 * half), shift), vdupq_n_u8(3));
                const int16x8_t w0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(q)));
                const int16x8_t w1 = vreinterpretq_s16_u16(vmovl_high_u8(q));
                const int16x8_t a0 = vld1q_s16(y->qs + 16 * half), a1 = vld1q_s16(y->qs + 16 * half + 8);
                int32x4_t acc = vmull_s16(vget_low_s16(w0), vget_low_s16(a0));
                acc = vmlal_high_s16(acc, w0, a0);
                acc = vmlal_s16(acc, vget_low_s16(w1), vget_low_s16(a1));
                acc = vmlal_high_s16(acc, w1, a1);
                p[half] = vaddvq_s32(acc);
                as[half] = vaddvq_s32(vaddq_s32(vpaddlq_s16(a0), vpaddlq_s16(a1)));
            }
            const uint8_t s0 = x[i].scales[2 * j], s1 = x[i].scales[2 * j + 1];
            const int32_t pw = (s0 & 0xF) * p[0] + (s1 & 0xF) * p[1], pm = (s0 >> 4) * as[0] + (s1 >> 4) * as[1];
            sum += d * y->d * (float)pw - dmin * y->d * (float)pm;
        }
    }
    *s = sum;
}
