/* AVX-512 (F, BW, VL) q6_k and q3_k X16 kernels: 16 weight rows against 1..t q16_a tokens.
 *
 * Super-blocks outermost: each one's integer weights sc (q - 32) (q3_k: sc (q - 4)) are unpacked
 * once (q6k_unpack: 8 KiB of int16, in L1) for up to X16_Q6K_TOKENS tokens, whose running sums
 * wait in memory between super-blocks; the tokens meet it in tiles of up to Q6K_TILE. A 512-bit
 * load of word column c of rows 0-7 (or 8-15) is 16 lanes (r, p) of int16 pairs, elements
 * 4c + 2p, 4c + 2p + 1; a broadcast of activation elements 4c .. 4c + 3 multiplies-adds into it,
 * so after the block's eight columns lane (r, p) holds 16 products, exact in int32 (no overflow:
 * gemm_x16_q6_k.h states the bound). Per activation block, one conversion and one FMA with the
 * rows' d (to their two lanes) times the block's da; the two lanes of a row are added at the
 * end. A token's operations do not depend on the tokens beside it: the same bits whatever t.
 *
 * Error against float64: a term c P (c = fl(d da): 1 rounding; P to float: 1, |P| may pass
 * 2^24) meets at most nb FMAs in its lane (nb = k / 32) and the pair add: |err| <= (nb + 3) u M
 * + O(u^2), inside X16_DOT_BOUND(nb) = (2 nb + 4) u (tests/test_kernels.py). */
#include "gemm_x16_avx512.h"
#include "gemm_x16_q6_k.h"

/* Tokens per tile: four tokens' int32 sums and float accumulators (16 vectors) fit the 32
 * registers beside the weights and broadcasts. 2048 x 2048, 512 tokens, one thread: tiles of two
 * ran at 0.8 times this speed, tiles of six at the same. */
#define Q6K_TILE 4

/* x16_k16_unpack (gemm_x16_q6_k.h) in AVX-512 (the generic vectors compiled to a third of this
 * speed): per word column, the ql word's nibble and the qh word's bit pair of 16 rows at once as
 * bytes, less 32, widened to int16 (rows 0-7, rows 8-15) and multiplied by their sub-block's
 * scales, which a vpermw spreads from each row's widened scales word to the row's four lanes
 * (q6k_scales: sc[s][v], sub-block s, rows 8v .. 8v + 7). */
ALWAYS_INLINE void q6k_scales(const uint8_t *sw, __m512i sc[QK_K / 16][2]) {
    for (int w = 0; w < 4; w++)
        for (int v = 0; v < 2; v++) {
            const __m512i s16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(sw + 64 * w + 32 * v)));
            for (int i = 0; i < 4; i++) {
                const __m512i four = _mm512_set_epi16(28 + i, 28 + i, 28 + i, 28 + i, 24 + i, 24 + i, 24 + i, 24 + i,
                                                      20 + i, 20 + i, 20 + i, 20 + i, 16 + i, 16 + i, 16 + i, 16 + i,
                                                      12 + i, 12 + i, 12 + i, 12 + i, 8 + i, 8 + i, 8 + i, 8 + i,
                                                      4 + i, 4 + i, 4 + i, 4 + i, i, i, i, i);
                sc[4 * w + i][v] = _mm512_permutexvar_epi16(four, s16);
            }
        }
}

/* The unsigned quants of word column c of q16_a blocks 4h .. 4h + 3: q6_k's (0 .. 63) from the low
 * or high nibbles of an ql word and two bits of the qh word, q3_k's (0 .. 7) from two bits of the
 * qs word and one of the hmask word (16-bit shifts of at most 5 keep it within its byte). */
ALWAYS_INLINE void k16_quants(const int fmt, const uint8_t *g, int h, int c, __m512i q[4]) {
    if (fmt == K16_Q3_K) {
        const __m512i qs = _mm512_loadu_si512(g + X16_Q3K_QS + (8 * h + c) * 64);
        const __m512i hm = _mm512_loadu_si512(g + X16_Q3K_HMASK + c * 64);
        for (int k = 0; k < 4; k++) {
            const int bit = 4 * h + k;
            const __m512i third = bit > 2 ? _mm512_srli_epi16(hm, bit - 2) : bit == 2 ? hm : _mm512_slli_epi16(hm, 2 - bit);
            q[k] = _mm512_or_si512(_mm512_and_si512(k ? _mm512_srli_epi16(qs, 2 * k) : qs, _mm512_set1_epi8(0x03)),
                                   _mm512_and_si512(third, _mm512_set1_epi8(0x04)));
        }
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
    const __m512i qh = _mm512_loadu_si512(g + X16_Q6K_QH + (8 * h + c) * 64);
    const __m512i ql[2] = {_mm512_loadu_si512(g + X16_Q6K_QL + (16 * h + c) * 64),
                           _mm512_loadu_si512(g + X16_Q6K_QL + (16 * h + 8 + c) * 64)};
    const __m512i top[4] = {_mm512_slli_epi16(qh, 4), _mm512_slli_epi16(qh, 2), qh, _mm512_srli_epi16(qh, 2)};
    for (int k = 0; k < 4; k++)
        q[k] = _mm512_or_si512(_mm512_and_si512(k < 2 ? ql[k % 2] : _mm512_srli_epi16(ql[k % 2], 4), m4),
                               _mm512_and_si512(top[k], m2));
}

/* Word column c of q16_a blocks 4h .. 4h + 3: wv[k][v] = w[4h + k][c], rows 8v .. 8v + 7: the quants
 * less 32 (q3_k: 4), widened, times their sub-block's scales. */
ALWAYS_INLINE void q6k_column(const int fmt, const uint8_t *g, const __m512i sc[QK_K / 16][2], int h, int c,
                              __m512i wv[4][2]) {
    __m512i u[4];
    k16_quants(fmt, g, h, c, u);
    for (int k = 0; k < 4; k++) {
        const __m512i q = _mm512_sub_epi8(u[k], _mm512_set1_epi8(fmt == K16_Q3_K ? 4 : 32));
        const __m512i *s = sc[2 * (4 * h + k) + c / 4];
        wv[k][0] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(q)), s[0]);
        wv[k][1] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(q, 1)), s[1]);
    }
}

/* The super-block at g unpacked into u, a part of the one at pf prefetched a column
 * (llmr_prefetch_part). */
ALWAYS_INLINE void q6k_unpack(const int fmt, const uint8_t *g, const uint8_t *pf, const __m512i sc[QK_K / 16][2],
                              x16_q6k_quants *u) {
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < 8; c++) {
            __m512i wv[4][2];
            q6k_column(fmt, g, sc, h, c, wv);
            llmr_prefetch_part(pf, X16_K16_BLOCK(fmt), 8 * h + c, 16);
            for (int k = 0; k < 4; k++) {
                _mm512_storeu_si512(u->w[4 * h + k][c], wv[k][0]);
                _mm512_storeu_si512(u->w[4 * h + k][c] + 32, wv[k][1]);
            }
        }
}

/* One token's running sums: lanes (r, p) of rows 0-7 and 8-15. */
typedef struct {
    __m512 acc[2];
} q6k_sums;

/* T tokens' sums += the unpacked super-block (u; d: the rows' d, each to its two lanes, rows 0-7
 * and 8-15) against their activation blocks ys[i][0 .. 8). */
ALWAYS_INLINE void q6k_tile(const int T, const x16_q6k_quants *u, const __m512 *d, const block_q16_a *const *ys,
                            q6k_sums *sums) {
    __m512 acc[Q6K_TILE][2];
    for (int i = 0; i < T; i++)
        for (int v = 0; v < 2; v++)
            acc[i][v] = sums[i].acc[v];
    for (int j = 0; j < QK_K / QK_Q16_A; j++) {
        __m512i isum[Q6K_TILE][2];
        for (int i = 0; i < T; i++)
            isum[i][0] = isum[i][1] = _mm512_setzero_si512();
        for (int c = 0; c < 8; c++) {
            const __m512i w0 = _mm512_loadu_si512(u->w[j][c]), w1 = _mm512_loadu_si512(u->w[j][c] + 32);
            for (int i = 0; i < T; i++) {
                const __m512i a = act4(ys[i] + j, c);
                isum[i][0] = madd(isum[i][0], w0, a);
                isum[i][1] = madd(isum[i][1], w1, a);
            }
        }
        for (int i = 0; i < T; i++) {
            const __m512 da = _mm512_set1_ps(ys[i][j].d);
            for (int v = 0; v < 2; v++)
                acc[i][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][v]), _mm512_mul_ps(d[v], da), acc[i][v]);
        }
    }
    for (int i = 0; i < T; i++)
        for (int v = 0; v < 2; v++)
            sums[i].acc[v] = acc[i][v];
}

/* One token alone (decode): q6k_tile's operations on the weights as they are unpacked, without
 * storing them (the same bits: the same exact int32 sums, the same FMAs in the same order). */
ALWAYS_INLINE void q6k_one(const int fmt, const uint8_t *g, const uint8_t *pf, const __m512i sc[QK_K / 16][2], const __m512 *d,
                           const block_q16_a *y, q6k_sums *sums) {
    __m512 acc[2] = {sums->acc[0], sums->acc[1]};
    for (int h = 0; h < 2; h++) {
        __m512i isum[4][2];
        for (int k = 0; k < 4; k++)
            isum[k][0] = isum[k][1] = _mm512_setzero_si512();
        for (int c = 0; c < 8; c++) {
            __m512i wv[4][2];
            q6k_column(fmt, g, sc, h, c, wv);
            llmr_prefetch_part(pf, X16_K16_BLOCK(fmt), 8 * h + c, 16);
            for (int k = 0; k < 4; k++) {
                const __m512i a = act4(y + 4 * h + k, c);
                isum[k][0] = madd(isum[k][0], wv[k][0], a);
                isum[k][1] = madd(isum[k][1], wv[k][1], a);
            }
        }
        for (int k = 0; k < 4; k++) {
            const __m512 da = _mm512_set1_ps(y[4 * h + k].d);
            for (int v = 0; v < 2; v++)
                acc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k][v]), _mm512_mul_ps(d[v], da), acc[v]);
        }
    }
    sums->acc[0] = acc[0];
    sums->acc[1] = acc[1];
}

/* Up to X16_Q6K_TOKENS tokens: every super-block (q6_k's or q3_k's: fmt) against every token,
 * tile by tile. */
ALWAYS_INLINE void gemm_tokens(const int fmt, int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                               const uint8_t *a, size_t a_stride) {
    q6k_sums sums[X16_Q6K_TOKENS];
    x16_q6k_quants u;
    const __m512i pair_lo = _mm512_loadu_si512(PAIR_IDX[0]), pair_hi = _mm512_loadu_si512(PAIR_IDX[1]);
    for (int64_t i = 0; i < t; i++)
        sums[i].acc[0] = sums[i].acc[1] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const size_t block = fmt == K16_Q3_K ? X16_Q3K_BLOCK : X16_Q6K_BLOCK;
        const uint8_t *g = w + b * block;
        const uint8_t *pf = llmr_prefetch_block(g, block);
        __m512i sc[QK_K / 16][2];
        uint8_t q3_words[4 * 64];
        if (fmt == K16_Q3_K)
            x16_q3k_scale_words(g, q3_words);
        q6k_scales(fmt == K16_Q3_K ? q3_words : g + X16_Q6K_SCALES, sc);
        const __m512 d16 = f16x16(g);
        const __m512 d[2] = {_mm512_permutexvar_ps(pair_lo, d16), _mm512_permutexvar_ps(pair_hi, d16)};
        if (t == 1) {
            q6k_one(fmt, g, pf, sc, d, (const block_q16_a *)a + b * (QK_K / QK_Q16_A), sums);
            continue;
        }
        q6k_unpack(fmt, g, pf, sc, &u);
        for (int64_t ti = 0; ti < t; ti += Q6K_TILE) {
            const block_q16_a *ys[Q6K_TILE];
            const int n = t - ti < Q6K_TILE ? (int)(t - ti) : Q6K_TILE;
            for (int i = 0; i < n; i++)
                ys[i] = (const block_q16_a *)(a + (ti + i) * a_stride) + b * (QK_K / QK_Q16_A);
            if (n == Q6K_TILE)
                q6k_tile(Q6K_TILE, &u, d, ys, sums + ti);
            else
                for (int i = 0; i < n; i++)
                    q6k_tile(1, &u, d, ys + i, sums + ti + i);
        }
    }
    const __m512i even = _mm512_loadu_si512(EVEN_IDX), odd = _mm512_loadu_si512(ODD_IDX);
    for (int64_t i = 0; i < t; i++)
        _mm512_storeu_ps(out + i * out_stride, _mm512_add_ps(_mm512_permutex2var_ps(sums[i].acc[0], even, sums[i].acc[1]),
                                                             _mm512_permutex2var_ps(sums[i].acc[0], odd, sums[i].acc[1])));
}

ALWAYS_INLINE void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                        size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += X16_Q6K_TOKENS)
        gemm_tokens(fmt, k / QK_K, t - t0 < X16_Q6K_TOKENS ? t - t0 : X16_Q6K_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}

X16_K16_KERNEL(q6_K, K16_Q6_K, q16_a, avx512)
X16_K16_KERNEL(q3_K, K16_Q3_K, q16_a, avx512)
