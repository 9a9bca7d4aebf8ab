/* q2_k's dot product with q16_a activations on AVX2 (+FMA, F16C). Built as the `avx2` kernel, and
 * by vec_dot_q2_k_avx512.c / vec_dot_q2_k_avx512vnni.c again with their flags (the same 256-bit
 * code; with VNNI the multiply-add is vpdpwssd). It runs q2_k matrices a file holds in rows (files
 * written before the X16 kernels, gemm_x16_q6_k_<isa>.c), for prefill too (matmul calls it per token).
 *
 * Per super-block: the 16 scales and mins (4 bits each) once; per half h the 32 bytes qs[32h ..].
 * q16_a block j = 4h + kk takes bits 2kk of each of those bytes (0..3), widened to int16 in two
 * halves (sub-blocks 2j and 2j + 1) and multiplied there by the sub-block's scale (<= 45: exact);
 * pmaddwd against the activations gives 8 int32 lanes of four products each (exact), and a
 * second pmaddwd of the two sub-blocks' mins against the same activations the min term's lanes
 * (a min covers 16 values, so q16_a's block sum s does not serve). Each is converted (exactly:
 * < 2^23) and FMA'd, with fl(d da_j) into the sum, with fl(dmin da_j) into the offset; the
 * offset is subtracted and the 8 lanes reduced once, at the end.
 *
 * Error against float64: a term meets its coefficient's rounding, at most nb FMAs in its lane,
 * the subtraction and 3 adds of the reduction: within (nb + 6) u M (M as the scalar kernel's,
 * vec_dot_q2_k_ref.c), the QUANT_DOT_SIMD_BOUND of tests/test_kernels.py. Not bit-identical to
 * scalar (another order). */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"

#ifndef Q2K_ISA /* this file's own build: the avx2 name */
#define Q2K_ISA avx2
#endif
#define Q2K_CAT(a, b) a##b
#define Q2K_NAME(isa) Q2K_CAT(vec_dot_q2_K_q16_a_, isa)

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
ALWAYS_INLINE __m256i madd(__m256i acc, __m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, w, a);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
#endif
}

void Q2K_NAME(Q2K_ISA)(int64_t k, float *s, const void *w, const void *a) {
    const block_q2_K *x = w;
    const block_q16_a *y = a;
    const __m256i three = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps(), off = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / QK_K; i++, y += QK_K / QK_Q16_A) {
        const float d = _cvtsh_ss(x[i].d), dmin = _cvtsh_ss(x[i].dmin);
        for (int h = 0; h < 2; h++) {
            const __m256i qs = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int kk = 0; kk < 4; kk++) {
                const int j = 4 * h + kk;
                const uint8_t s0 = x[i].scales[2 * j], s1 = x[i].scales[2 * j + 1];
                /* a 16-bit shift moves no bits of a byte's neighbour into its low two */
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * kk), three);
                const __m256i w0 = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)),
                                                      _mm256_set1_epi16(s0 & 0xF));
                const __m256i w1 = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)),
                                                      _mm256_set1_epi16(s1 & 0xF));
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)y[j].qs);
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y[j].qs + 16));
                const __m256i lw = madd(madd(_mm256_setzero_si256(), w0, a0), w1, a1);
                const __m256i lm = madd(madd(_mm256_setzero_si256(), _mm256_set1_epi16(s0 >> 4), a0),
                                        _mm256_set1_epi16(s1 >> 4), a1);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lw), _mm256_set1_ps(d * y[j].d), acc);
                off = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lm), _mm256_set1_ps(dmin * y[j].d), off);
            }
        }
    }
    const __m256 v = _mm256_sub_ps(acc, off);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    *s = _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 1)));
}
