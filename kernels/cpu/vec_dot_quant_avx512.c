/* AVX-512 (F, BW, VL) dot products for quantised weights (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q4_K, q6_K) against q16_a
 * activations. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c as the `avx512`
 * kernels, and compiled again by vec_dot_quant_avx512vnni.c with -mavx512vnni added as the
 * `avx512vnni` kernels (one source, two builds: the multiply-add below is the only change).
 * A block's 32 weights widen to int16 in one register and meet its 32 int16 activations in one
 * multiply-add (pmaddwd, or VNNI's vpdpwssd): 16 int32 lanes, folded to 8 (exact). The row loop
 * and the error bound are vec_dot_q16a_x86.h's, so the three x86 paths agree bit for bit. */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"

#ifndef ISA_FN /* this file's own build: the avx512 names */
#define ISA_FN(name) name##_avx512
#endif

typedef __m512i wblock;
#define WBLOCK_ZERO _mm512_setzero_si512()

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
static inline __m512i madd(__m512i acc, __m512i w, __m512i a) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, w, a);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, a));
#endif
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

/* 5-bit: the nibbles as widen_q4, bit j of qh (little-endian u32) adds 16 to element j (byte j
 * of the 32 takes qh's byte j / 8 by pshufb, a bit test gives the mask), minus `offset` (16:
 * q5_0's signed weights, 0: q5_1's), so the int8 widening is exact. */
static inline __m512i widen_q5(const uint8_t *qh, const uint8_t *qs, int offset) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i lh = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1),
                                        _mm256_set1_epi8(0x0F));
    const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __mmask32 k = _mm256_test_epi8_mask(_mm256_shuffle_epi8(_mm256_set1_epi32((int)h), idx),
                                              _mm256_set1_epi64x((long long)0x8040201008040201ULL));
    const __m256i q = _mm256_mask_add_epi8(lh, k, lh, _mm256_set1_epi8(0x10));
    return _mm512_cvtepi8_epi16(_mm256_sub_epi8(q, _mm256_set1_epi8((char)offset)));
}

/* iq4_nl: the nibbles as widen_q4, each replaced by its level (-127..113) by one pshufb of the
 * 16-level table (in both 128-bit lanes), widened as int8 (exact); then the int16 multiply-add
 * as q8_0's (the activations are int16, so maddubs / vpdpbusd's u8 x s8 does not apply). */
static inline __m512i widen_iq4_nl(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i lh = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1),
                                        _mm256_set1_epi8(0x0F));
    const __m256i levels = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)llmr_iq4_nl_values));
    return _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(levels, lh));
}

/* One block's weights wb against activation block y: eight int32 lanes (exact). */
static inline __m256i lanes(__m512i wb, const block_q16_a *y) {
    const __m512i p = madd(_mm512_setzero_si512(), wb, _mm512_loadu_si512(y->qs));
    return _mm256_add_epi32(_mm512_castsi512_si256(p), _mm512_extracti64x4_epi64(p, 1));
}

/* q4_K (vec_dot_q16a_x86.h): sub-blocks 2p (low nibbles of the 32 bytes q) and 2p + 1 (high)
 * against y[0], y[1]: 16 int32 lanes each (not folded), FMA'd with their c into two accumulators. */
typedef struct {
    __m512 lo, hi;
} q4k_acc;
#define Q4K_ACC_ZERO ((q4k_acc){_mm512_setzero_ps(), _mm512_setzero_ps()})
static inline void q4k_pair(const uint8_t *q, const block_q16_a *y, float c_lo, float c_hi, q4k_acc *acc) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)q), m = _mm256_set1_epi8(0x0F);
    const __m512i plo = madd(_mm512_setzero_si512(), _mm512_cvtepu8_epi16(_mm256_and_si256(b, m)),
                             _mm512_loadu_si512(y[0].qs));
    const __m512i phi = madd(_mm512_setzero_si512(), _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), m)),
                             _mm512_loadu_si512(y[1].qs));
    acc->lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(plo), _mm512_set1_ps(c_lo), acc->lo);
    acc->hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(phi), _mm512_set1_ps(c_hi), acc->hi);
}
static inline float q4k_finish(q4k_acc acc, __m256 off) {
    const __m512 v = _mm512_add_ps(acc.lo, acc.hi);
    __m256 h8 = _mm256_sub_ps(_mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), off);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

/* q6_K (vec_dot_q16a_x86.h): a block of 32 signed bytes q - 32 widened to 32 int16 meets its
 * activations in one multiply-add: 16 int32 lanes of two products (|.| < 2^22: exact as
 * floats), lanes 0..7 sub-block 2j, 8..15 sub-block 2j + 1, converted and FMA'd with those
 * sub-blocks' coefficients d sc da (a permute of the 16) into the even or odd block's accumulator. */
typedef struct {
    __m512 even, odd;
} q6k_acc;
#define Q6K_ACC_ZERO ((q6k_acc){_mm512_setzero_ps(), _mm512_setzero_ps()})
typedef __m512 q6k_factors; /* d sc of the 16 sub-blocks */
typedef __m512 q6k_coeffs;  /* d sc da of the 16 sub-blocks */
static inline __m512 q6k_factors_of(const block_q6_K *x) {
    const __m512 d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x->d))));
    return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)x->scales))));
}
/* f times da, the da of q16_a block j (of da's 8) going to sub-blocks 2j and 2j + 1. */
static inline __m512 q6k_coeffs_of(__m512 f, __m256 da) {
    const __m512i twice_each = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    return _mm512_mul_ps(f, _mm512_permutexvar_ps(twice_each, _mm512_castps256_ps512(da)));
}
/* Half a super-block (64 bytes ql, 32 bytes qh) -> its four q16_a blocks k as 32 int16 q - 32,
 * two blocks per 512-bit step: blocks 0 | 1 take the low nibbles of ql's two 32-byte halves and
 * bits 0-1 | 2-3 of qh (shifted per half to bits 4-5), blocks 2 | 3 the high nibbles and bits
 * 4-5 | 6-7; then widened. */
static inline void q6k_unpack(const uint8_t *ql, const uint8_t *qh, __m512i w[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30), bias = _mm512_set1_epi8(32);
    const __m512i l = _mm512_loadu_si512(ql);
    const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qh));
    const __m512i up01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1); /* << per half */
    const __m512i down23 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1); /* >> per half */
    const __m512i low01 = _mm512_and_si512(l, m4), low23 = _mm512_and_si512(_mm512_srli_epi16(l, 4), m4);
    const __m512i top01 = _mm512_and_si512(_mm512_sllv_epi16(h, up01), m2);
    const __m512i top23 = _mm512_and_si512(_mm512_srlv_epi16(h, down23), m2);
    const __m512i b01 = _mm512_sub_epi8(_mm512_or_si512(low01, top01), bias); /* 0..63 - 32 as signed bytes */
    const __m512i b23 = _mm512_sub_epi8(_mm512_or_si512(low23, top23), bias);
    w[0] = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(b01));
    w[1] = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(b01, 1));
    w[2] = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(b23));
    w[3] = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(b23, 1));
}
/* Block j of the super-block (w) against its activation block y: lanes 0..7 (sub-block 2j) and
 * 8..15 (2j + 1) times their coefficients; even and odd blocks in two FMA chains. */
static inline void q6k_block(__m512i w, const block_q16_a *y, const __m512 *c, int j, q6k_acc *acc) {
    const __m512i p = madd(_mm512_setzero_si512(), w, _mm512_loadu_si512(y->qs));
    const __m512i pick = _mm512_inserti64x4(_mm512_set1_epi32(2 * j), _mm256_set1_epi32(2 * j + 1), 1);
    if (j % 2)
        acc->odd = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(pick, *c), acc->odd);
    else
        acc->even = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(pick, *c), acc->even);
}
static inline float q6k_finish(q6k_acc acc) {
    const __m512 v = _mm512_add_ps(acc.even, acc.odd);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

#include "vec_dot_q16a_x86.h"
