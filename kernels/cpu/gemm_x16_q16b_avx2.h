/* What the AVX2 X16 kernels that read q16_b activations share (gemm_x16_q4_k_avx2.c, which says
 * why bytes, and gemm_x16_q6_k_avx2.c): the byte products and a token's running sums per half of
 * the rows (the prefetch and the walk over tokens: gemm_x16_q16b.h). */
#ifndef LLMRUN_GEMM_X16_Q16B_AVX2_H
#define LLMRUN_GEMM_X16_Q16B_AVX2_H

#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16_q16b.h"

/* One token's running sums, per half of the 16 rows (one lane per row): the products and the
 * offsets taken off at the end. */
typedef struct {
    __m256 acc[2], off[2];
} q16b_sums;

/* The 4 bytes of a plane at p, to every int32 lane. */
ALWAYS_INLINE __m256i q16b_bytes4(const void *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* Pair sums (int16) of 8 rows' 4 quants q (bytes, < 64) against elements e .. e + 3 of a plane:
 * lo's bytes are unsigned (the quants the signed operand), hi's signed (the quants unsigned). */
ALWAYS_INLINE __m256i q16b_lo_pairs(__m256i q, const block_q16_b *y, int e) {
    return _mm256_maddubs_epi16(q16b_bytes4(y->lo + e), q);
}
ALWAYS_INLINE __m256i q16b_hi_pairs(__m256i q, const block_q16_b *y, int e) {
    return _mm256_maddubs_epi16(q, q16b_bytes4(y->hi + e));
}

/* sum (int32 per row) += lo16 (pair sums of the lo plane), each pair of int16 lanes folded into its
 * row's lane; q16b_fold_hi the same for hi16 times 256, q16b_fold both: exact while the sums stay
 * below 2^31 (the kernels' bounds). */
ALWAYS_INLINE __m256i q16b_fold_lo(__m256i sum, __m256i lo16) {
    return _mm256_add_epi32(sum, _mm256_madd_epi16(lo16, _mm256_set1_epi16(1)));
}
ALWAYS_INLINE __m256i q16b_fold_hi(__m256i sum, __m256i hi16) {
    return _mm256_add_epi32(sum, _mm256_madd_epi16(hi16, _mm256_set1_epi16(256)));
}
ALWAYS_INLINE __m256i q16b_fold(__m256i sum, __m256i lo16, __m256i hi16) {
    return q16b_fold_hi(q16b_fold_lo(sum, lo16), hi16);
}

#endif
