/* What the AVX2 int16 X16 files share (gemm_x16_avx2.c, gemm_x16_q6_k_avx2.c): the int16
 * multiply-add, the activation broadcast, the scales-to-lane-pairs permutation and the prefetch
 * distance. (q4_k and q5_k read q16_b: gemm_x16_q4_k_avx2.c.) */
#ifndef LLMRUN_GEMM_X16_AVX2_H
#define LLMRUN_GEMM_X16_AVX2_H

#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m256i madd(__m256i acc, __m256i w, __m256i a) { return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a)); }

/* Activation elements 4c .. 4c + 3, to every lane pair. */
ALWAYS_INLINE __m256i act4(const block_q16_a *y, int c) {
    long long v;
    memcpy(&v, &y->qs[4 * c], 8);
    return _mm256_set1_epi64x(v);
}

ALWAYS_INLINE __m128i load16(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }

/* Scales of rows 4q .. 4q + 3 (from the 8 of their half) to lanes (r, 0) and (r, 1). */
ALWAYS_INLINE __m256 pairs(__m256 half, int q) {
    const int o = (q & 1) * 4;
    return _mm256_permutevar8x32_ps(half, _mm256_setr_epi32(o, o, o + 1, o + 1, o + 2, o + 2, o + 3, o + 3));
}

/* Bytes ahead that each super-block prefetches, as gemm_x16_avx512.c does: without it, the
 * 1B-shape model's 263 MB output head (mapped from the file in 4 KiB pages) took 15.4 ms for
 * one token against 6.8 ms from a copy in anonymous memory. */
#define PREFETCH_AHEAD 8192

#endif
