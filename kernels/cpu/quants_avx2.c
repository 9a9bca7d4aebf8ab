/* AVX2 q16_a activation quantiser; byte-exact with quantize_row_q16_a_ref (same f32
 * operations: max|x|, d = max / 32767, id = 1 / d, q = roundf(x * id), s = d * sum(q)).
 * Compiled with -mavx2 -mfma -mf16c; dispatch.c calls it only on a CPU that has them. */
#include <immintrin.h>

#include "llmrun.h"

/* roundf on eight lanes (halves away from zero) as int32: t = trunc(v), then one step away
 * from zero where |v - t| >= 0.5 (v - t is exact for |v| < 2^23). */
static inline __m256i round_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, v)); /* +-1 as v */
    const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one);
    return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

void quantize_row_q16_a_avx2(const float *x, block_q16_a *y, int64_t k) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < k / QK_Q16_A; i++, x += QK_Q16_A) {
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + 8 * j);
            const __m256 a = _mm256_andnot_ps(sign, v[j]);
            amax = _mm256_max_ps(amax, _mm256_and_ps(a, _mm256_cmp_ps(a, a, _CMP_ORD_Q))); /* NaN left out, as in the reference */
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 32767.0f;
        const float id = llmr_q16_a_inverse(d);

        __m256i q[4], sum = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256 scaled = _mm256_mul_ps(v[j], _mm256_set1_ps(id));
            q[j] = round_away(_mm256_and_ps(scaled, _mm256_cmp_ps(scaled, scaled, _CMP_ORD_Q))); /* NaN: 0 */
            sum = _mm256_add_epi32(sum, q[j]);
        }
        /* packs interleaves 128-bit lanes; the permute puts elements back in order. */
        const __m256i lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), _MM_SHUFFLE(3, 1, 2, 0));
        const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), _MM_SHUFFLE(3, 1, 2, 0));
        _mm256_storeu_si256((__m256i *)y[i].qs, lo);
        _mm256_storeu_si256((__m256i *)(y[i].qs + 16), hi);

        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
        y[i].d = d;
        y[i].s = d * (float)_mm_cvtsi128_si32(s);
    }
}
