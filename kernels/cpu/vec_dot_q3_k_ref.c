/* q3_K's scalar dot product with q16_a activations. q16_a block j of a super-block spans
 * sub-blocks 2j and 2j + 1 (16 values each, with a 6-bit scale less 32, llmr_q3_k_scale); as
 * q6_k's: sum_j d da_j (sc_2j P_2j + sc_2j+1 P_2j+1), P the sub-block's sum of q qa (q -4..3,
 * llmr_q3_k_quant), exact in int32 (|sc P| <= 32 * 16 * 4 * 32767 < 2^27), the rest in f32 in
 * this order. Signed weights: no offset term, so q16_a's s is not needed. vec_dot_q3_k_neon.c
 * does the same operations in order (bit for bit). Error against float64: the scalar bound of
 * tests/test_kernels.py. */
#include "llmrun.h"
#include "kernels_ref.h"

/* One super-block's eight terms added to sum; y its eight activation blocks. */
static inline float block_step_q3_K(const block_q3_K *x, const block_q16_a *y, float sum) {
    const float d = llmr_f16_to_f32(x->d);
    for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
        int32_t p[2] = {0, 0}; /* sub-blocks 2j, 2j + 1 */
        for (int l = 0; l < QK_Q16_A; l++)
            p[l / 16] += llmr_q3_k_quant(x, QK_Q16_A * j + l) * y->qs[l];
        const int32_t isum = llmr_q3_k_scale(x->scales, 2 * j) * p[0] + llmr_q3_k_scale(x->scales, 2 * j + 1) * p[1];
        sum += d * y->d * (float)isum;
    }
    return sum;
}

REF_KERNELS(q3_K, block_q3_K, LLMR_TYPE_Q3_K, QK_K)
