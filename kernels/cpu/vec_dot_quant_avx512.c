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

/* ---- LLMR_TILE (4) tokens per weight row ---------------------------------------------------
 * Each weight block is widened once and meets the four tokens' activations (one multiply-add
 * each); the four int32 block sums are reduced together (integer additions in another order:
 * still exact, the same sums), and the per-block float step above is done for the four tokens
 * in the lanes of an __m128 (the same IEEE operations per lane, in the same order, no FMA):
 * each output equals the single-token kernel's, and the scalar kernel's, bit for bit. */

/* {sum(v0), sum(v1), sum(v2), sum(v3)} of four 16-lane int32 vectors (exact). */
static inline __m128i hsum4_i32x16(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
#define FOLD(v) _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1))
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(FOLD(v0), FOLD(v1)), _mm256_hadd_epi32(FOLD(v2), FOLD(v3)));
#undef FOLD
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

#define TILE_ACT(i) ((const block_q16_a *)((const uint8_t *)a + (i) * a_stride))

#define TILE_LOOP(block_t, widen, TERM)                                                      \
    const block_t *x = w;                                                                    \
    const block_q16_a *y0 = TILE_ACT(0), *y1 = TILE_ACT(1), *y2 = TILE_ACT(2), *y3 = TILE_ACT(3); \
    __m128 sum = _mm_setzero_ps();                                                           \
    for (int64_t b = 0; b < k / QK; b++) {                                                   \
        const __m512i wb = widen(x[b].qs);                                                   \
        const __m512i z = _mm512_setzero_si512();                                            \
        const __m128 fi = _mm_cvtepi32_ps(hsum4_i32x16(madd(z, wb, act(&y0[b])), madd(z, wb, act(&y1[b])), \
                                                       madd(z, wb, act(&y2[b])), madd(z, wb, act(&y3[b])))); \
        const __m128 yd = _mm_set_ps(y3[b].d, y2[b].d, y1[b].d, y0[b].d);                   \
        const __m128 ys = _mm_set_ps(y3[b].s, y2[b].s, y1[b].s, y0[b].s);                   \
        (void)ys;                                                                            \
        sum = _mm_add_ps(sum, TERM);                                                         \
    }                                                                                        \
    float out[4];                                                                            \
    _mm_storeu_ps(out, sum);                                                                 \
    for (int i = 0; i < 4; i++)                                                              \
        s[i * s_stride] = out[i];

/* f16(x.d) * y.d * isum */
#define TERM_Q8_0 _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(f16(x[b].d)), yd), fi)
/* f16(x.d) * (y.d * isum - 8 * y.s) */
#define TERM_Q4_0 _mm_mul_ps(_mm_set1_ps(f16(x[b].d)), _mm_sub_ps(_mm_mul_ps(yd, fi), _mm_mul_ps(_mm_set1_ps(8.0f), ys)))
/* f16(x.d) * y.d * isum + f16(x.m) * y.s */
#define TERM_Q4_1                                                                            \
    _mm_add_ps(_mm_mul_ps(_mm_mul_ps(_mm_set1_ps(f16(x[b].d)), yd), fi), _mm_mul_ps(_mm_set1_ps(f16(x[b].m)), ys))

void AVX512_FN(vec_dot_tile_q8_0_q16_a)(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                        size_t a_stride) {
    TILE_LOOP(block_q8_0, widen_q8, TERM_Q8_0)
}

void AVX512_FN(vec_dot_tile_q4_0_q16_a)(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                        size_t a_stride) {
    TILE_LOOP(block_q4_0, widen_q4, TERM_Q4_0)
}

void AVX512_FN(vec_dot_tile_q4_1_q16_a)(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                        size_t a_stride) {
    TILE_LOOP(block_q4_1, widen_q4, TERM_Q4_1)
}
