/* AVX2 + FMA + F16C dot products for float weights (f32, f16, bf16) against f32 activations.
 * Compiled with -mavx2 -mfma -mf16c; dispatch.c calls them only on a CPU that has all three.
 *
 * Four 8-lane FMA accumulators, so the sum is in a different order from the scalar kernel's
 * (tests/test_isa.py bounds the difference). A row length that is not a multiple of 8 ends
 * with one zero-padded step. */
#include <immintrin.h>

#include "llmrun.h"

/* Eight weights as f32; w need not be aligned. */
typedef __m256 (*load8_fn)(const void *w);

static inline __m256 load8_f32(const void *w) { return _mm256_loadu_ps(w); }
static inline __m256 load8_f16(const void *w) { return _mm256_cvtph_ps(_mm_loadu_si128(w)); }
static inline __m256 load8_bf16(const void *w) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(w)), 16));
}

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* dot(w, a) over k elements of elem_size bytes each; inlined with a constant `load`. */
static inline __attribute__((always_inline)) float dot(const uint8_t *w, const float *a, int64_t k,
                                                       int elem_size, load8_fn load) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        acc0 = _mm256_fmadd_ps(load(w + (i + 0) * elem_size), _mm256_loadu_ps(a + i + 0), acc0);
        acc1 = _mm256_fmadd_ps(load(w + (i + 8) * elem_size), _mm256_loadu_ps(a + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load(w + (i + 16) * elem_size), _mm256_loadu_ps(a + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load(w + (i + 24) * elem_size), _mm256_loadu_ps(a + i + 24), acc3);
    }
    for (; i + 8 <= k; i += 8)
        acc0 = _mm256_fmadd_ps(load(w + i * elem_size), _mm256_loadu_ps(a + i), acc0);
    if (i < k) { /* the last k % 8 elements, zero-padded */
        uint8_t wt[32] = {0};
        float at[8] = {0};
        memcpy(wt, w + i * elem_size, (size_t)(k - i) * elem_size);
        memcpy(at, a + i, (size_t)(k - i) * sizeof(float));
        acc1 = _mm256_fmadd_ps(load(wt), _mm256_loadu_ps(at), acc1);
    }
    return hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
}

void vec_dot_f32_f32_avx2(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 4, load8_f32);
}

void vec_dot_f16_f32_avx2(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 2, load8_f16);
}

void vec_dot_bf16_f32_avx2(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 2, load8_bf16);
}
