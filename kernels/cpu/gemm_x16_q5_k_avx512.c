/* AVX-512 (F, BW, VL) X16 kernel of q5_k with q16_a activations: gemm_x16_avx512.c's q4_k kernel
 * with the fifth bit. Compiled as the `avx512` kernel, and again by gemm_x16_q5_k_avx512vnni.c
 * with -mavx512vnni, where the int16 multiply-add becomes one vpdpwssd.
 *
 * Super-blocks outermost: each one's 16 rows' sub-block scales are unpacked once
 * (x16_q4k_scales: q5_k's d, dmin and scales lie as q4_k's) for up to Q5K_TOKENS tokens, whose
 * running sums wait in memory between super-blocks; the tokens meet it in tiles of up to
 * Q5K_TILE. For more than one token its quants are also unpacked once, into int16 (8 KiB, in L1):
 * a 512-token 2048 x 2048 product on one thread took 1.35-1.9x q4_k's time when each tile unpacked
 * them (wall clock, a loaded machine), 1.1x with this (14.1-14.8 against 12.8-13.7 ms of thread
 * CPU time). One token (decode) unpacks them as it reads them, into the same integers.
 *
 * Per pair of sub-blocks 2p (the low nibbles of qs words 8p .. 8p + 7) and 2p + 1 (their high
 * nibbles), a 32-byte load of a qs word c of 8 rows widened to int16 is lane 4r + i: row r's qs
 * byte 4c' + i (c' = c mod 8), whose fifth bits are bits 2p and 2p + 1 of row r's qh byte 4c' + i,
 * in the same lane of qh word c' widened alike: one test and one masked add of 16 each. Then
 * q4_k's arithmetic: the lanes (r, p') sum each sub-block in exact int32 (16 products of a quant up
 * to 31 and an activation up to 32767: below 2^24) and are FMA'd into the token's accumulators
 * with the rows' d sc (each duplicated to its row's two lanes) times the block's da; the offsets
 * dmin m sa go by one FMA per sub-block into a 16-lane accumulator in row order, taken off at the
 * end. A token's operations do not depend on the tokens beside it: the same bits whatever t.
 * operations do not depend on the tokens beside it: the same bits whatever t.
 *
 * Error against float64 (as q4_k's): a term c P (c = fl(d sc da), d sc exact; P below 2^24,
 * converted exactly) meets at most nb FMAs in its lane (nb = k / 32), the pair add and the
 * subtraction; an offset term nb FMAs and the subtraction: within (nb + 3) u M, inside
 * X16_DOT_BOUND(nb) (tests/test_kernels.py). */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

#ifndef Q5K_ISA /* this file's own build: the avx512 name */
#define Q5K_ISA avx512
#endif
#define Q5K_CAT(a, b) a##b
#define Q5K_NAME(isa) Q5K_CAT(gemm_x16_q5_K_q16_a_, isa)

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc + pairwise sums of w * a, int16 x int16 -> int32 (exact). */
ALWAYS_INLINE __m512i madd(__m512i acc, __m512i w, __m512i a) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, w, a);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, a));
#endif
}

#define Q5K_TOKENS 64
#define Q5K_TILE 2 /* tiles of four measured slower here too (17.4 against 14.5 ms, the product below) */
#define Q5K_PREFETCH_AHEAD 8192

/* Row r's scale to lanes 2r and 2r + 1 (rows 0-7, rows 8-15); lanes (r, 0) and (r, 1) of the two
 * halves back to row order. */
static const int32_t PAIR_IDX[2][16] = {{0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7},
                                        {8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15}};
static const int32_t EVEN_IDX[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t ODD_IDX[16] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

/* Activation elements 4c .. 4c + 3, to every lane pair. */
ALWAYS_INLINE __m512i act4(const block_q16_a *y, int c) {
    int64_t v;
    memcpy(&v, &y->qs[4 * c], 8);
    return _mm512_set1_epi64(v);
}

ALWAYS_INLINE __m512i widen(const uint8_t *p) { return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p)); }

typedef struct {
    __m512 acc[2], off;
} q5k_sums;

typedef struct {
    __m512 dp[8][2], mn[8];
} q5k_scales;

ALWAYS_INLINE void q5k_unpack_scales(const uint8_t *g, q5k_scales *sc) {
    const __m512i pair_lo = _mm512_loadu_si512(PAIR_IDX[0]), pair_hi = _mm512_loadu_si512(PAIR_IDX[1]);
    float d[LLMR_X16], dmin[LLMR_X16], dsc[8][LLMR_X16], dmm[8][LLMR_X16];
    _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g)));
    _mm512_storeu_ps(dmin, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + X16_Q4K_DMIN))));
    x16_q4k_scales(g, d, dmin, dsc, dmm);
    for (int j = 0; j < 8; j++) {
        const __m512 dj = _mm512_loadu_ps(dsc[j]);
        sc->dp[j][0] = _mm512_permutexvar_ps(pair_lo, dj);
        sc->dp[j][1] = _mm512_permutexvar_ps(pair_hi, dj);
        sc->mn[j] = _mm512_loadu_ps(dmm[j]);
    }
}

/* A super-block's 5-bit quants as int16, for every token: [pair p][qs word 8p + c][sub-block 2p + s]
 * [rows 0-7, 8-15] (8 KiB, in L1). */
typedef struct {
    __m512i q[4][8][2][2];
} q5k_quants;

/* The int16 quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c, rows 0-7 and 8-15:
 * the nibbles plus 16 where their bit of qh word c is set. */
ALWAYS_INLINE void q5k_word(const uint8_t *g, int p, int c, __m512i lo[2], __m512i hi[2]) {
    const __m512i nibble = _mm512_set1_epi16(0x0F), sixteen = _mm512_set1_epi16(16);
    const __m512i bit_lo = _mm512_set1_epi16((short)(1 << 2 * p)), bit_hi = _mm512_set1_epi16((short)(2 << 2 * p));
    for (int v = 0; v < 2; v++) {
        const __m512i raw = widen(g + X16_Q5K_QS + (8 * p + c) * 64 + v * 32), h = widen(g + X16_Q5K_QH + c * 64 + v * 32);
        const __m512i l = _mm512_and_si512(raw, nibble), u = _mm512_srli_epi16(raw, 4);
        lo[v] = _mm512_mask_add_epi16(l, _mm512_test_epi16_mask(h, bit_lo), l, sixteen);
        hi[v] = _mm512_mask_add_epi16(u, _mm512_test_epi16_mask(h, bit_hi), u, sixteen);
    }
}

static void q5k_unpack_quants(const uint8_t *g, q5k_quants *u) {
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 8; c++)
            q5k_word(g, p, c, u->q[p][c][0], u->q[p][c][1]);
}

/* T tokens' sums += the super-block at g against their activation blocks ys[i][0 .. 8); its quants
 * from u (unpacked once for all the tokens) or, u NULL, unpacked here. */
ALWAYS_INLINE void q5k_tile(const int T, const uint8_t *g, const q5k_scales *sc, const q5k_quants *u,
                            const block_q16_a *const *ys, q5k_sums *sums) {
    __m512 acc[Q5K_TILE][2], off[Q5K_TILE];
    for (int i = 0; i < T; i++) {
        acc[i][0] = sums[i].acc[0];
        acc[i][1] = sums[i].acc[1];
        off[i] = sums[i].off;
    }
    for (int p = 0; p < 4; p++) {
        __m512i isum[Q5K_TILE][2][2]; /* [token][sub-block 2p, 2p + 1][rows 0-7, 8-15] */
        for (int c = 0; c < 8; c++) {
            __m512i lo[2], hi[2];
            if (u)
                for (int v = 0; v < 2; v++) {
                    lo[v] = u->q[p][c][0][v];
                    hi[v] = u->q[p][c][1][v];
                }
            else
                q5k_word(g, p, c, lo, hi);
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

/* Up to Q5K_TOKENS tokens: every super-block against every token, tile by tile. */
static void gemm_q5_k_tokens(int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                             const uint8_t *a, size_t a_stride) {
    q5k_sums sums[Q5K_TOKENS];
    q5k_quants quants;
    for (int64_t i = 0; i < t; i++)
        sums[i].acc[0] = sums[i].acc[1] = sums[i].off = _mm512_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_Q5K_BLOCK;
        for (size_t line = 0; line < X16_Q5K_BLOCK; line += 64)
            _mm_prefetch((const char *)g + Q5K_PREFETCH_AHEAD + line, _MM_HINT_T0);
        q5k_scales sc;
        q5k_unpack_scales(g, &sc);
        if (t == 1) { /* decode: unpacked as it is read */
            const block_q16_a *y = (const block_q16_a *)a + b * (QK_K / QK_Q16_A);
            q5k_tile(1, g, &sc, NULL, &y, sums);
            continue;
        }
        q5k_unpack_quants(g, &quants);
        for (int64_t ti = 0; ti < t; ti += Q5K_TILE) {
            const block_q16_a *ys[Q5K_TILE];
            const int n = t - ti < Q5K_TILE ? (int)(t - ti) : Q5K_TILE;
            for (int i = 0; i < n; i++)
                ys[i] = (const block_q16_a *)(a + (ti + i) * a_stride) + b * (QK_K / QK_Q16_A);
            if (n == Q5K_TILE)
                q5k_tile(Q5K_TILE, g, &sc, &quants, ys, sums + ti);
            else
                for (int i = 0; i < n; i++)
                    q5k_tile(1, g, &sc, &quants, ys + i, sums + ti + i);
        }
    }
    const __m512i even = _mm512_loadu_si512(EVEN_IDX), odd = _mm512_loadu_si512(ODD_IDX);
    for (int64_t i = 0; i < t; i++) {
        const __m512 rows = _mm512_add_ps(_mm512_permutex2var_ps(sums[i].acc[0], even, sums[i].acc[1]),
                                          _mm512_permutex2var_ps(sums[i].acc[0], odd, sums[i].acc[1]));
        _mm512_storeu_ps(out + i * out_stride, _mm512_sub_ps(rows, sums[i].off));
    }
}

void Q5K_NAME(Q5K_ISA)(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                       size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q5K_TOKENS)
        gemm_q5_k_tokens(k / QK_K, t - t0 < Q5K_TOKENS ? t - t0 : Q5K_TOKENS, out + t0 * out_stride, out_stride,
                         w, (const uint8_t *)a + t0 * a_stride, a_stride);
}
