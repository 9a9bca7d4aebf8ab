/* The scalar X16 kernels of the super-block types (vec_dot_ref.c, vec_dot_q3_k_ref.c,
 * vec_dot_q5_k_ref.c): each super-block copied out of its group, then the rows layout's
 * arithmetic (the file's block_dot_<type>), so the result is bit for bit vec_dot_<type>_q16_a_ref's. */
#ifndef LLMRUN_GEMM_X16_REF_H
#define LLMRUN_GEMM_X16_REF_H

#include "llmrun.h"

#define SUPER_BLOCK_X16_KERNEL(type, block_t, id)                                                       \
    void gemm_x16_##type##_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                     const void *a, size_t a_stride) {                                \
        const llmr_type_traits *tr = llmr_type_traits_get(id);                                         \
        block_t x;                                                                                    \
        for (int64_t ti = 0; ti < t; ti++) {                                                          \
            const block_q16_a *y = (const block_q16_a *)((const uint8_t *)a + ti * a_stride);         \
            for (int r = 0; r < LLMR_X16; r++) {                                                      \
                float sum = 0.0f;                                                                     \
                for (int64_t i = 0; i < k / QK_K; i++) {                                              \
                    llmr_x16_get_block(tr, w, r, i, &x);                                              \
                    sum = block_dot_##type(&x, y + i * (QK_K / QK_Q16_A), sum);                       \
                }                                                                                     \
                out[ti * out_stride + r] = sum;                                                       \
            }                                                                                         \
        }                                                                                             \
    }

#endif
