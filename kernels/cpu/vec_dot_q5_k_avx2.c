/* q5_k's rows-layout dot product with q16_a activations on AVX2 (+FMA, F16C): for matrices whose
 * rows are not a multiple of 16 (the X16 kernels take the others). Built as the `avx2` kernel,
 * and by vec_dot_q5_k_avx512.c / vec_dot_q5_k_avx512vnni.c again with their flags (the same
 * 256-bit code; with VNNI the multiply-add is vpdpwssd).
 *
 * Per super-block: d and dmin, the eight sub-blocks' c_j = fl(fl(d sc_j) da_j) (d sc_j exact) and
 * the offsets' sum of (dmin m_j) sa_j by FMA into an 8-lane vector; the 32 fifth-bit bytes qh are
 * loaded once. Then per pair of sub-blocks 2p (low nibbles of 32 qs bytes) and 2p + 1 (high): each
 * byte's nibble plus 16 where bit 2p (2p + 1) of its qh byte is set, widened to int16, meets the
 * activations in pmaddwd (8 int32 lanes, exact: 4 products below 2^17 each), converted and FMA'd
 * with its c_j into one of two float accumulators; no horizontal sums until the end.
 *
 * Error against float64: a term c P meets the rounding of c, at most k / 64 FMAs in its lane and
 * the final 8-lane reduction (3 adds) and offset subtraction; an offset term its own product and
 * the same adds: within (nb + 6) u M (M = sum_b |d sc|·da·sum|q·qa| + |dmin m sa|, nb = k / 32),
 * the q4_k bound of tests/test_isa.py. Not bit-identical to scalar (another summation order). */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"

#ifndef Q5K_ISA /* this file's own build: the avx2 name */
#define Q5K_ISA avx2
#endif
#define Q5K_CAT(a, b) a##b
#define Q5K_NAME(isa) Q5K_CAT(vec_dot_q5_K_q16_a_, isa)

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
ALWAYS_INLINE __m256i madd(__m256i acc, __m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, w, a);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
#endif
}

/* 32 quants (bytes, 0..31) against one activation block: 8 int32 lanes. */
ALWAYS_INLINE __m256i block_lanes(__m256i q, const block_q16_a *y) {
    const __m256i a0 = _mm256_loadu_si256((const __m256i *)y->qs), a1 = _mm256_loadu_si256((const __m256i *)(y->qs + 16));
    const __m256i lanes = madd(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)), a0);
    return madd(lanes, _mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)), a1);
}

/* Bytes of q plus 16 where the byte of qh has `bit` set. */
ALWAYS_INLINE __m256i fifth(__m256i q, __m256i qh, __m256i bit) {
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
    return _mm256_add_epi8(q, _mm256_and_si256(set, _mm256_set1_epi8(16)));
}

void Q5K_NAME(Q5K_ISA)(int64_t k, float *s, const void *w, const void *a) {
    const block_q5_K *x = w;
    const block_q16_a *y = a;
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, off = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / QK_K; i++, y += QK_K / QK_Q16_A) {
        const float d = _cvtsh_ss(x[i].d), dmin = _cvtsh_ss(x[i].dmin);
        float dsc[8], dmm[8], da[8], sa[8], c[8];
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            llmr_q4_k_scale_min(j, x[i].scales, &sc, &m);
            dsc[j] = d * (float)sc;
            dmm[j] = dmin * (float)m;
            da[j] = y[j].d;
            sa[j] = y[j].s;
        }
        _mm256_storeu_ps(c, _mm256_mul_ps(_mm256_loadu_ps(dsc), _mm256_loadu_ps(da)));
        off = _mm256_fmadd_ps(_mm256_loadu_ps(dmm), _mm256_loadu_ps(sa), off);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        for (int p = 0; p < 4; p++) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * p));
            const __m256i lo = fifth(_mm256_and_si256(b, nibble), qh, _mm256_set1_epi8((char)(1 << 2 * p)));
            const __m256i hi = fifth(_mm256_and_si256(_mm256_srli_epi16(b, 4), nibble), qh,
                                     _mm256_set1_epi8((char)(2 << 2 * p)));
            acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_lanes(lo, &y[2 * p])), _mm256_set1_ps(c[2 * p]), acc[0]);
            acc[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_lanes(hi, &y[2 * p + 1])), _mm256_set1_ps(c[2 * p + 1]),
                                     acc[1]);
        }
    }
    const __m256 v = _mm256_sub_ps(_mm256_add_ps(acc[0], acc[1]), off);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    *s = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}
