// The CUDA backend's kernels, one module (llmrun/cuda.fatbin), loaded by llmrun/cuda.py through
// the driver API. Every entry point takes the step state first, then its buffers, then its
// parameters (32-bit unsigned or float), in the order kernels/wgsl/ binds them; llmrun/cuda.py
// checks that order against this module's PTX in the tests. Names: <op> or <op>_<weight type>.
#include "attention.cuh"
#include "f16.cuh"
#include "gemm.cuh"
#include "matmul.cuh"
#include "ops.cuh"
#include "q4_0.cuh"
#include "q4_1.cuh"
#include "q8_0.cuh"

#define WEIGHT_KERNELS(name, W)                                                                             \
    KERNEL(MATMUL_WARPS * 32)                                                                               \
        matmul_##name(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k,          \
                      uint32_t rows, uint32_t row0, uint32_t out_rows, uint32_t from_first) {               \
        matmul<W>(step, w, x, out, k, rows, row0, out_rows, from_first);                                    \
    }                                                                                                       \
    KERNEL(GEMM_THREADS)                                                                                    \
        gemm_##name(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k,            \
                    uint32_t rows, uint32_t row0, uint32_t out_rows, uint32_t from_first) {                 \
        gemm<W>(step, w, x, out, k, rows, row0, out_rows, from_first);                                      \
    }                                                                                                       \
    KERNEL(WORKGROUP)                                                                                       \
        embed_##name(const Step *step, const uint32_t *w, const uint32_t *ids, float *out, uint32_t k,      \
                     uint32_t rows, uint32_t row0) {                                                        \
        embed<W>(step, w, ids, out, k, rows, row0);                                                         \
    }

WEIGHT_KERNELS(q8_0, Q8_0)
WEIGHT_KERNELS(q4_0, Q4_0)
WEIGHT_KERNELS(q4_1, Q4_1)
WEIGHT_KERNELS(f16, F16)
