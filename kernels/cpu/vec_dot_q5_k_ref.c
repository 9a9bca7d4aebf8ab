/* q5_K's scalar kernels: q4_K's (vec_dot_ref.c) with the fifth bit. Sub-block j of a super-block
 * (32 values: quants llmr_q5_k_quant, 0..31) meets activation block j:
 *     sum_j (d sc_j) da_j sum(q qa) - (dmin m_j) sa_j
 * in one running sum over the row's sub-blocks, the integer sums exact in int32
 * (32 * 31 * 32767 < 2^20), the rest in f32 in this order (vec_dot_q5_k_neon.c does the same
 * operations in order: bit for bit). Error against float64: as q4_k's, the scalar bound of
 * tests/test_kernels.py. */
#include "llmrun.h"
#include "kernels_ref.h"

/* One super-block's eight terms added to sum; y its eight activation blocks. */
static inline float block_step_q5_K(const block_q5_K *x, const block_q16_a *y, float sum) {
    const float d = llmr_f16_to_f32(x->d), dmin = llmr_f16_to_f32(x->dmin);
    for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
        uint8_t sc, m;
        llmr_q4_k_scale_min(j, x->scales, &sc, &m);
        int32_t isum = 0;
        for (int l = 0; l < 32; l++)
            isum += llmr_q5_k_quant(x, 32 * j + l) * y->qs[l];
        sum += d * (float)sc * y->d * (float)isum - dmin * (float)m * y->s;
    }
    return sum;
}

REF_KERNELS(q5_K, block_q5_K, LLMR_TYPE_Q5_K, QK_K)
