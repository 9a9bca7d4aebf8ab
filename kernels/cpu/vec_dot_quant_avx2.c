/* AVX2 dot products for quantised weights (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q4_K, q6_K) against q16_a activations.
 * Compiled with -mavx2 -mfma -mf16c; dispatch.c calls them only on a CPU that has all three.
 * This file widens a block's weights to two registers of 16 int16 and multiplies them with the
 * int16 activations by pmaddwd (pairs summed into int32, exact: see block_q16_a); the row loop
 * and the error bound are vec_dot_q16a_x86.h's. */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"

#define ISA_FN(name) name##_avx2

typedef struct {
    __m256i lo, hi; /* elements 0..15, 16..31 */
} wblock;
#define WBLOCK_ZERO ((wblock){_mm256_setzero_si256(), _mm256_setzero_si256()})

static inline wblock widen_q8(const int8_t *q) {
    return (wblock){_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + 16)))};
}

/* Element j is the low nibble of qs[j], element j + 16 the high nibble. */
static inline wblock widen_q4(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(0x0F);
    return (wblock){_mm256_cvtepu8_epi16(_mm_and_si128(b, m)),
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b, 4), m))};
}

/* 5-bit: the nibbles as q4's, bit j of qh (little-endian u32) adds 16 to element j; minus
 * `offset` (16: q5_0's signed weights, -16..15; 0: q5_1's, 0..31), so int8 widens exactly.
 * Each byte j of a 16-byte vector takes qh's byte j / 8 (pshufb) and tests bit j % 8. */
static inline wblock widen_q5(const uint8_t *qh, const uint8_t *qs, int offset) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(0x0F), sixteen = _mm_set1_epi8(0x10), off = _mm_set1_epi8((char)offset);
    const __m128i hv = _mm_set1_epi32((int)h);
    const __m128i bit = _mm_set1_epi64x((long long)0x8040201008040201ULL);
    const __m128i hlo = _mm_shuffle_epi8(hv, _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    const __m128i hhi = _mm_shuffle_epi8(hv, _mm_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m128i flo = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(hlo, bit), bit), sixteen);
    const __m128i fhi = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(hhi, bit), bit), sixteen);
    const __m128i lo = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(b, m), flo), off);
    const __m128i hi = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(b, 4), m), fhi), off);
    return (wblock){_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)};
}

/* iq4_nl: q4's nibbles, each replaced by its level (-127..113) by one pshufb of the 16-level
 * table, widened as int8 (exact). The activations are int16 (q16_a), so pmaddwd multiplies them
 * as q8_0's weights; maddubs (u8 x s8) would need 8-bit activations. */
static inline wblock widen_iq4_nl(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0F);
    const __m128i levels = _mm_loadu_si128((const __m128i *)llmr_iq4_nl_values);
    return (wblock){_mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, _mm_and_si128(b, m))),
                    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(b, 4), m)))};
}

/* The pmaddwd sums of one block's weights with activation block y: eight int32 lanes. */
static inline __m256i lanes(wblock w, const block_q16_a *y) {
    const __m256i a0 = _mm256_loadu_si256((const __m256i *)y->qs);
    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y->qs + 16));
    return _mm256_add_epi32(_mm256_madd_epi16(w.lo, a0), _mm256_madd_epi16(w.hi, a1));
}

/* q4_K (vec_dot_q16a_x86.h): sub-blocks 2p (low nibbles of the 32 bytes q) and 2p + 1 (high)
 * against y[0], y[1]: eight int32 lanes each, FMA'd with their c into two accumulators. */
typedef struct {
    __m256 lo, hi;
} q4k_acc;
#define Q4K_ACC_ZERO ((q4k_acc){_mm256_setzero_ps(), _mm256_setzero_ps()})
static inline void q4k_pair(const uint8_t *q, const block_q16_a *y, float c_lo, float c_hi, q4k_acc *acc) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)q), m = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(b, m), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
    const __m256i plo = lanes((wblock){_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)),
                                       _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1))}, &y[0]);
    const __m256i phi = lanes((wblock){_mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)),
                                       _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1))}, &y[1]);
    acc->lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(plo), _mm256_set1_ps(c_lo), acc->lo);
    acc->hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(phi), _mm256_set1_ps(c_hi), acc->hi);
}
static inline float q4k_finish(q4k_acc acc, __m256 off) {
    __m256 v = _mm256_sub_ps(_mm256_add_ps(acc.lo, acc.hi), off);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

/* q6_K (vec_dot_q16a_x86.h): a block of 32 signed bytes q - 32 widened to int16 (elements 0..15,
 * sub-block 2j, in .lo; 16..31, sub-block 2j + 1, in .hi); each half meets its activations in
 * one pmaddwd (eight int32 lanes of two products, |.| < 2^22: exact as floats), converted and
 * FMA'd with its own coefficient d sc da into the lo or hi accumulator. */
typedef struct {
    __m256 lo, hi;
} q6k_acc;
#define Q6K_ACC_ZERO ((q6k_acc){_mm256_setzero_ps(), _mm256_setzero_ps()})
typedef struct {
    __m256 lo, hi; /* d sc of sub-blocks 0..7, 8..15 */
} q6k_factors;
typedef struct {
    float c[16]; /* d sc da of each sub-block: broadcast from memory */
} q6k_coeffs;
static inline q6k_factors q6k_factors_of(const block_q6_K *x) {
    const __m256 d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x->d))));
    const __m128i sc = _mm_loadu_si128((const __m128i *)x->scales);
    return (q6k_factors){_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))),
                         _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))))};
}
/* f times da, the da of q16_a block j (of da's 8) going to sub-blocks 2j and 2j + 1. */
static inline q6k_coeffs q6k_coeffs_of(q6k_factors f, __m256 da) {
    q6k_coeffs c;
    const __m256i lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    _mm256_storeu_ps(c.c, _mm256_mul_ps(f.lo, _mm256_permutevar8x32_ps(da, lo)));
    _mm256_storeu_ps(c.c + 8, _mm256_mul_ps(f.hi, _mm256_permutevar8x32_ps(da, hi)));
    return c;
}
/* Half a super-block (64 bytes ql, 32 bytes qh) -> its four q16_a blocks k as int16 q - 32: the
 * bytes by 16-bit shifts masked back to bytes, then widened. */
static inline void q6k_unpack(const uint8_t *ql, const uint8_t *qh, wblock w[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30), bias = _mm256_set1_epi8(32);
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
    const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
    const __m256i q[4] = {
        _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m2)),
        _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m2)),
    };
    for (int k = 0; k < 4; k++) {
        const __m256i b = _mm256_sub_epi8(q[k], bias); /* 0..63 - 32 as signed bytes */
        w[k] = (wblock){_mm256_cvtepi8_epi16(_mm256_castsi256_si128(b)),
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1))};
    }
}
/* Block j of the super-block (w) against its activation block y: sub-block 2j into lo, 2j + 1 into hi. */
static inline void q6k_block(wblock w, const block_q16_a *y, const q6k_coeffs *c, int j, q6k_acc *acc) {
    const __m256i p0 = _mm256_madd_epi16(w.lo, _mm256_loadu_si256((const __m256i *)y->qs));
    const __m256i p1 = _mm256_madd_epi16(w.hi, _mm256_loadu_si256((const __m256i *)(y->qs + 16)));
    acc->lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(&c->c[2 * j]), acc->lo);
    acc->hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(&c->c[2 * j + 1]), acc->hi);
}
static inline float q6k_finish(q6k_acc acc) {
    const __m256 v = _mm256_add_ps(acc.lo, acc.hi);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

#include "vec_dot_q16a_x86.h"
