/* AVX-512 (F, BW, VL) dot products for quantised weights (q8_0, q4_0, q4_1) against q16_a
 * activations. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c as the `avx512`
 * kernels, and compiled again by vec_dot_quant_avx512vnni.c with -mavx512vnni added as the
 * `avx512vnni` kernels (one source, two builds: the multiply-add below is the only change).
 *
 * A block's 32 weights widen to int16 in one register and meet its 32 int16 activations in
 * one multiply-add (pmaddwd + add, or VNNI's vpdpwssd); two blocks are reduced together. The
 * float step per block is the scalar kernel's, operation for operation and in the same
 * order: the results equal vec_dot_*_ref's bit for bit. */
#include <immintrin.h>

#include "llmrun.h"

#ifndef AVX512_FN /* this file's own build: the avx512 names */
#define AVX512_FN(name) name##_avx512
#endif

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
static inline __m512i madd(__m512i acc, __m512i w, __m512i a) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, w, a);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, a));
#endif
}

/* The int32 lane sums of two 16-lane vectors, as {sum(u), sum(v)} (exact). */
static inline void hsum2_i32(__m512i u, __m512i v, int32_t out[2]) {
    const __m512i t = _mm512_add_epi32(_mm512_shuffle_i64x2(u, v, 0x44), _mm512_shuffle_i64x2(u, v, 0xEE));
    __m256i h = _mm256_hadd_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
    h = _mm256_hadd_epi32(h, h); /* lane 0: {u low, v low, ..}, lane 1: {u high, v high, ..} */
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    out[0] = _mm_cvtsi128_si32(s);
    out[1] = _mm_extract_epi32(s, 1);
}

/* One block's weights as 32 int16. */
static inline __m512i widen_q8(const int8_t *q) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q));
}

/* Element j is the low nibble of qs[j], element j + 16 the high nibble. */
static inline __m512i widen_q4(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i lh = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
    return _mm512_cvtepu8_epi16(_mm256_and_si256(lh, _mm256_set1_epi8(0x0F)));
}

static inline __m512i act(const block_q16_a *y) { return _mm512_loadu_si512(y->qs); }

/* Integer sums of blocks i and i + 1 (isum[0], isum[1]); i + 1 < nb. */
#define ISUM2(widen, x, y, i, isum)                                                        \
    hsum2_i32(madd(_mm512_setzero_si512(), widen((x)[i].qs), act(&(y)[i])),                \
              madd(_mm512_setzero_si512(), widen((x)[(i) + 1].qs), act(&(y)[(i) + 1])), isum)

static inline int32_t isum1(__m512i w, const block_q16_a *y) {
    return _mm512_reduce_add_epi32(madd(_mm512_setzero_si512(), w, act(y)));
}

static inline float f16(uint16_t h) { return _cvtsh_ss(h); } /* exact, as llmr_f16_to_f32 */

/* The per-block float steps, exactly as vec_dot_ref.c. */
static inline float term_q8_0(const block_q8_0 *x, const block_q16_a *y, int32_t isum) {
    return f16(x->d) * y->d * (float)isum;
}
static inline float term_q4_0(const block_q4_0 *x, const block_q16_a *y, int32_t isum) {
    return f16(x->d) * (y->d * (float)isum - 8.0f * y->s);
}
static inline float term_q4_1(const block_q4_1 *x, const block_q16_a *y, int32_t isum) {
    return f16(x->d) * y->d * (float)isum + f16(x->m) * y->s;
}

/* The loop shared by the three formats: two blocks per step, then an odd last block. */
#define VEC_DOT_BLOCKS(block_t, widen, term)                                                \
    const block_t *x = w;                                                                   \
    const block_q16_a *y = a;                                                               \
    const int64_t nb = k / QK;                                                              \
    float sum = 0.0f;                                                                       \
    int64_t i = 0;                                                                          \
    for (; i + 2 <= nb; i += 2) {                                                           \
        int32_t isum[2];                                                                    \
        ISUM2(widen, x, y, i, isum);                                                        \
        sum += term(&x[i], &y[i], isum[0]);                                                 \
        sum += term(&x[i + 1], &y[i + 1], isum[1]);                                         \
    }                                                                                       \
    if (i < nb)                                                                             \
        sum += term(&x[i], &y[i], isum1(widen(x[i].qs), &y[i]));                            \
    *s = sum;

void AVX512_FN(vec_dot_q8_0_q16_a)(int64_t k, float *s, const void *w, const void *a) {
    VEC_DOT_BLOCKS(block_q8_0, widen_q8, term_q8_0)
}

void AVX512_FN(vec_dot_q4_0_q16_a)(int64_t k, float *s, const void *w, const void *a) {
    VEC_DOT_BLOCKS(block_q4_0, widen_q4, term_q4_0)
}

void AVX512_FN(vec_dot_q4_1_q16_a)(int64_t k, float *s, const void *w, const void *a) {
    VEC_DOT_BLOCKS(block_q4_1, widen_q4, term_q4_1)
}
