/* AVX2 dot products for quantised weights (q8_0, q4_0, q4_1) against q16_a activations.
 * Compiled with -mavx2 -mfma -mf16c; dispatch.c calls them only on a CPU that has all three.
 * This file widens a block's weights to two registers of 16 int16 and multiplies them with the
 * int16 activations by pmaddwd (pairs summed into int32, exact: see block_q16_a); the row loop
 * and the error bound are vec_dot_q16a_x86.h's. */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"

#define ISA_FN(name) name##_avx2

typedef struct {
    __m256i lo, hi; /* elements 0..15, 16..31 */
} wblock;
#define WBLOCK_ZERO ((wblock){_mm256_setzero_si256(), _mm256_setzero_si256()})

static inline wblock widen_q8(const int8_t *q) {
    return (wblock){_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + 16)))};
}

/* Element j is the low nibble of qs[j], element j + 16 the high nibble. */
static inline wblock widen_q4(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(0x0F);
    return (wblock){_mm256_cvtepu8_epi16(_mm_and_si128(b, m)),
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b, 4), m))};
}

/* The pmaddwd sums of one block's weights with activation block y: eight int32 lanes. */
static inline __m256i lanes(wblock w, const block_q16_a *y) {
    const __m256i a0 = _mm256_loadu_si256((const __m256i *)y->qs);
    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y->qs + 16));
    return _mm256_add_epi32(_mm256_madd_epi16(w.lo, a0), _mm256_madd_epi16(w.hi, a1));
}

#include "vec_dot_q16a_x86.h"
