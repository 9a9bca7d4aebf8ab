/* q2_K's scalar dot product with q16_a activations. q16_a block j of a super-block spans
 * sub-blocks 2j and 2j + 1 (16 values each, with a 4-bit scale sc and a 4-bit min m):
 *     sum_j d da_j (sc_2j P_2j + sc_2j+1 P_2j+1) - dmin da_j (m_2j A_2j + m_2j+1 A_2j+1)
 * P the sub-block's sum of q qa (q 0..3, llmr_q2_k_quant), A its sum of qa: a min spans 16 values,
 * half a q16_a block, so q16_a's s (the whole block's sum) does not serve. The integer sums are
 * exact in int32 (|sc P| <= 2 * 15 * 16 * 3 * 32767 < 2^25, |m A| < 2^24), the rest in f32 in this
 * order; vec_dot_q2_k_neon.c does the same operations in order (bit for bit). Error against
 * float64: the scalar bound of tests/test_kernels.py, M = sum_j da_j (|d| sum |sc q qa| +
 * |dmin| sum m |qa|). */
#include "llmrun.h"
#include "kernels_ref.h"

/* One super-block's eight terms added to sum; y its eight activation blocks. */
static inline float block_step_q2_K(const block_q2_K *x, const block_q16_a *y, float sum) {
    const float d = llmr_f16_to_f32(x->d), dmin = llmr_f16_to_f32(x->dmin);
    for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
        int32_t p[2] = {0, 0}, as[2] = {0, 0}; /* sub-blocks 2j, 2j + 1 */
        for (int l = 0; l < QK_Q16_A; l++) {
            p[l / 16] += llmr_q2_k_quant(x->qs, QK_Q16_A * j + l) * y->qs[l];
            as[l / 16] += y->qs[l];
        }
        const uint8_t s0 = x->scales[2 * j], s1 = x->scales[2 * j + 1];
        const int32_t pw = (s0 & 0xF) * p[0] + (s1 & 0xF) * p[1], pm = (s0 >> 4) * as[0] + (s1 >> 4) * as[1];
        sum += d * y->d * (float)pw - dmin * y->d * (float)pm;
    }
    return sum;
}

REF_KERNELS(q2_K, block_q2_K, LLMR_TYPE_Q2_K, QK_K)
