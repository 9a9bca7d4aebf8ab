/* What the AVX2 X16 files share (gemm_x16_avx2.c, gemm_x16_q5_k_avx2.c, gemm_x16_q6_k_avx2.c):
 * the int16 multiply-add, the activation broadcast, the scales-to-lane-pairs permutation, the
 * prefetch distance, and the super-block walk of q4_k and q5_k (q4k_gemm), which differ only in
 * how a qs word's quants become int16. */
#ifndef LLMRUN_GEMM_X16_AVX2_H
#define LLMRUN_GEMM_X16_AVX2_H

#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

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

/* Bytes ahead that each super-block prefetches, as gemm_x16_avx512.c does: without it, the
 * 1B-shape model's 263 MB output head (mapped from the file in 4 KiB pages) took 15.4 ms for
 * one token against 6.8 ms from a copy in anonymous memory. */
#define PREFETCH_AHEAD 8192

/* q4_k and q5_k: gemm_x16_avx512.c's arithmetic on quarter-width vectors, one token at a time.
 * Super-blocks outermost: each one's 16 rows' sub-block scales are unpacked once (x16_q4k_scales;
 * q5_k's lie as q4_k's) for up to Q4K_TOKENS tokens, whose running sums wait in memory between
 * super-blocks (unpacking them per token cost a fifth of the time). Per pair of sub-blocks (the
 * low and the high nibbles of qs words 8p .. 8p + 7), each quarter of the rows sums each
 * sub-block in its own int32 lanes (r, p'), exact; per sub-block, one conversion and one FMA with
 * the rows' d sc (to each row's two lanes) times da, and the offsets dmin m sa by FMA into two
 * 8-lane accumulators in row order, taken off at the end. Same error as there: within
 * (nb + 3) u M, inside X16_DOT_BOUND(nb); and the same bits whatever t. */
#define Q4K_TOKENS 64

/* One token's running sums: lanes (r, p') of the four quarters, and the offsets in row order. */
typedef struct {
    __m256 acc[4], off[2];
} q4k_sums;

/* A super-block's scales for every token: per sub-block the rows' d sc to their two lanes (four
 * quarters), and dmin m in row order (rows 0-7, 8-15). */
typedef struct {
    __m256 dp[8][4], mn[8][2];
} q4k_scales;

ALWAYS_INLINE void q4k_unpack_scales(const uint8_t *g, q4k_scales *sc) {
    float d[LLMR_X16], dmin[LLMR_X16], dsc[8][LLMR_X16], dmm[8][LLMR_X16];
    for (int h = 0; h < 2; h++) {
        _mm256_storeu_ps(d + 8 * h, _mm256_cvtph_ps(load16(g + 16 * h)));
        _mm256_storeu_ps(dmin + 8 * h, _mm256_cvtph_ps(load16(g + X16_Q4K_DMIN + 16 * h)));
    }
    x16_q4k_scales(g, d, dmin, dsc, dmm);
    for (int j = 0; j < 8; j++) {
        for (int r = 0; r < 4; r++)
            sc->dp[j][r] = pairs(_mm256_loadu_ps(dsc[j] + 8 * (r / 2)), r);
        for (int h = 0; h < 2; h++)
            sc->mn[j][h] = _mm256_loadu_ps(dmm[j] + 8 * h);
    }
}

/* A super-block's quants as int16, for every token, where a format unpacks them once (q5_k):
 * [pair p][qs word 8p + c][sub-block 2p + s][rows 4r .. 4r + 3] (8 KiB, in L1). */
typedef struct {
    __m256i q[4][8][2][4];
} q4k_quants;

/* The int16 quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c, rows 4r .. 4r + 3,
 * of src: the format's own, from the super-block at src, or q4k_unpacked's, from a q4k_quants. */
typedef void (*q4k_word_fn)(const void *src, int p, int c, int r, __m256i *lo, __m256i *hi);
/* A super-block's quants, all of them, as its q4k_word_fn gives them. */
typedef void (*q4k_unpack_fn)(const uint8_t *g, q4k_quants *u);

ALWAYS_INLINE void q4k_unpacked(const void *src, int p, int c, int r, __m256i *lo, __m256i *hi) {
    const q4k_quants *u = src;
    *lo = u->q[p][c][0][r];
    *hi = u->q[p][c][1][r];
}

/* One token's sums += the super-block (its quants from word(src, ..)) against its activation
 * blocks y[0 .. 8). */
ALWAYS_INLINE void q4k_token(q4k_word_fn word, const void *src, const q4k_scales *sc, const block_q16_a *y,
                             q4k_sums *sums) {
    __m256 acc[4], off[2];
    for (int r = 0; r < 4; r++)
        acc[r] = sums->acc[r];
    for (int h = 0; h < 2; h++)
        off[h] = sums->off[h];
    for (int p = 0; p < 4; p++) {
        __m256i isum[2][4]; /* [sub-block 2p, 2p + 1][rows 4r .. 4r + 3] */
        for (int s = 0; s < 2; s++)
            for (int r = 0; r < 4; r++)
                isum[s][r] = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            const __m256i alo = act4(y + 2 * p, c), ahi = act4(y + 2 * p + 1, c);
            for (int r = 0; r < 4; r++) {
                __m256i lo, hi;
                word(src, p, c, r, &lo, &hi);
                isum[0][r] = madd(isum[0][r], lo, alo);
                isum[1][r] = madd(isum[1][r], hi, ahi);
            }
        }
        for (int s = 0; s < 2; s++) {
            const int j = 2 * p + s;
            const __m256 da = _mm256_set1_ps(y[j].d), sa = _mm256_set1_ps(y[j].s);
            for (int r = 0; r < 4; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[s][r]), _mm256_mul_ps(sc->dp[j][r], da), acc[r]);
            for (int h = 0; h < 2; h++)
                off[h] = _mm256_fmadd_ps(sc->mn[j][h], sa, off[h]);
        }
    }
    for (int r = 0; r < 4; r++)
        sums->acc[r] = acc[r];
    for (int h = 0; h < 2; h++)
        sums->off[h] = off[h];
}

/* Up to Q4K_TOKENS tokens: every super-block (block bytes each) against every token. With
 * unpack (q5_k), more than one token read the super-block's quants unpacked once; one token
 * (decode) unpacks them as it reads them, into the same integers. */
ALWAYS_INLINE void q4k_gemm_tokens(size_t block, q4k_word_fn word, q4k_unpack_fn unpack, int64_t nsb, int64_t t,
                                   float *out, size_t out_stride, const uint8_t *w, const uint8_t *a,
                                   size_t a_stride) {
    q4k_sums sums[Q4K_TOKENS];
    q4k_quants quants;
    for (int64_t i = 0; i < t; i++) {
        for (int r = 0; r < 4; r++)
            sums[i].acc[r] = _mm256_setzero_ps();
        sums[i].off[0] = sums[i].off[1] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * block;
        for (size_t line = 0; line < block; line += 64)
            _mm_prefetch((const char *)g + PREFETCH_AHEAD + line, _MM_HINT_T0);
        q4k_scales sc;
        q4k_unpack_scales(g, &sc);
        if (!unpack || t == 1) {
            for (int64_t i = 0; i < t; i++)
                q4k_token(word, g, &sc, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A), &sums[i]);
            continue;
        }
        unpack(g, &quants);
        for (int64_t i = 0; i < t; i++)
            q4k_token(q4k_unpacked, &quants, &sc, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A),
                      &sums[i]);
    }
    for (int64_t i = 0; i < t; i++)
        for (int h = 0; h < 2; h++) { /* lanes (r, 0), (r, 1) added, to row order, less the offsets */
            const __m256 s = _mm256_hadd_ps(sums[i].acc[2 * h], sums[i].acc[2 * h + 1]);
            const __m256 rows = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
            _mm256_storeu_ps(out + i * out_stride + 8 * h, _mm256_sub_ps(rows, sums[i].off[h]));
        }
}

/* All t tokens, Q4K_TOKENS at a time. */
ALWAYS_INLINE void q4k_gemm(size_t block, q4k_word_fn word, q4k_unpack_fn unpack, int64_t k, int64_t t, float *out,
                            size_t out_stride, const void *w, const void *a, size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q4K_TOKENS)
        q4k_gemm_tokens(block, word, unpack, k / QK_K, t - t0 < Q4K_TOKENS ? t - t0 : Q4K_TOKENS,
                        out + t0 * out_stride, out_stride, w, (const uint8_t *)a + t0 * a_stride, a_stride);
}

#endif
