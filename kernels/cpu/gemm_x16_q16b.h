/* What the x86 X16 kernels that read q16_b activations share whatever their ISA
 * (gemm_x16_q16b_avx512vnni.h, gemm_x16_q16b_avx2.h): how many tokens' sums wait between
 * super-blocks, the prefetch of a super-block and the walk over the tokens' activation blocks. */
#ifndef LLMRUN_GEMM_X16_Q16B_H
#define LLMRUN_GEMM_X16_Q16B_H

#include <immintrin.h>

#include "llmrun.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Tokens whose running sums wait in memory between super-blocks: each super-block's scales are
 * unpacked once for up to this many. */
#define Q16B_TOKENS 64

/* Every line of the super-block at g (bytes long) requested at once, non-temporal, just before it
 * is read. On Zen 4, one core, decode from a file's cached pages (which a plain streaming read
 * took at 22.5 GB/s): q6_k, whose three interleaved streams (two of ql words, one of qh) the
 * hardware prefetcher does not follow, ran at 7.5 GB/s without, 20.3 with T0 prefetches of the
 * super-block, 24.1 with NTA ones (T1 / T2: 11, the next super-block instead: 17-19, a column's
 * lines as it goes: 11); q4_k, read in order, 20.3 without and 26.9 with NTA. From L2 the
 * prefetches cost 38 -> 32 GB/s (q6_k), nothing measurable for q4_k. */
ALWAYS_INLINE void q16b_prefetch(const uint8_t *g, size_t bytes) {
    for (size_t line = 0; line < bytes; line += 64)
        _mm_prefetch((const char *)g + line, _MM_HINT_NTA);
}

/* The tokens' activation blocks of super-block b: ys[i] = token ti + i's, n of them. */
ALWAYS_INLINE void q16b_token_blocks(const uint8_t *a, size_t a_stride, int64_t ti, int n, int64_t b,
                                     const block_q16_b **ys) {
    for (int i = 0; i < n; i++)
        ys[i] = (const block_q16_b *)(a + (ti + i) * a_stride) + b * (QK_K / QK_Q16_A);
}

#endif
