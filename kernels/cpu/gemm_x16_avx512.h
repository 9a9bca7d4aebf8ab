/* What the AVX-512 X16 files share (gemm_x16_avx512.c, gemm_x16_q5_k_avx512.c and
 * gemm_x16_q6_k_avx512.c, each built again with -mavx512vnni): the int16 multiply-add, the
 * activation broadcast, the row-pair permutations, the prefetch distance, and the super-block
 * walk of q4_k and q5_k (q4k_gemm), which differ only in how a qs word's quants become int16. */
#ifndef LLMRUN_GEMM_X16_AVX512_H
#define LLMRUN_GEMM_X16_AVX512_H

#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"
#include "prefetch_x86.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
ALWAYS_INLINE __m512i madd(__m512i acc, __m512i w, __m512i a) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, w, a);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, a));
#endif
}

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

/* The 16 rows' f16 fields at p as f32. */
ALWAYS_INLINE __m512 f16x16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* q4_k and q5_k. Super-blocks outermost: each one's 16 rows' sub-block scales are unpacked once
 * (x16_q4k_scales; q5_k's d, dmin and scales lie as q4_k's) for up to Q4K_TOKENS tokens, whose
 * running sums wait in memory between super-blocks; the tokens meet it in tiles of up to
 * Q4K_TILE. Per pair of sub-blocks (2p: the low nibbles of qs words 8p .. 8p + 7, 2p + 1: their
 * high nibbles) it is q4_1's arithmetic twice over: the lanes (r, p') of each sub-block sum in
 * int32, exact, and are FMA'd into the token's accumulators with the rows' d sc (duplicated to
 * each row's two lanes) times the activation block's da. The offsets dmin m sa go by one FMA per
 * sub-block into a 16-lane accumulator in row order, taken off at the end. A token's operations
 * do not depend on the tokens beside it, so its result is the same bits whatever t. Error: a
 * term c P (c = fl(d sc da): 1 rounding, d sc being exact; P converted exactly, below 2^24)
 * meets at most nb FMAs in its lane (nb = k / 32 sub-blocks), the pair add and the subtraction;
 * an offset term (dmin m exact) nb FMAs and the subtraction: within (nb + 3) u M, inside
 * X16_DOT_BOUND(nb). */
#define Q4K_TOKENS 64
/* Tokens per tile: four tokens' int32 sums (16 vectors) with the weights and activations
 * spill; tiles of two ran a 512-token 2048 x 2048 q4_k product 1.33 times as fast as tiles of
 * four (three: 1.17); q5_k's tiles of four were slower too (17.4 against 14.5 ms). */
#define Q4K_TILE 2

/* One token's running sums: lanes (r, p') of rows 0-7 and 8-15, and the offsets in row order. */
typedef struct {
    __m512 acc[2], off;
} q4k_sums;

/* A super-block's scales for every token: per sub-block the rows' d sc to their two lanes (rows
 * 0-7, rows 8-15), and dmin m in row order. */
typedef struct {
    __m512 dp[8][2], mn[8];
} q4k_scales;

ALWAYS_INLINE void q4k_unpack_scales(const uint8_t *g, q4k_scales *sc) {
    const __m512i pair_lo = _mm512_loadu_si512(PAIR_IDX[0]), pair_hi = _mm512_loadu_si512(PAIR_IDX[1]);
    float d[LLMR_X16], dmin[LLMR_X16], dsc[8][LLMR_X16], dmm[8][LLMR_X16];
    _mm512_storeu_ps(d, f16x16(g));
    _mm512_storeu_ps(dmin, f16x16(g + X16_Q4K_DMIN));
    x16_q4k_scales(g, d, dmin, dsc, dmm);
    for (int j = 0; j < 8; j++) {
        const __m512 dj = _mm512_loadu_ps(dsc[j]);
        sc->dp[j][0] = _mm512_permutexvar_ps(pair_lo, dj);
        sc->dp[j][1] = _mm512_permutexvar_ps(pair_hi, dj);
        sc->mn[j] = _mm512_loadu_ps(dmm[j]);
    }
}

/* A super-block's quants as int16, for every token, where a format unpacks them once (q5_k):
 * [pair p][qs word 8p + c][sub-block 2p + s][rows 0-7, 8-15] (8 KiB, in L1). */
typedef struct {
    __m512i q[4][8][2][2];
} q4k_quants;

/* The int16 quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c, rows 0-7 and 8-15,
 * of src: the format's own, from the super-block at src, or q4k_unpacked's, from a q4k_quants. */
typedef void (*q4k_word_fn)(const void *src, int p, int c, __m512i lo[2], __m512i hi[2]);
/* A super-block's quants, all of them, as its q4k_word_fn gives them. */
typedef void (*q4k_unpack_fn)(const uint8_t *g, q4k_quants *u);

ALWAYS_INLINE void q4k_unpacked(const void *src, int p, int c, __m512i lo[2], __m512i hi[2]) {
    const q4k_quants *u = src;
    for (int v = 0; v < 2; v++) {
        lo[v] = u->q[p][c][0][v];
        hi[v] = u->q[p][c][1][v];
    }
}

/* T tokens' sums += the super-block (its quants from word(src, ..)) against their activation
 * blocks ys[i][0 .. 8). A part of the super-block at pf (pf_bytes long) is prefetched a word
 * (llmr_prefetch_part). */
ALWAYS_INLINE void q4k_tile(const int T, q4k_word_fn word, const void *src, const uint8_t *pf, size_t pf_bytes,
                            const q4k_scales *sc,
                            const block_q16_a *const *ys, q4k_sums *sums) {
    __m512 acc[Q4K_TILE][2], off[Q4K_TILE];
    for (int i = 0; i < T; i++) {
        acc[i][0] = sums[i].acc[0];
        acc[i][1] = sums[i].acc[1];
        off[i] = sums[i].off;
    }
    for (int p = 0; p < 4; p++) {
        __m512i isum[Q4K_TILE][2][2]; /* [token][sub-block 2p, 2p + 1][rows 0-7, 8-15] */
#pragma GCC unroll 8 /* as GCC unrolled q4_k's own loop (the `c ?` folds away) before q5_k shared it */
        for (int c = 0; c < 8; c++) {
            __m512i lo[2], hi[2];
            word(src, p, c, lo, hi);
            llmr_prefetch_part(pf, pf_bytes, 8 * p + c, 32);
            for (int i = 0; i < T; i++) {
                const __m512i alo = act4(ys[i] + 2 * p, c), ahi = act4(ys[i] + 2 * p + 1, c);
                for (int v = 0; v < 2; v++) {
                    isum[i][0][v] = madd(c ? isum[i][0][v] : _mm512_setzero_si512(), lo[v], alo);
                    isum[i][1][v] = madd(c ? isum[i][1][v] : _mm512_setzero_si512(), hi[v], ahi);
                }
            }
        }
        for (int s = 0; s < 2; s++) {
            const int j = 2 * p + s;
            for (int i = 0; i < T; i++) {
                const __m512 da = _mm512_set1_ps(ys[i][j].d);
                for (int h = 0; h < 2; h++)
                    acc[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][s][h]), _mm512_mul_ps(sc->dp[j][h], da),
                                                acc[i][h]);
                off[i] = _mm512_fmadd_ps(sc->mn[j], _mm512_set1_ps(ys[i][j].s), off[i]);
            }
        }
    }
    for (int i = 0; i < T; i++) {
        sums[i].acc[0] = acc[i][0];
        sums[i].acc[1] = acc[i][1];
        sums[i].off = off[i];
    }
}

/* Super-block b against tokens 0 .. t, tile by tile: the first tile prefetches pf's parts. */
ALWAYS_INLINE void q4k_tiles(q4k_word_fn word, const void *src, const uint8_t *pf, size_t pf_bytes,
                             const q4k_scales *sc, int64_t b, int64_t t,
                             const uint8_t *a, size_t a_stride, q4k_sums *sums) {
    for (int64_t ti = 0; ti < t; ti += Q4K_TILE) {
        const block_q16_a *ys[Q4K_TILE];
        const int n = t - ti < Q4K_TILE ? (int)(t - ti) : Q4K_TILE;
        for (int i = 0; i < n; i++)
            ys[i] = (const block_q16_a *)(a + (ti + i) * a_stride) + b * (QK_K / QK_Q16_A);
        if (n == Q4K_TILE)
            q4k_tile(Q4K_TILE, word, src, ti ? NULL : pf, pf_bytes, sc, ys, sums + ti);
        else
            for (int i = 0; i < n; i++)
                q4k_tile(1, word, src, ti || i ? NULL : pf, pf_bytes, sc, ys + i, sums + ti + i);
    }
}

/* Up to Q4K_TOKENS tokens: every super-block (block bytes each) against every token. With
 * unpack (q5_k), more than one token read the super-block's quants unpacked once; one token
 * (decode) unpacks them as it reads them, into the same integers. */
ALWAYS_INLINE void q4k_gemm_tokens(size_t block, q4k_word_fn word, q4k_unpack_fn unpack, int64_t nsb, int64_t t,
                                   float *out, size_t out_stride, const uint8_t *w, const uint8_t *a,
                                   size_t a_stride) {
    q4k_sums sums[Q4K_TOKENS];
    q4k_quants quants;
    for (int64_t i = 0; i < t; i++)
        sums[i].acc[0] = sums[i].acc[1] = sums[i].off = _mm512_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * block;
        const uint8_t *pf = llmr_prefetch_block(g, block);
        q4k_scales sc;
        q4k_unpack_scales(g, &sc);
        if (!unpack) {
            q4k_tiles(word, g, pf, block, &sc, b, t, a, a_stride, sums);
        } else if (t == 1) {
            const block_q16_a *y = (const block_q16_a *)a + b * (QK_K / QK_Q16_A);
            q4k_tile(1, word, g, pf, block, &sc, &y, sums);
        } else {
            unpack(g, &quants);
            q4k_tiles(q4k_unpacked, &quants, pf, block, &sc, b, t, a, a_stride, sums);
        }
    }
    const __m512i even = _mm512_loadu_si512(EVEN_IDX), odd = _mm512_loadu_si512(ODD_IDX);
    for (int64_t i = 0; i < t; i++) {
        const __m512 rows = _mm512_add_ps(_mm512_permutex2var_ps(sums[i].acc[0], even, sums[i].acc[1]),
                                          _mm512_permutex2var_ps(sums[i].acc[0], odd, sums[i].acc[1]));
        _mm512_storeu_ps(out + i * out_stride, _mm512_sub_ps(rows, sums[i].off));
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
