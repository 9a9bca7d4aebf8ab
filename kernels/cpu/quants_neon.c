/* arm64 NEON q16_a activation quantiser; byte-exact with quantize_row_q16_a_ref (same f32
 * operations: max|x|, d = max / 32767, id = 1 / d, q = roundf(x * id), s = d * sum(q)).
 * vcvtaq_s32_f32 (FCVTAS) rounds to nearest with ties away from zero: roundf, exactly.
 * NEON is baseline on arm64: no extra flags, no CPU test. */
#include <arm_neon.h>

#include "llmrun.h"

void quantize_row_q16_a_neon(const float *x, block_q16_a *y, int64_t k) {
    for (int64_t i = 0; i < k / QK_Q16_A; i++, x += QK_Q16_A) {
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(x + 4 * j);
            amax = vmaxnmq_f32(amax, vabsq_f32(v[j])); /* maxNum: NaN left out, as in the reference */
        }
        const float d = vmaxnmvq_f32(amax) / 32767.0f;
        const float id = llmr_q16_a_inverse(d); /* FCVTAS turns NaN into 0 itself */

        int32x4_t sum = vdupq_n_s32(0);
        for (int j = 0; j < 8; j += 2) {
            const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[j], id));
            const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[j + 1], id));
            sum = vaddq_s32(sum, vaddq_s32(q0, q1));
            /* |q| <= 32767, so narrowing is the scalar (int16_t) cast. */
            vst1q_s16(y[i].qs + 4 * j, vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)));
        }
        y[i].d = d;
        y[i].s = d * (float)vaddvq_s32(sum);
    }
}
