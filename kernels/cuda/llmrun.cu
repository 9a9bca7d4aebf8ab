// The CUDA backend's kernels, one module (llmrun/cuda.fatbin), loaded by llmrun/cuda.py through
// the driver API. Every entry point takes the step state first, then its buffers, then its
// parameters (32-bit unsigned or float), in the order kernels/wgsl/ binds them; llmrun/cuda.py
// checks that order against this module's PTX in the tests. Names: <op> or <op>_<weight type>.
#include "attention.cuh"
#include "f16.cuh"
#include "gemm.cuh"
#include "iq4_nl.cuh"
#include "matmul.cuh"
#include "ops.cuh"
#include "q2_k.cuh"
#include "q3_k.cuh"
#include "q4_0.cuh"
#include "q4_1.cuh"
#include "q4_k.cuh"
#include "q5_0.cuh"
#include "q5_1.cuh"
#include "q5_k.cuh"
#include "q6_k.cuh"
#include "q8_0.cuh"

// The fused matvecs, held to two blocks an SM (128 registers a thread), as the plain matvec fits:
// the folded norm's second path would otherwise take the f16 and q4_1 kernels past it.
#define KERNEL_2(threads) extern "C" __global__ void __launch_bounds__(threads, 2)

#define WEIGHT_KERNELS(name, W)                                                                             \
    KERNEL(MATMUL_WARPS * 32)                                                                               \
        matmul_##name(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k,          \
                      uint32_t rows, uint32_t row0, uint32_t out_rows, uint32_t from_first,                 \
                      uint32_t accumulate) {                                                                \
        matmul<W>(step, w, x, out, k, rows, row0, out_rows, from_first, accumulate);                        \
    }                                                                                                       \
    KERNEL_2(MATMUL_WARPS * 32)                                                                             \
        matmul_gate_##name(const Step *step, const uint32_t *wg, const uint32_t *wu, const float *x,        \
                           const float *norm, float *out, uint32_t k, uint32_t rows, uint32_t act,          \
                           float eps) {                                                                     \
        matmul_gate<W>(step, wg, wu, x, norm, out, k, rows, act, eps);                                      \
    }                                                                                                       \
    KERNEL(GEMM_THREADS)                                                                                    \
        gemm_##name(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k,            \
                    uint32_t rows, uint32_t row0, uint32_t out_rows, uint32_t from_first,                   \
                    uint32_t accumulate) {                                                                  \
        gemm<W>(step, w, x, out, k, rows, row0, out_rows, from_first, accumulate);                          \
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
WEIGHT_KERNELS(q5_0, Q5_0)
WEIGHT_KERNELS(q5_1, Q5_1)
WEIGHT_KERNELS(iq4_nl, IQ4_NL)
WEIGHT_KERNELS(q2_k, Q2_K)
WEIGHT_KERNELS(q3_k, Q3_K)
WEIGHT_KERNELS(q4_k, Q4_K)
WEIGHT_KERNELS(q5_k, Q5_K)
WEIGHT_KERNELS(q6_k, Q6_K)

// q, k and v in one launch: matmul3_<type of q>_<type of k and v>, every type with itself and
// the 4-bit types with q8_0 (quant/policy.py keeps k and v in q8_0 at 4 bits).
#define MATMUL3(a, b, WA, WB)                                                                               \
    KERNEL_2(MATMUL_WARPS * 32)                                                                             \
        matmul3_##a##_##b(const Step *step, const uint32_t *w0, const uint32_t *w1, const uint32_t *w2,     \
                          const float *x, const float *norm, float *out0, float *out1, float *out2,       \
                          uint32_t k, uint32_t rows0, uint32_t rows1, uint32_t rows2, float eps) {          \
        matmul3<WA, WB>(step, w0, w1, w2, x, norm, out0, out1, out2, k, rows0, rows1, rows2, eps);          \
    }

MATMUL3(q8_0, q8_0, Q8_0, Q8_0)
MATMUL3(q4_0, q4_0, Q4_0, Q4_0)
MATMUL3(q4_1, q4_1, Q4_1, Q4_1)
MATMUL3(f16, f16, F16, F16)
MATMUL3(q4_0, q8_0, Q4_0, Q8_0)
MATMUL3(q4_1, q8_0, Q4_1, Q8_0)
MATMUL3(q5_0, q5_0, Q5_0, Q5_0)
MATMUL3(q5_1, q5_1, Q5_1, Q5_1)
MATMUL3(iq4_nl, iq4_nl, IQ4_NL, IQ4_NL)
MATMUL3(q2_k, q2_k, Q2_K, Q2_K)
MATMUL3(q3_k, q3_k, Q3_K, Q3_K)
MATMUL3(q4_k, q4_k, Q4_K, Q4_K)
MATMUL3(q5_k, q5_k, Q5_K, Q5_K)
MATMUL3(q6_k, q6_k, Q6_K, Q6_K)
