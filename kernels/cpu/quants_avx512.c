/* AVX-512 (F, BW, VL) q16_a activation quantiser; byte-exact with quantize_row_q16_a_ref (same
 * f32 operations: max|x|, d = max / 32767, id = 1 / d, q = roundf(x * id), s = d * sum(q)).
 * One block is two registers. Compiled with -mavx512f -mavx512bw -mavx512vl. */
#include <immintrin.h>

#include "llmrun.h"

/* roundf on 16 lanes (halves away from zero) as int32: t = trunc(v), then one step away from
 * zero where |v - t| >= 0.5 (v - t is exact for |v| < 2^23). */
static inline __m512i round_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 step = _mm512_mask_blend_ps(neg, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
}

/* NaN lanes to 0, as the reference does. */
static inline __m512 not_nan(__m512 v) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
}

void quantize_row_q16_a_avx512(const float *x, block_q16_a *y, int64_t k) {
    for (int64_t i = 0; i < k / QK_Q16_A; i++, x += QK_Q16_A) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        /* NaN left out of the max, as the reference's comparison leaves it out */
        const float d = _mm512_reduce_max_ps(_mm512_max_ps(not_nan(_mm512_abs_ps(v0)), not_nan(_mm512_abs_ps(v1)))) / 32767.0f;
        const __m512 id = _mm512_set1_ps(llmr_q16_a_inverse(d));
        const __m512i q0 = round_away(not_nan(_mm512_mul_ps(v0, id)));
        const __m512i q1 = round_away(not_nan(_mm512_mul_ps(v1, id)));
        _mm256_storeu_si256((__m256i *)y[i].qs, _mm512_cvtepi32_epi16(q0));
        _mm256_storeu_si256((__m256i *)(y[i].qs + 16), _mm512_cvtepi32_epi16(q1));
        y[i].d = d;
        y[i].s = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

/* q16_b_from_a_ref's bytes: the low byte of each int16 (a truncating vpmovwb), the high byte (an
 * arithmetic shift first), and the two half-block sums in int32, as the reference adds them. */
void q16_b_from_a_avx512(const block_q16_a *a, block_q16_b *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const __m512i qs = _mm512_loadu_si512(a[i].qs);
        _mm256_storeu_si256((__m256i *)b[i].lo, _mm512_cvtepi16_epi8(qs));
        _mm256_storeu_si256((__m256i *)b[i].hi, _mm512_cvtepi16_epi8(_mm512_srai_epi16(qs, 8)));
        const __m512i wide0 = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(qs));
        const __m512i wide1 = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(qs, 1));
        b[i].d = a[i].d;
        b[i].s = a[i].s;
        b[i].s16[0] = a[i].d * (float)_mm512_reduce_add_epi32(wide0);
        b[i].s16[1] = a[i].d * (float)_mm512_reduce_add_epi32(wide1);
    }
}
