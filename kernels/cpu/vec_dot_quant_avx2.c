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

/* ---- LLMR_TILE (4) tokens per weight row ---------------------------------------------------
 * Each weight block is unpacked once and meets the four tokens' activations; the four int32
 * block sums are reduced together (integer additions in another order: still exact, so the
 * same sums), and the float step per block is the one above, done for the four tokens in the
 * lanes of an __m128 (the same IEEE operations per lane, in the same order, no FMA): each
 * output equals vec_dot_*_avx2's (and so the scalar kernel's) bit for bit. */

/* {sum(v0), sum(v1), sum(v2), sum(v3)} of four 8-lane int32 vectors (exact). */
static inline __m128i hsum4_i32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* The pmaddwd sums of one block's int16 weights w0, w1 with activation block a (8 lanes). */
static inline __m256i madd_blk(__m256i w0, __m256i w1, const int16_t *a) {
    const __m256i a0 = _mm256_loadu_si256((const __m256i *)a);
    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + 16));
    return _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1));
}

#define TILE_ACT(i) ((const block_q16_a *)((const uint8_t *)a + (i) * a_stride))

/* Block b of the four tokens: y0..y3 (block b of each token's row); isum: the four int32
 * sums as floats; yd, ys: the four tokens' d and s. */
#define TILE_LOOP(block_t, WIDEN, TERM)                                                      \
    const block_t *x = w;                                                                    \
    const block_q16_a *y0 = TILE_ACT(0), *y1 = TILE_ACT(1), *y2 = TILE_ACT(2), *y3 = TILE_ACT(3); \
    __m128 sum = _mm_setzero_ps();                                                           \
    for (int64_t b = 0; b < k / QK; b++) {                                                   \
        __m256i w0, w1;                                                                      \
        WIDEN(x[b].qs, w0, w1);                                                              \
        const __m128 fi = _mm_cvtepi32_ps(hsum4_i32(madd_blk(w0, w1, y0[b].qs), madd_blk(w0, w1, y1[b].qs), \
                                                    madd_blk(w0, w1, y2[b].qs), madd_blk(w0, w1, y3[b].qs))); \
        const __m128 yd = _mm_set_ps(y3[b].d, y2[b].d, y1[b].d, y0[b].d);                   \
        const __m128 ys = _mm_set_ps(y3[b].s, y2[b].s, y1[b].s, y0[b].s);                   \
        (void)ys;                                                                            \
        sum = _mm_add_ps(sum, TERM);                                                         \
    }                                                                                        \
    float out[4];                                                                            \
    _mm_storeu_ps(out, sum);                                                                 \
    for (int i = 0; i < 4; i++)                                                              \
        s[i * s_stride] = out[i];

#define WIDEN_Q8(q, w0, w1)                                                  \
    do {                                                                     \
        (w0) = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q)));  \
        (w1) = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((q) + 16))); \
    } while (0)

#define WIDEN_Q4(qs, w0, w1)                                                 \
    do {                                                                     \
        const __m128i b_ = _mm_loadu_si128((const __m128i *)(qs));           \
        const __m128i m_ = _mm_set1_epi8(0x0F);                              \
        (w0) = _mm256_cvtepu8_epi16(_mm_and_si128(b_, m_));                  \
        (w1) = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b_, 4), m_)); \
    } while (0)

/* f16(x.d) * y.d * isum */
#define TERM_Q8_0 _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(f16(x[b].d)), yd), fi)
/* f16(x.d) * (y.d * isum - 8 * y.s) */
#define TERM_Q4_0 _mm_mul_ps(_mm_set1_ps(f16(x[b].d)), _mm_sub_ps(_mm_mul_ps(yd, fi), _mm_mul_ps(_mm_set1_ps(8.0f), ys)))
/* f16(x.d) * y.d * isum + f16(x.m) * y.s */
#define TERM_Q4_1                                                                            \
    _mm_add_ps(_mm_mul_ps(_mm_mul_ps(_mm_set1_ps(f16(x[b].d)), yd), fi), _mm_mul_ps(_mm_set1_ps(f16(x[b].m)), ys))

void vec_dot_tile_q8_0_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                  size_t a_stride) {
    TILE_LOOP(block_q8_0, WIDEN_Q8, TERM_Q8_0)
}

void vec_dot_tile_q4_0_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                  size_t a_stride) {
    TILE_LOOP(block_q4_0, WIDEN_Q4, TERM_Q4_0)
}

void vec_dot_tile_q4_1_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                  size_t a_stride) {
    TILE_LOOP(block_q4_1, WIDEN_Q4, TERM_Q4_1)
}
