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

/* q16_b_from_a_ref's bytes: the low byte of each int16 (masked, then packed: it fits unsigned),
 * the high byte (an arithmetic shift, then packed signed), each pack's lane order put back by one
 * permute, and the two half-block sums in int32, as the reference adds them. */
void q16_b_from_a_avx2(const block_q16_a *a, block_q16_b *b, int64_t nb) {
    const __m256i low_byte = _mm256_set1_epi16(0xFF), ones = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)a[i].qs),
                      q1 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 16));
        const __m256i lo = _mm256_packus_epi16(_mm256_and_si256(q0, low_byte), _mm256_and_si256(q1, low_byte));
        const __m256i hi = _mm256_packs_epi16(_mm256_srai_epi16(q0, 8), _mm256_srai_epi16(q1, 8));
        _mm256_storeu_si256((__m256i *)b[i].lo, _mm256_permute4x64_epi64(lo, 0xD8));
        _mm256_storeu_si256((__m256i *)b[i].hi, _mm256_permute4x64_epi64(hi, 0xD8));
        b[i].d = a[i].d;
        b[i].s = a[i].s;
        const __m256i q[2] = {q0, q1};
        for (int h = 0; h < 2; h++) {
            const __m256i pairs = _mm256_madd_epi16(q[h], ones); /* 8 int32 */
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
            b[i].s16[h] = a[i].d * (float)_mm_cvtsi128_si32(s);
        }
    }
}
