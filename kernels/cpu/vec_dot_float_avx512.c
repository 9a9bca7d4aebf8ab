/* AVX-512 (F, BW, VL) dot products for float weights (f32, f16, bf16) against f32
 * activations. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c; dispatch.c calls
 * them only on a CPU that has AVX-512 F, BW and VL.
 *
 * Four 16-lane FMA accumulators (a different order from the scalar kernel's; tests/test_isa.py
 * bounds the difference); the last k % 16 elements are one masked step. */
#include <immintrin.h>

#include "llmrun.h"

/* The n <= 16 weights at w as f32 (the rest zero); w need not be aligned. */
typedef __m512 (*load16_fn)(const void *w, __mmask16 m);

static inline __m512 load16_f32(const void *w, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w); }
static inline __m512 load16_f16(const void *w, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w));
}
static inline __m512 load16_bf16(const void *w, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w)), 16));
}

static inline __attribute__((always_inline)) float dot(const uint8_t *w, const float *a, int64_t k,
                                                       int elem_size, load16_fn load) {
    const __mmask16 all = 0xFFFF;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {
        acc0 = _mm512_fmadd_ps(load(w + (i + 0) * elem_size, all), _mm512_loadu_ps(a + i + 0), acc0);
        acc1 = _mm512_fmadd_ps(load(w + (i + 16) * elem_size, all), _mm512_loadu_ps(a + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(load(w + (i + 32) * elem_size, all), _mm512_loadu_ps(a + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(load(w + (i + 48) * elem_size, all), _mm512_loadu_ps(a + i + 48), acc3);
    }
    for (; i + 16 <= k; i += 16)
        acc0 = _mm512_fmadd_ps(load(w + i * elem_size, all), _mm512_loadu_ps(a + i), acc0);
    if (i < k) {
        const __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
        acc1 = _mm512_fmadd_ps(load(w + i * elem_size, m), _mm512_maskz_loadu_ps(m, a + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

void vec_dot_f32_f32_avx512(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 4, load16_f32);
}

void vec_dot_f16_f32_avx512(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 2, load16_f16);
}

void vec_dot_bf16_f32_avx512(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 2, load16_bf16);
}
