/* AVX2 (+FMA, F16C) X16 kernel of q5_k with q16_a activations: gemm_x16_avx2.c's q4_k kernel with
 * the fifth bit, one token at a time. Super-blocks outermost: each one's 16 rows' sub-block scales
 * are unpacked once (x16_q4k_scales: q5_k's lie as q4_k's) for up to Q5K_TOKENS tokens, whose
 * running sums wait in memory between super-blocks; for more than one token its quants are also
 * unpacked once, into int16 (8 KiB, in L1), as gemm_x16_q5_k_avx512.c does (one token unpacks them
 * as it reads them, into the same integers). Per pair of sub-blocks 2p (the low nibbles of
 * qs words 8p .. 8p + 7) and 2p + 1 (their high nibbles), a 16-byte load of a qs word c of 4 rows
 * widened to int16 is lane 4r + i: row r's qs byte 4c' + i (c' = c mod 8), whose fifth bits are
 * bits 2p and 2p + 1 of the same lane of qh word c' widened alike (and, cmpeq, and, add). Each
 * quarter of the rows sums each sub-block in its own int32 lanes (r, p'), exact (16 products
 * below 2^20 each); per sub-block one conversion and one FMA with the rows' d sc (to each row's two
 * lanes) times da, and the offsets dmin m sa by FMA into two 8-lane accumulators in row order,
 * taken off at the end. Error as gemm_x16_q5_k_avx512.c's: within (nb + 3) u M, inside
 * X16_DOT_BOUND(nb); the same bits whatever t. */
#include <immintrin.h>
#include <string.h>

#include "llmrun.h"
#include "gemm_x16.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#define Q5K_TOKENS 64
#define Q5K_PREFETCH_AHEAD 8192 /* as q4_k's (gemm_x16_avx2.c) */

ALWAYS_INLINE __m256i madd(__m256i acc, __m256i w, __m256i a) { return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a)); }

/* Activation elements 4c .. 4c + 3, to every lane pair. */
ALWAYS_INLINE __m256i act4(const block_q16_a *y, int c) {
    long long v;
    memcpy(&v, &y->qs[4 * c], 8);
    return _mm256_set1_epi64x(v);
}

ALWAYS_INLINE __m256i widen(const uint8_t *p) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)); }

/* Scales of rows 4q .. 4q + 3 (from the 8 of their half) to lanes (r, 0) and (r, 1). */
ALWAYS_INLINE __m256 pairs(__m256 half, int q) {
    const int o = (q & 1) * 4;
    return _mm256_permutevar8x32_ps(half, _mm256_setr_epi32(o, o, o + 1, o + 1, o + 2, o + 2, o + 3, o + 3));
}

/* int16 lanes q plus 16 where the lane of h has `bit` set. */
ALWAYS_INLINE __m256i fifth(__m256i q, __m256i h, __m256i bit) {
    const __m256i set = _mm256_cmpeq_epi16(_mm256_and_si256(h, bit), bit);
    return _mm256_add_epi16(q, _mm256_and_si256(set, _mm256_set1_epi16(16)));
}

typedef struct {
    __m256 acc[4], off[2];
} q5k_sums;

typedef struct {
    __m256 dp[8][4], mn[8][2];
} q5k_scales;

ALWAYS_INLINE void q5k_unpack_scales(const uint8_t *g, q5k_scales *sc) {
    float d[LLMR_X16], dmin[LLMR_X16], dsc[8][LLMR_X16], dmm[8][LLMR_X16];
    for (int h = 0; h < 2; h++) {
        _mm256_storeu_ps(d + 8 * h, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16 * h))));
        _mm256_storeu_ps(dmin + 8 * h, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + X16_Q4K_DMIN + 16 * h))));
    }
    x16_q4k_scales(g, d, dmin, dsc, dmm);
    for (int j = 0; j < 8; j++) {
        for (int r = 0; r < 4; r++)
            sc->dp[j][r] = pairs(_mm256_loadu_ps(dsc[j] + 8 * (r / 2)), r);
        for (int h = 0; h < 2; h++)
            sc->mn[j][h] = _mm256_loadu_ps(dmm[j] + 8 * h);
    }
}

/* A super-block's 5-bit quants as int16, for every token: [pair p][qs word 8p + c][sub-block
 * 2p + s][rows 4r .. 4r + 3] (8 KiB, in L1). */
typedef struct {
    __m256i q[4][8][2][4];
} q5k_quants;

/* The int16 quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c, rows 4r .. 4r + 3: the
 * nibbles plus 16 where their bit of qh word c is set. */
ALWAYS_INLINE void q5k_word(const uint8_t *g, int p, int c, int r, __m256i *lo, __m256i *hi) {
    const __m256i nibble = _mm256_set1_epi16(0x0F);
    const __m256i bit_lo = _mm256_set1_epi16((short)(1 << 2 * p)), bit_hi = _mm256_set1_epi16((short)(2 << 2 * p));
    const __m256i raw = widen(g + X16_Q5K_QS + (8 * p + c) * 64 + r * 16), h = widen(g + X16_Q5K_QH + c * 64 + r * 16);
    *lo = fifth(_mm256_and_si256(raw, nibble), h, bit_lo);
    *hi = fifth(_mm256_srli_epi16(raw, 4), h, bit_hi);
}

static void q5k_unpack_quants(const uint8_t *g, q5k_quants *u) {
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 8; c++)
            for (int r = 0; r < 4; r++)
                q5k_word(g, p, c, r, &u->q[p][c][0][r], &u->q[p][c][1][r]);
}

/* One token's sums += the super-block at g against its activation blocks y[0 .. 8); its quants from
 * u (unpacked once for all the tokens) or, u NULL, unpacked here. */
ALWAYS_INLINE void q5k_token(const uint8_t *g, const q5k_scales *sc, const q5k_quants *u, const block_q16_a *y,
                             q5k_sums *sums) {
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
                if (u) {
                    lo = u->q[p][c][0][r];
                    hi = u->q[p][c][1][r];
                } else {
                    q5k_word(g, p, c, r, &lo, &hi);
                }
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

/* Up to Q5K_TOKENS tokens: every super-block against every token. */
static void gemm_q5_k_tokens(int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                             const uint8_t *a, size_t a_stride) {
    q5k_sums sums[Q5K_TOKENS];
    q5k_quants quants;
    for (int64_t i = 0; i < t; i++) {
        for (int r = 0; r < 4; r++)
            sums[i].acc[r] = _mm256_setzero_ps();
        sums[i].off[0] = sums[i].off[1] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_Q5K_BLOCK;
        for (size_t line = 0; line < X16_Q5K_BLOCK; line += 64)
            _mm_prefetch((const char *)g + Q5K_PREFETCH_AHEAD + line, _MM_HINT_T0);
        q5k_scales sc;
        q5k_unpack_scales(g, &sc);
        if (t == 1) { /* decode: unpacked as it is read */
            q5k_token(g, &sc, NULL, (const block_q16_a *)a + b * (QK_K / QK_Q16_A), &sums[0]);
            continue;
        }
        q5k_unpack_quants(g, &quants);
        for (int64_t i = 0; i < t; i++)
            q5k_token(g, &sc, &quants, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A), &sums[i]);
    }
    for (int64_t i = 0; i < t; i++)
        for (int h = 0; h < 2; h++) { /* lanes (r, 0), (r, 1) added, to row order, less the offsets */
            const __m256 s = _mm256_hadd_ps(sums[i].acc[2 * h], sums[i].acc[2 * h + 1]);
            const __m256 rows = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
            _mm256_storeu_ps(out + i * out_stride + 8 * h, _mm256_sub_ps(rows, sums[i].off[h]));
        }
}

void gemm_x16_q5_K_q16_a_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q5K_TOKENS)
        gemm_q5_k_tokens(k / QK_K, t - t0 < Q5K_TOKENS ? t - t0 : Q5K_TOKENS, out + t0 * out_stride, out_stride,
                         w, (const uint8_t *)a + t0 * a_stride, a_stride);
}
