/* AVX2 (+FMA, F16C) products of X16 weight groups (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl) with q16_a activations
 * (q4_k and q5_k: gemm_x16_q4_k_avx2.c),
 * one token at a time. The arithmetic of gemm_x16_avx512.c on quarter-width vectors: a 16-byte
 * load holds word c of four rows, widened to int16 it is 8 lanes (r, p) of int16 pairs, and
 * pmaddwd with a broadcast of activation elements 4c .. 4c + 3 sums half of row r's block into
 * lane (r, p), exact in int32. Per block: one conversion to float and one FMA with the rows'
 * scales times the activation's per lane, one more FMA for the q4 offsets into the p = 0 lanes;
 * the lane pairs are added at the end. Same error bound as there (X16_DOT_BOUND). Sixteen ymm
 * registers hold one token's four quarters (int and float accumulators) with room for the
 * weights, so tokens go one by one; the group's weights stay in L1 between them. */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"
#include "prefetch_x86.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m256i madd(__m256i acc, __m256i w, __m256i a) { return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a)); }

/* Activation elements 4c .. 4c + 3, to every lane pair. */
ALWAYS_INLINE __m256i act4(const block_q16_a *y, int c) {
    long long v;
    memcpy(&v, &y->qs[4 * c], 8);
    return _mm256_set1_epi64x(v);
}

ALWAYS_INLINE __m128i load16(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }

/* Scales of rows 4q .. 4q + 3 (from the 8 of their half) to lanes (r, 0) and (r, 1). */
ALWAYS_INLINE __m256 pairs(__m256 half, int q) {
    const int o = (q & 1) * 4;
    return _mm256_permutevar8x32_ps(half, _mm256_setr_epi32(o, o, o + 1, o + 1, o + 2, o + 2, o + 3, o + 3));
}

/* 5-bit weights: widened nibbles q (int16 lane 4r + i: row r, byte i of a quant word c) plus 16
 * where bit 4c + i of row r's qh half h (copied to the row's four lanes) is set; q5_0 (signed)
 * minus 16, i.e. q where the bit is set and q - 16 where it is clear. */
ALWAYS_INLINE __m256i q5_fifth(const int fmt, __m256i q, __m256i h, __m256i bit) {
    const __m256i set = _mm256_cmpeq_epi16(_mm256_and_si256(h, bit), bit);
    return fmt == F_Q5_0 ? _mm256_add_epi16(q, _mm256_andnot_si256(set, _mm256_set1_epi16(-16)))
                         : _mm256_add_epi16(q, _mm256_and_si256(set, _mm256_set1_epi16(16)));
}

ALWAYS_INLINE void one_token(const int fmt, int64_t nb, float *out, const uint8_t *w, const block_q16_a *y) {
    const int n_scales = X16_HAS_M(fmt) ? 2 : 1;
    const size_t group_block = X16_GROUP_BLOCK(fmt);
    const __m256i nibble = _mm256_set1_epi16(0x0F);
    const __m256 even_lanes = _mm256_castsi256_ps(_mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0));
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};

    for (int64_t b = 0; b < nb; b++, y++) {
        const uint8_t *g = w + b * group_block;
        llmr_prefetch_lines(g + LLMR_PREFETCH_AHEAD, group_block);
        const uint8_t *q = g + n_scales * LLMR_X16 * 2;
        __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                           _mm256_setzero_si256()};
        if (fmt == F_Q8_0) {
            for (int c = 0; c < 8; c++) {
                const __m256i a = act4(y, c);
                for (int r = 0; r < 4; r++)
                    isum[r] = madd(isum[r], _mm256_cvtepi8_epi16(load16(q + c * 64 + r * 16)), a);
            }
        } else if (X16_IS_Q5(fmt)) {
            /* rows 4r .. 4r + 3's qh words: each row's low (hl) and high (hh) half to its 4 lanes */
            __m256i hl[4], hh[4];
            for (int r = 0; r < 4; r++) {
                const __m256i w64 = _mm256_cvtepu32_epi64(load16(q + r * 16));
                hl[r] = _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(w64, 0x00), 0x00);
                hh[r] = _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(w64, 0x55), 0x55);
            }
            for (int c = 0; c < 4; c++) {
                const __m256i alo = act4(y, c), ahi = act4(y, c + 4);
                const __m256i bit = _mm256_loadu_si256((const __m256i *)X16_Q5_BIT16[c]);
                for (int r = 0; r < 4; r++) {
                    const __m256i raw = _mm256_cvtepu8_epi16(load16(q + 64 + c * 64 + r * 16));
                    const __m256i lo = q5_fifth(fmt, _mm256_and_si256(raw, nibble), hl[r], bit);
                    const __m256i hi = q5_fifth(fmt, _mm256_srli_epi16(raw, 4), hh[r], bit);
                    isum[r] = madd(madd(isum[r], lo, alo), hi, ahi);
                }
            }
        } else if (fmt == F_IQ4_NL) {
            /* q4's nibbles replaced by their levels while still bytes (a pshufb of the 16-level
             * table), widened as signed bytes: then q8_0's lanes, no offset */
            const __m128i levels = load16((const uint8_t *)llmr_iq4_nl_values), m = _mm_set1_epi8(0x0F);
            for (int c = 0; c < 4; c++) {
                const __m256i alo = act4(y, c), ahi = act4(y, c + 4);
                for (int r = 0; r < 4; r++) {
                    const __m128i raw = load16(q + c * 64 + r * 16);
                    const __m256i lo = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, _mm_and_si128(raw, m)));
                    const __m256i hi = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(raw, 4), m)));
                    isum[r] = madd(madd(isum[r], lo, alo), hi, ahi);
                }
            }
        } else {
            for (int c = 0; c < 4; c++) {
                const __m256i alo = act4(y, c), ahi = act4(y, c + 4);
                for (int r = 0; r < 4; r++) {
                    const __m256i raw = _mm256_cvtepu8_epi16(load16(q + c * 64 + r * 16));
                    isum[r] = madd(madd(isum[r], _mm256_and_si256(raw, nibble), alo), _mm256_srli_epi16(raw, 4), ahi);
                }
            }
        }

        const __m256 d[2] = {_mm256_cvtph_ps(load16(g)), _mm256_cvtph_ps(load16(g + 16))};
        const __m256 da = _mm256_set1_ps(y->d), sa = _mm256_set1_ps(y->s);
        for (int r = 0; r < 4; r++) {
            const __m256 dp = pairs(d[r / 2], r);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(dp, da), acc[r]);
            if (X16_HAS_OFFSET(fmt)) {
                const __m256 off = fmt == F_Q4_0 ? _mm256_mul_ps(dp, _mm256_set1_ps(-8.0f))
                                                 : pairs(_mm256_cvtph_ps(load16(g + 32 + r / 2 * 16)), r);
                acc[r] = _mm256_fmadd_ps(_mm256_and_ps(off, even_lanes), sa, acc[r]);
            }
        }
    }

    /* hadd pairs lanes (r, 0) + (r, 1) of two quarters as {r0 r1 r4 r5 | r2 r3 r6 r7}; the 64-bit
     * permute puts the rows in order. */
    for (int h = 0; h < 2; h++) {
        const __m256 s = _mm256_hadd_ps(acc[2 * h], acc[2 * h + 1]);
        _mm256_storeu_ps(out + 8 * h, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8)));
    }
}

/* q5 and iq4_nl prefill: a 5-bit block costs about twice a q8_0 block to unpack (an iq4_nl block,
 * its nibbles looked up in the level table, 1.35 times a q4_0 block: measured one token at a
 * time), so with more than one token each block of the group is unpacked once, into int16 words
 * in L1 (1 KiB), and then meets up to Q5_TOKENS tokens, whose accumulators wait in memory. Per token, the same operations in the same
 * order as one_token: the same result bit for bit, whatever t. */
#define Q5_TOKENS 64
ALWAYS_INLINE void gemm_q5(const int fmt, int64_t nb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                           const void *a, size_t a_stride) {
    const int n_scales = X16_HAS_M(fmt) ? 2 : 1;
    const size_t group_block = X16_GROUP_BLOCK(fmt);
    const __m256i nibble = _mm256_set1_epi16(0x0F);
    const __m256 even_lanes = _mm256_castsi256_ps(_mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0));
    __m256 acc[Q5_TOKENS][4];
    __m256i wq[4][4][2]; /* [word c][rows 4r ..][low, high nibbles] */
    for (int64_t t0 = 0; t0 < t; t0 += Q5_TOKENS) {
        const int64_t tn = t - t0 < Q5_TOKENS ? t - t0 : Q5_TOKENS;
        for (int64_t i = 0; i < tn; i++)
            for (int r = 0; r < 4; r++)
                acc[i][r] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *g = w + b * group_block;
            llmr_prefetch_lines(g + LLMR_PREFETCH_AHEAD, group_block);
            const uint8_t *q = g + n_scales * LLMR_X16 * 2;
            if (fmt == F_IQ4_NL) { /* as one_token's */
                const __m128i levels = load16((const uint8_t *)llmr_iq4_nl_values), m = _mm_set1_epi8(0x0F);
                for (int c = 0; c < 4; c++)
                    for (int r = 0; r < 4; r++) {
                        const __m128i raw = load16(q + c * 64 + r * 16);
                        wq[c][r][0] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, _mm_and_si128(raw, m)));
                        wq[c][r][1] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, _mm_and_si128(_mm_srli_epi16(raw, 4), m)));
                    }
            } else {
                __m256i hl[4], hh[4];
                for (int r = 0; r < 4; r++) {
                    const __m256i w64 = _mm256_cvtepu32_epi64(load16(q + r * 16));
                    hl[r] = _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(w64, 0x00), 0x00);
                    hh[r] = _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(w64, 0x55), 0x55);
                }
                for (int c = 0; c < 4; c++) {
                    const __m256i bit = _mm256_loadu_si256((const __m256i *)X16_Q5_BIT16[c]);
                    for (int r = 0; r < 4; r++) {
                        const __m256i raw = _mm256_cvtepu8_epi16(load16(q + 64 + c * 64 + r * 16));
                        wq[c][r][0] = q5_fifth(fmt, _mm256_and_si256(raw, nibble), hl[r], bit);
                        wq[c][r][1] = q5_fifth(fmt, _mm256_srli_epi16(raw, 4), hh[r], bit);
                    }
                }
            }
            const __m256 d[2] = {_mm256_cvtph_ps(load16(g)), _mm256_cvtph_ps(load16(g + 16))};
            __m256 dp[4], mp[4];
            for (int r = 0; r < 4; r++) {
                dp[r] = pairs(d[r / 2], r);
                mp[r] = fmt == F_Q5_1 ? _mm256_and_ps(pairs(_mm256_cvtph_ps(load16(g + 32 + r / 2 * 16)), r), even_lanes)
                                      : _mm256_setzero_ps();
            }
            for (int64_t i = 0; i < tn; i++) {
                const block_q16_a *y = (const block_q16_a *)((const uint8_t *)a + (t0 + i) * a_stride) + b;
                __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                                   _mm256_setzero_si256()};
                for (int c = 0; c < 4; c++) {
                    const __m256i alo = act4(y, c), ahi = act4(y, c + 4);
                    for (int r = 0; r < 4; r++)
                        isum[r] = madd(madd(isum[r], wq[c][r][0], alo), wq[c][r][1], ahi);
                }
                const __m256 da = _mm256_set1_ps(y->d), sa = _mm256_set1_ps(y->s);
                for (int r = 0; r < 4; r++) {
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(dp[r], da), acc[i][r]);
                    if (fmt == F_Q5_1)
                        acc[i][r] = _mm256_fmadd_ps(mp[r], sa, acc[i][r]);
                }
            }
        }
        for (int64_t i = 0; i < tn; i++)
            for (int h = 0; h < 2; h++) { /* as one_token's end */
                const __m256 s = _mm256_hadd_ps(acc[i][2 * h], acc[i][2 * h + 1]);
                _mm256_storeu_ps(out + (t0 + i) * out_stride + 8 * h,
                                 _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8)));
            }
    }
}

ALWAYS_INLINE void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                        const void *a, size_t a_stride) {
    if ((X16_IS_Q5(fmt) || fmt == F_IQ4_NL) && t > 1) {
        gemm_q5(fmt, k / QK_Q16_A, t, out, out_stride, w, a, a_stride);
        return;
    }
    for (int64_t i = 0; i < t; i++)
        one_token(fmt, k / QK_Q16_A, /* blocks: these types' are q16_a's (llmrun.h) */
                   out + i * out_stride, w, (const block_q16_a *)((const uint8_t *)a + i * a_stride));
}

LLMR_GEMM_X16_KERNELS(avx2)
