/* AVX-512 (F, BW, VL) dot products for quantised weights (q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q6_K) against q16_a
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

/* q6_K (vec_dot_q16a_x86.h): half a super-block's 8 int8 scales as int16, in each 128-bit
 * lane, so one pshufb broadcasts any of them across a lane. */
typedef __m512i q6k_scales_t;
static inline __m512i q6k_scales(const int8_t *sc) {
    return _mm512_broadcast_i32x4(_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)sc)));
}
/* Block b of the half (32 bytes q - 32) as 32 int16 times its scales: elements 0..15 (lanes 0
 * and 1) by scale 2b, 16..31 (lanes 2 and 3) by scale 2b + 1. */
static inline __m512i widen_q6k(__m256i q, __m512i sc, int b) {
    const __m512i pick = _mm512_inserti64x4(_mm512_set1_epi16((short)(0x0100 + 0x0404 * b)),
                                            _mm256_set1_epi16((short)(0x0302 + 0x0404 * b)), 1);
    return _mm512_mullo_epi16(_mm512_cvtepi8_epi16(q), _mm512_shuffle_epi8(sc, pick));
}

#include "vec_dot_q16a_x86.h"
