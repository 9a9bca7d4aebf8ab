/* The scalar kernels of a quantised type (vec_dot_ref.c, vec_dot_q2_k_ref.c, vec_dot_q3_k_ref.c,
 * vec_dot_q5_k_ref.c), from the file's block_step_<type>(block, its activation blocks, sum), which
 * adds a block's terms (qk elements) to sum: the rows layout's dot product, block by block in one
 * running sum, and the X16 layout's, each block copied out of its group, then the same arithmetic
 * (bit for bit the same). */
#ifndef LLMRUN_KERNELS_REF_H
#define LLMRUN_KERNELS_REF_H

#include "llmrun.h"

#define REF_KERNELS(type, block_t, id, qk)                                                              \
    void vec_dot_##type##_q16_a_ref(int64_t k, float *s, const void *w, const void *a) {              \
        const block_t *x = w;                                                                         \
        const block_q16_a *y = a;                                                                     \
        float sum = 0.0f;                                                                             \
        for (int64_t i = 0; i < k / (qk); i++)                                                        \
            sum = block_step_##type(&x[i], y + i * ((qk) / QK_Q16_A), sum);                           \
        *s = sum;                                                                                     \
    }                                                                                                 \
    void gemm_x16_##type##_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                     const void *a, size_t a_stride) {                                \
        const llmr_type_traits *tr = llmr_type_traits_get(id);                                         \
        block_t x;                                                                                    \
        for (int64_t ti = 0; ti < t; ti++) {                                                          \
            const block_q16_a *y = (const block_q16_a *)((const uint8_t *)a + ti * a_stride);         \
            for (int r = 0; r < LLMR_X16; r++) {                                                      \
                float sum = 0.0f;                                                                     \
                for (int64_t i = 0; i < k / (qk); i++) {                                              \
                    llmr_x16_get_block(tr, w, r, i, &x);                                              \
                    sum = block_step_##type(&x, y + i * ((qk) / QK_Q16_A), sum);                      \
                }                                                                                     \
                out[ti * out_stride + r] = sum;                                                       \
            }                                                                                         \
        }                                                                                             \
    }

#endif
