/* What the gemm_x16_<isa>.c files share: the weight formats they tell apart, and their three
 * exported kernels, made from the file's own
 *     gemm(fmt, k, t, out, out_stride, w, a, a_stride)
 * by LLMR_GEMM_X16_KERNELS(isa) at the end of the file. */
#ifndef LLMRUN_GEMM_X16_H
#define LLMRUN_GEMM_X16_H

enum { F_Q8_0, F_Q4_0, F_Q4_1 };

/* Bytes of one block of an X16 group (16 rows' blocks) of format fmt. */
#define X16_GROUP_BLOCK(fmt)                                                                         \
    (LLMR_X16 * ((fmt) == F_Q8_0 ? sizeof(block_q8_0) : (fmt) == F_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q4_1)))

#define LLMR_GEMM_X16_KERNEL(type, fmt, isa)                                                         \
    void gemm_x16_##type##_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                       const void *a, size_t a_stride) {                            \
        gemm(fmt, k, t, out, out_stride, w, a, a_stride);                                            \
    }
#define LLMR_GEMM_X16_KERNELS(isa)                                                                   \
    LLMR_GEMM_X16_KERNEL(q8_0, F_Q8_0, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(q4_0, F_Q4_0, isa)                                                          \
    LLMR_GEMM_X16_KERNEL(q4_1, F_Q4_1, isa)

#endif
