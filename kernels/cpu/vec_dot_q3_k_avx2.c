/* q3_k's dot product with q16_a activations on AVX2 (+FMA, F16C). Built as the `avx2` kernel, and
 * by vec_dot_q3_k_avx512.c / vec_dot_q3_k_avx512vnni.c again with their flags (the same 256-bit
 * code; with VNNI the multiply-add is vpdpwssd). It runs q3_k matrices a file holds in rows (files
 * written before the X16 kernels, gemm_x16_q6_k_<isa>.c), for prefill too (matmul calls it per token).
 *
 * Per super-block: the 16 sub-block scales (llmr_q3_k_scale, -32..31) and the 32 hmask bytes
 * once; per half h the 32 bytes qs[32h ..]. q16_a block j = 4h + kk takes bits 2kk of each of
 * those bytes, less 4 where bit j of the matching hmask byte is clear (-4..3, as bytes), widened
 * to int16 in two halves (sub-blocks 2j and 2j + 1) and multiplied there by the sub-block's scale
 * (|sc q| <= 128: exact in int16); pmaddwd against the activations gives 8 int32 lanes of four
 * products each (exact, < 2^19), converted (exactly) and FMA'd with c_j = fl(d da_j) into one of
 * two float accumulators; no horizontal sums until the end.
 *
 * Error against float64: a term c P meets c's rounding, at most nb / 2 FMAs in its lane, the
 * accumulators' add and the final 8-lane reduction (3 adds): within (nb + 6) u M, the
 * QUANT_DOT_SIMD_BOUND of tests/test_kernels.py. Not bit-identical to scalar (another order). */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"

#ifndef Q3K_ISA /* this file's own build: the avx2 name */
#define Q3K_ISA avx2
#endif
#define Q3K_CAT(a, b) a##b
#define Q3K_NAME(isa) Q3K_CAT(vec_dot_q3_K_q16_a_, isa)

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
ALWAYS_INLINE __m256i madd(__m256i acc, __m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, w, a);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
#endif
}

void Q3K_NAME(Q3K_ISA)(int64_t k, float *s, const void *w, const void *a) {
    const block_q3_K *x = w;
    const block_q16_a *y = a;
    const __m256i three = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < k / QK_K; i++, y += QK_K / QK_Q16_A) {
        const float d = _cvtsh_ss(x[i].d);
        int16_t sc[QK_K / 16];
        for (int j = 0; j < QK_K / 16; j++)
            sc[j] = (int16_t)llmr_q3_k_scale(x[i].scales, j);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        for (int h = 0; h < 2; h++) {
            const __m256i qs = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int kk = 0; kk < 4; kk++) {
                const int j = 4 * h + kk;
                /* a 16-bit shift moves no bits of a byte's neighbour into its low two */
                const __m256i low = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * kk), three);
                const __m256i bit = _mm256_set1_epi8((char)(1 << j));
                const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit);
                const __m256i q = _mm256_sub_epi8(low, _mm256_andnot_si256(set, four));
                const __m256i w0 = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)),
                                                      _mm256_set1_epi16(sc[2 * j]));
                const __m256i w1 = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)),
                                                      _mm256_set1_epi16(sc[2 * j + 1]));
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)y[j].qs);
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y[j].qs + 16));
                const __m256i lanes = madd(madd(_mm256_setzero_si256(), w0, a0), w1, a1);
                acc[kk % 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(d * y[j].d), acc[kk % 2]);
            }
        }
    }
    const __m256 v = _mm256_add_ps(acc[0], acc[1]);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    *s = _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 1)));
}
