/* AVX-512 (F, BW, VL) products of X16 weight groups (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl; q4_k at the end) with q16_a activations:
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
 * the end. q5: the same lanes, each widened nibble plus its fifth bit (a bit test of the rows' qh
 * halves, copied to their lanes once per block, and a masked add); q5_0's weights are q - 16
 * (signed, no offset). iq4_nl: q4's words with each nibble replaced by its level while still a
 * byte (one pshufb of the 16-level table per 32 bytes of nibbles), widened as signed bytes: then
 * q8_0's lanes (signed, no offset); the activations are int16, so this is exact where maddubs's
 * u8 x s8 would need 8-bit ones.
 *
 * Error against the scalar kernel (same exact block sums, other float order): each lane's
 * accumulator meets at most two FMAs per block, so a term's relative error is at most
 * (2 nb + 3) u (the scale product, the int -> float conversion above 2^24 for q8_0, the lane
 * pair add), |err| <= (2 nb + 3) u M with M the scalar kernel's magnitude (tests/test_kernels.py,
 * X16_DOT_BOUND). */
#include "gemm_x16_avx512.h"

#ifndef X16_ISA /* this file's own build: the avx512 names */
#define X16_ISA avx512
#endif

/* 5-bit weights: a quant-word load of rows 0-7 (or 8-15) widened to int16 is lane 4r + i for row r,
 * byte i: elements 4c + i (low nibble) and 16 + 4c + i (high nibble), whose fifth bits are bits
 * 4c + i of the low and of the high half of row r's qh. Q5_HALF[h] copies half h of each of the
 * 8 rows' qh words (16-bit lanes 2r + h of the 8 u32) to its row's four lanes, once per block;
 * X16_Q5_BIT16[c] (gemm_x16.h) tests bit 4c + i in lane 4r + i. */
static const int16_t Q5_HALF[2][32] = {{0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6,
                                        8, 8, 8, 8, 10, 10, 10, 10, 12, 12, 12, 12, 14, 14, 14, 14},
                                       {1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7,
                                        9, 9, 9, 9, 11, 11, 11, 11, 13, 13, 13, 13, 15, 15, 15, 15}};
/* Nibbles q (int16) plus 16 where the bit of h is set; q5_0 (signed): minus 16, i.e. q where the
 * bit is set and q - 16 where it is clear. */
ALWAYS_INLINE __m512i q5_fifth(const int fmt, __m512i q, __m512i h, __m512i bit) {
    const __m512i sixteen = _mm512_set1_epi16(16);
    return fmt == F_Q5_0 ? _mm512_mask_sub_epi16(q, _mm512_testn_epi16_mask(h, bit), q, sixteen)
                         : _mm512_mask_add_epi16(q, _mm512_test_epi16_mask(h, bit), q, sixteen);
}

/* 16 rows (one group) against T <= 4 tokens: ys[i] is token i's activation row. */
ALWAYS_INLINE void tile(const int fmt, const int T, int64_t nb, float *out, size_t out_stride,
                        const uint8_t *w, const block_q16_a *const *ys) {
    const int n_scales = X16_HAS_M(fmt) ? 2 : 1;
    const size_t group_block = X16_GROUP_BLOCK(fmt);
    const __m512i pair_lo = _mm512_loadu_si512(PAIR_IDX[0]), pair_hi = _mm512_loadu_si512(PAIR_IDX[1]);
    const __m512i nibble = _mm512_set1_epi16(0x0F);
    __m512 acc[4][2];
    for (int i = 0; i < T; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();

    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *g = w + b * group_block;
        llmr_prefetch_lines(g + LLMR_PREFETCH_AHEAD, group_block);
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
        } else if (X16_IS_Q5(fmt)) {
            __m512i h[2][2]; /* [rows 0-7, 8-15][low, high half of qh] */
            for (int v = 0; v < 2; v++) {
                const __m512i qh = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q + v * 32)));
                h[v][0] = _mm512_permutexvar_epi16(_mm512_loadu_si512(Q5_HALF[0]), qh);
                h[v][1] = _mm512_permutexvar_epi16(_mm512_loadu_si512(Q5_HALF[1]), qh);
            }
            for (int c = 0; c < 4; c++) {
                const __m512i bit = _mm512_loadu_si512(X16_Q5_BIT16[c]);
                __m512i lo[2], hi[2];
                for (int v = 0; v < 2; v++) {
                    const __m512i raw = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + 64 + c * 64 + v * 32)));
                    lo[v] = q5_fifth(fmt, _mm512_and_si512(raw, nibble), h[v][0], bit);
                    hi[v] = q5_fifth(fmt, _mm512_srli_epi16(raw, 4), h[v][1], bit);
                }
                for (int i = 0; i < T; i++) {
                    const __m512i alo = act4(ys[i] + b, c), ahi = act4(ys[i] + b, c + 4);
                    isum[i][0] = madd(madd(c ? isum[i][0] : _mm512_setzero_si512(), lo[0], alo), hi[0], ahi);
                    isum[i][1] = madd(madd(c ? isum[i][1] : _mm512_setzero_si512(), lo[1], alo), hi[1], ahi);
                }
            }
        } else if (fmt == F_IQ4_NL) {
            const __m256i levels = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)llmr_iq4_nl_values));
            const __m256i m = _mm256_set1_epi8(0x0F);
            for (int c = 0; c < 4; c++) {
                __m512i lo[2], hi[2];
                for (int v = 0; v < 2; v++) {
                    const __m256i raw = _mm256_loadu_si256((const __m256i *)(q + c * 64 + v * 32));
                    lo[v] = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(levels, _mm256_and_si256(raw, m)));
                    hi[v] = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(levels, _mm256_and_si256(_mm256_srli_epi16(raw, 4), m)));
                }
                for (int i = 0; i < T; i++) {
                    const __m512i alo = act4(ys[i] + b, c), ahi = act4(ys[i] + b, c + 4);
                    isum[i][0] = madd(madd(c ? isum[i][0] : _mm512_setzero_si512(), lo[0], alo), hi[0], ahi);
                    isum[i][1] = madd(madd(c ? isum[i][1] : _mm512_setzero_si512(), lo[1], alo), hi[1], ahi);
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
        if (X16_HAS_OFFSET(fmt)) {
            const __m512 off = fmt == F_Q4_0 ? _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)) : f16x16(g + 32);
            offp[0] = _mm512_maskz_permutexvar_ps(0x5555, pair_lo, off);
            offp[1] = _mm512_maskz_permutexvar_ps(0x5555, pair_hi, off);
        }
        for (int i = 0; i < T; i++) {
            const block_q16_a *y = ys[i] + b;
            const __m512 da = _mm512_set1_ps(y->d), sa = _mm512_set1_ps(y->s);
            for (int h = 0; h < 2; h++) {
                acc[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][h]), _mm512_mul_ps(dp[h], da), acc[i][h]);
                if (X16_HAS_OFFSET(fmt))
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

#ifndef X16_NO_Q4_K
/* q4_k: q4k_gemm (gemm_x16_avx512.h), its quants the nibbles of each qs word. */
ALWAYS_INLINE void q4k_word(const void *g, int p, int c, __m512i lo[2], __m512i hi[2]) {
    const __m512i nibble = _mm512_set1_epi16(0x0F);
    const uint8_t *q = (const uint8_t *)g + X16_Q4K_QS + (8 * p + c) * 64;
    for (int v = 0; v < 2; v++) {
        const __m512i raw = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + v * 32)));
        lo[v] = _mm512_and_si512(raw, nibble);
        hi[v] = _mm512_srli_epi16(raw, 4);
    }
}

static void gemm_q4_k(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                      size_t a_stride) {
    q4k_gemm(X16_Q4K_BLOCK, q4k_word, NULL, k, t, out, out_stride, w, a, a_stride);
}

LLMR_GEMM_X16_KERNEL_Q4_K(X16_ISA)
#endif
