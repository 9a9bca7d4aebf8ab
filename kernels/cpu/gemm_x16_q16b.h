/* What the x86 X16 kernels that read q16_b activations share whatever their ISA
 * (gemm_x16_q16b_avx512vnni.h, gemm_x16_q16b_avx2.h): how many tokens' sums wait between
 * super-blocks and the walk over the tokens' activation blocks. */
#ifndef LLMRUN_GEMM_X16_Q16B_H
#define LLMRUN_GEMM_X16_Q16B_H

#include <immintrin.h>

#include "llmrun.h"
#include "prefetch_x86.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Tokens whose running sums wait in memory between super-blocks: each super-block's scales are
 * unpacked once for up to this many. */
#define Q16B_TOKENS 64

/* The tokens' activation blocks of super-block b: ys[i] = token ti + i's, n of them. */
ALWAYS_INLINE void q16b_token_blocks(const uint8_t *a, size_t a_stride, int64_t ti, int n, int64_t b,
                                     const block_q16_b **ys) {
    for (int i = 0; i < n; i++)
        ys[i] = (const block_q16_b *)(a + (ti + i) * a_stride) + b * (QK_K / QK_Q16_A);
}

#endif
