/* AVX2 dot products for quantised weights (q8_0, q4_0, q4_1) against q16_a activations.
 * Compiled with -mavx2 -mfma -mf16c; dispatch.c calls them only on a CPU that has all three.
 *
 * Each block's weights are widened to int16 and multiplied with the int16 activations by
 * pmaddwd (pairs summed into int32, exact: see block_q16_a), the block's integer sum is
 * reduced exactly, and the float step per block is the scalar kernel's, operation for
 * operation and in the same order: the results equal vec_dot_*_ref's bit for bit. */
#include <immintrin.h>

#include "llmrun.h"

/* Sum of the eight int32 lanes (exact). */
static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* sum(w * a) for one block given as two int16 halves w0 (elements 0..15), w1 (16..31). */
static inline int32_t isum_i16(__m256i w0, __m256i w1, const int16_t *a) {
    const __m256i a0 = _mm256_loadu_si256((const __m256i *)a);
    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + 16));
    return hsum_i32(_mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1)));
}

static inline int32_t isum_q8(const int8_t *q, const int16_t *a) {
    return isum_i16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + 16))), a);
}

/* Element j is the low nibble of qs[j], element j + 16 the high nibble. */
static inline int32_t isum_q4(const uint8_t *qs, const int16_t *a) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(0x0F);
    return isum_i16(_mm256_cvtepu8_epi16(_mm_and_si128(b, m)),
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b, 4), m)), a);
}

/* f16 -> f32 by F16C: exact, so equal to llmr_f16_to_f32. */
static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

void vec_dot_q8_0_q16_a_avx2(int64_t k, float *s, const void *w, const void *a) {
    const block_q8_0 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_q8(x[i].qs, y[i].qs);
    *s = sum;
}

void vec_dot_q4_0_q16_a_avx2(int64_t k, float *s, const void *w, const void *a) {
    const block_q4_0 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++)
        sum += f16(x[i].d) * (y[i].d * (float)isum_q4(x[i].qs, y[i].qs) - 8.0f * y[i].s);
    *s = sum;
}

void vec_dot_q4_1_q16_a_avx2(int64_t k, float *s, const void *w, const void *a) {
    const block_q4_1 *x = w;
    const block_q16_a *y = a;
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++)
        sum += f16(x[i].d) * y[i].d * (float)isum_q4(x[i].qs, y[i].qs) + f16(x[i].m) * y[i].s;
    *s = sum;
}
