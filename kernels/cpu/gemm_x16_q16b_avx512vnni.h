/* What the AVX-512 VNNI X16 kernels that read q16_b activations share (gemm_x16_q4_k_avx512vnni.c,
 * gemm_x16_q6_k_avx512vnni.c): the byte-plane multiply-add, a token's running sums, and the
 * walk over tokens.
 *
 * Why bytes: the int16 kernels (gemm_x16_avx512.c) widen every quant byte to int16 (a cross-lane
 * vpmovzxbw per 32 bytes) and multiply-add 32 pairs per vpdpwssd; on Zen 4 that ran q4_k decode at
 * 23 GB/s from L2, below the 28 GB/s one core reads from memory. Kept as bytes, a 64-byte load of
 * a quant word is 16 rows' 4 quants each, one int32 lane per row; a vpdpbusd of the quants with a
 * broadcast of 4 activation bytes sums 64 products, and a q16_b value's two bytes (its low byte
 * unsigned, its high byte signed) take two of them: the int16 activations stay exact, at twice
 * the products per instruction and without the widening (q4_k decode from L2: 36 GB/s). */
#ifndef LLMRUN_GEMM_X16_Q16B_AVX512VNNI_H
#define LLMRUN_GEMM_X16_Q16B_AVX512VNNI_H

#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16_q16b.h"

/* The 4 bytes of plane p at element e, to every int32 lane. */
ALWAYS_INLINE __m512i q16b_bytes4(const void *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* sum += quants (16 rows x 4, unsigned, < 128) times activation elements e .. e + 3 of y, as two
 * exact int32 partial sums: lo += q * lo[e..], hi += q * hi[e..] (the value: lo + 256 hi). */
ALWAYS_INLINE void q16b_madd(__m512i *lo, __m512i *hi, __m512i q, const block_q16_b *y, int e) {
    *lo = _mm512_dpbusd_epi32(*lo, q16b_bytes4(y->lo + e), q);
    *hi = _mm512_dpbusd_epi32(*hi, q, q16b_bytes4(y->hi + e));
}

/* The partial sums' value, lo + 256 hi, exact in int32 while |sum| < 2^31 (the kernels' bounds). */
ALWAYS_INLINE __m512i q16b_value(__m512i lo, __m512i hi) { return _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 8)); }

/* One token's running sums, one lane per row: the products and the offsets taken off at the end. */
typedef struct {
    __m512 acc, off;
} q16b_sums;

/* A sub-block's partial sums into a token's running sums: acc += their value times the rows' scale
 * times the activation block's da; off += the rows' offset scale times the block's s_off. */
ALWAYS_INLINE void q16b_accumulate(q16b_sums *sums, __m512i lo, __m512i hi, __m512 scale, float da, __m512 off_scale,
                                   float s_off) {
    const __m512 sum = _mm512_cvtepi32_ps(q16b_value(lo, hi));
    sums->acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(scale, _mm512_set1_ps(da)), sums->acc);
    sums->off = _mm512_fmadd_ps(off_scale, _mm512_set1_ps(s_off), sums->off);
}

/* The 16 rows' f16 fields at p as f32. */
ALWAYS_INLINE __m512 q16b_f16x16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* out[i] = sums[i].acc - sums[i].off for t tokens. */
ALWAYS_INLINE void q16b_store(int64_t t, const q16b_sums *sums, float *out, size_t out_stride) {
    for (int64_t i = 0; i < t; i++)
        _mm512_storeu_ps(out + i * out_stride, _mm512_sub_ps(sums[i].acc, sums[i].off));
}

#endif
