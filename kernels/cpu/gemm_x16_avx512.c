/* AVX-512 (F, BW, VL) products of X16 weight groups (q8_0, q4_0, q4_1) with q16_a activations:
 * decode (one token) and prefill (tokens in tiles of up to four) alike. Compiled as the
 * `avx512` kernels, and again by gemm_x16_avx512vnni.c with -mavx512vnni, where the int16
 * multiply-add becomes one vpdpwssd.
 *
 * One 32-byte load holds word c (4 quant bytes) of rows 0-7 (or 8-15) of a block; widened to
 * int16, it is 16 lanes of int16 pairs, lane 2r + p holding elements 4c + 2p, 4c + 2p + 1 of
 * row r (q4: the low nibbles; the high nibbles are elements 16 + 4c ..). A broadcast of the
 * activation's elements 4c .. 4c + 3 multiplies-adds into it, so lane (r, p) sums half of
 * row r's block in exact int32, with no horizontal sum: a block becomes two int32 vectors
 * (rows 0-7, rows 8-15), converted to float once and multiplied-added with the rows' scales
 * (each duplicated to its two lanes) times the activation's. The q4 offsets (-8 d sa for q4_0,
 * m sa for q4_1) go into the p = 0 lanes by one more FMA; the two lanes of a row are added at
 * the end.
 *
 * Error against the scalar kernel (same exact block sums, other float order): each lane's
 * accumulator meets at most two FMAs per block, so a term's relative error is at most
 * (2 nb + 3) u (the scale product, the int -> float conversion above 2^24 for q8_0, the lane
 * pair add), |err| <= (2 nb + 3) u M with M the scalar kernel's magnitude (tests/test_kernels.py,
 * X16_DOT_BOUND). */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

#ifndef X16_ISA /* this file's own build: the avx512 names */
#define X16_ISA avx512
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
ALWAYS_INLINE __m512i madd(__m512i acc, __m512i w, __m512i a) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, w, a);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, a));
#endif
}

#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 8192
#endif

/* Row r's scale to lanes 2r and 2r + 1: rows 0-7, rows 8-15. */
static const int32_t PAIR_IDX[2][16] = {{0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7},
                                        {8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15}};
/* Lanes (r, 0) and (r, 1) of the two halves, gathered to row order. */
static const int32_t EVEN_IDX[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t ODD_IDX[16] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

/* Activation elements 4c .. 4c + 3, to every lane pair. */
ALWAYS_INLINE __m512i act4(const block_q16_a *y, int c) {
    int64_t v;
    memcpy(&v, &y->qs[4 * c], 8);
    return _mm512_set1_epi64(v);
}

ALWAYS_INLINE __m512 f16x16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* 16 rows (one group) against T <= 4 tokens: ys[i] is token i's activation row. */
ALWAYS_INLINE void tile(const int fmt, const int T, int64_t nb, float *out, size_t out_stride,
                        const uint8_t *w, const block_q16_a *const *ys) {
    const int n_scales = fmt == F_Q4_1 ? 2 : 1;
    const size_t group_block = X16_GROUP_BLOCK(fmt);
    const __m512i pair_lo = _mm512_loadu_si512(PAIR_IDX[0]), pair_hi = _mm512_loadu_si512(PAIR_IDX[1]);
    const __m512i nibble = _mm512_set1_epi16(0x0F);
    __m512 acc[4][2];
    for (int i = 0; i < T; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();

    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *g = w + b * group_block;
        for (size_t line = 0; line < group_block; line += 64)
            _mm_prefetch((const char *)g + PREFETCH_AHEAD + line, _MM_HINT_T0);
        const uint8_t *q = g + n_scales * LLMR_X16 * 2;
        __m512i isum[4][2];
        if (fmt == F_Q8_0) {
            for (int c = 0; c < 8; c++) {
                const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + c * 64)));
                const __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + c * 64 + 32)));
                for (int i = 0; i < T; i++) {
                    const __m512i a = act4(ys[i] + b, c);
                    isum[i][0] = madd(c ? isum[i][0] : _mm512_setzero_si512(), w0, a);
                    isum[i][1] = madd(c ? isum[i][1] : _mm512_setzero_si512(), w1, a);
                }
            }
        } else {
            for (int c = 0; c < 4; c++) {
                const __m512i r0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + c * 64)));
                const __m512i r1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + c * 64 + 32)));
                const __m512i lo0 = _mm512_and_si512(r0, nibble), hi0 = _mm512_srli_epi16(r0, 4);
                const __m512i lo1 = _mm512_and_si512(r1, nibble), hi1 = _mm512_srli_epi16(r1, 4);
                for (int i = 0; i < T; i++) {
                    const __m512i alo = act4(ys[i] + b, c), ahi = act4(ys[i] + b, c + 4);
                    isum[i][0] = madd(madd(c ? isum[i][0] : _mm512_setzero_si512(), lo0, alo), hi0, ahi);
                    isum[i][1] = madd(madd(c ? isum[i][1] : _mm512_setzero_si512(), lo1, alo), hi1, ahi);
                }
            }
        }

        const __m512 d = f16x16(g);
        const __m512 dp[2] = {_mm512_permutexvar_ps(pair_lo, d), _mm512_permutexvar_ps(pair_hi, d)};
        __m512 offp[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        if (fmt != F_Q8_0) {
            const __m512 off = fmt == F_Q4_0 ? _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)) : f16x16(g + 32);
            offp[0] = _mm512_maskz_permutexvar_ps(0x5555, pair_lo, off);
            offp[1] = _mm512_maskz_permutexvar_ps(0x5555, pair_hi, off);
        }
        for (int i = 0; i < T; i++) {
            const block_q16_a *y = ys[i] + b;
            const __m512 da = _mm512_set1_ps(y->d), sa = _mm512_set1_ps(y->s);
            for (int h = 0; h < 2; h++) {
                acc[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][h]), _mm512_mul_ps(dp[h], da), acc[i][h]);
                if (fmt != F_Q8_0)
                    acc[i][h] = _mm512_fmadd_ps(offp[h], sa, acc[i][h]);
            }
        }
    }

    const __m512i even = _mm512_loadu_si512(EVEN_IDX), odd = _mm512_loadu_si512(ODD_IDX);
    for (int i = 0; i < T; i++)
        _mm512_storeu_ps(out + i * out_stride, _mm512_add_ps(_mm512_permutex2var_ps(acc[i][0], even, acc[i][1]),
                                                             _mm512_permutex2var_ps(acc[i][0], odd, acc[i][1])));
}

/* All t tokens: tiles of four, then the rest. */
ALWAYS_INLINE void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                        const void *a, size_t a_stride) {
    const int64_t nb = k / QK_Q16_A; /* blocks: these types' are q16_a's (llmrun.h) */
    const block_q16_a *ys[4];
    int64_t ti = 0;
    for (; ti < t; ti += 4) {
        const int64_t n = t - ti < 4 ? t - ti : 4;
        for (int i = 0; i < n; i++)
            ys[i] = (const block_q16_a *)((const uint8_t *)a + (ti + i) * a_stride);
        float *o = out + ti * out_stride;
        switch (n) {
        case 4: tile(fmt, 4, nb, o, out_stride, w, ys); break;
        case 3: tile(fmt, 3, nb, o, out_stride, w, ys); break;
        case 2: tile(fmt, 2, nb, o, out_stride, w, ys); break;
        default: tile(fmt, 1, nb, o, out_stride, w, ys); break;
        }
    }
}

LLMR_GEMM_X16_KERNELS(X16_ISA)
