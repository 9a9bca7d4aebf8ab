/* AVX-512 VNNI q6_k, q3_k and q2_k X16 kernels: 16 weight rows against 1..t tokens of q16_b
 * activations (gemm_x16_q16b_avx512vnni.h says why bytes; gemm_x16_q6_k.h, where the words lie).
 *
 * Super-blocks outermost: each one's rows' d sc (one lane per row, for its 16 sub-blocks) are
 * made once for up to Q16B_TOKENS tokens, whose running sums wait in memory between
 * super-blocks. A word column c of q16_a blocks 4h .. 4h + 3 is four vectors of quants q, 16
 * rows x 4, as bytes (q6_k: 0 .. 63, the low nibble of an ql word and two bits of the qh word;
 * q3_k: 0 .. 7, two bits of the qs word and one of the hmask word; q2_k: 0 .. 3, two bits of the
 * qs word); q16b_madd sums them against the activation blocks into int32 lanes, one per row,
 * exact. Columns 0-3 of a block are its first 16-element sub-block and 4-7 its second, each with
 * its own scale: per sub-block, one FMA of the sum with the rows' d sc times the block's da, and
 * one of an offset scale with s16 (the block's d times the sum of its 16 activations) into the
 * offsets, taken off at the end: q6_k's and q3_k's offset scale is d sc, times 32 (4) at the end,
 * q - 32 (q - 4) being the weight; q2_k's is its rows' dmin m. With more tokens than a tile, the
 * quants are unpacked once per super-block into q6k_quants (4 KiB, in L1) and the tiles read them
 * there; the integers are the same, so a token's result is the same bits whatever t.
 *
 * Error against float64: a sum |P| <= 16 * 63 * 32767 may pass 2^24 (1 rounding to float); a
 * term c P (c = fl(d sc da): 1 rounding, d sc exact) meets 2 nb FMAs in its lane (nb = k / 32)
 * and the subtraction; an offset term (s16: 1 rounding) the same (the 32 is exact). The offsets
 * are as large as 32 / |q - 32| (q3_k: 4 / |q - 4|) times their terms' share of M: within about
 * (2 nb + 3) u M for the weights q6_k and q3_k make, X16_DOT_BOUND(nb) = (2 nb + 4) u M
 * (tests/test_kernels.py); q2_k's mins are terms of M themselves. */
#include "gemm_x16_q16b_avx512vnni.h"
#include "gemm_x16_q6_k.h"

/* Tokens per tile: 8 int32 sums a token (a column meets four activation blocks, two planes
 * each), 16 registers for two tokens, beside the column's quants. */
#define Q6K_TILE 2

/* The rows' d sc_s (one lane per row) of the super-block's 16 sub-blocks: d at g, the int8 scales
 * in the four words at sw (q6_k's own; q3_k's made by x16_q3k_scale_words). */
ALWAYS_INLINE void q6k_scales(const uint8_t *g, const uint8_t *sw, __m512 dsc[QK_K / 16]) {
    const __m512 d = q16b_f16x16(g);
    for (int w = 0; w < 4; w++) {
        const __m512i word = _mm512_loadu_si512(sw + 64 * w); /* scales 4w .. 4w + 3 */
        for (int i = 0; i < 4; i++) /* byte i, sign-extended */
            dsc[4 * w + i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(word, 24 - 8 * i), 24)));
    }
}

/* Word column c of q16_a blocks 4h .. 4h + 3: q[k] the quants (0 .. 63) of block 4h + k, 16 rows x 4. */
ALWAYS_INLINE void q6k_column(const uint8_t *g, int h, int c, __m512i q[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m6 = _mm512_set1_epi8(0x3F);
    const __m512i qh = _mm512_loadu_si512(g + X16_Q6K_QH + (8 * h + c) * 64);
    const __m512i ql0 = _mm512_loadu_si512(g + X16_Q6K_QL + (16 * h + c) * 64),
                  ql1 = _mm512_loadu_si512(g + X16_Q6K_QL + (16 * h + 8 + c) * 64);
    /* (low & 0x0F) | (top & 0xF0) by one ternary-logic select, then the top two bits cleared */
#define Q6K_JOIN(low, top) _mm512_and_si512(_mm512_ternarylogic_epi32(m4, low, top, 0xCA), m6)
    q[0] = Q6K_JOIN(ql0, _mm512_slli_epi16(qh, 4));
    q[1] = Q6K_JOIN(ql1, _mm512_slli_epi16(qh, 2));
    q[2] = Q6K_JOIN(_mm512_srli_epi16(ql0, 4), qh);
    q[3] = Q6K_JOIN(_mm512_srli_epi16(ql1, 4), _mm512_srli_epi16(qh, 2));
#undef Q6K_JOIN
}

/* q3_k's: q[k] the quants (0 .. 7) of block 4h + k in word column c (gemm_x16_q6_k.h): the two
 * bits of the qs word at 2k and the hmask word's bit 4h + k moved to bit 2 (16-bit shifts of at
 * most 5 keep it within its byte), joined by one ternary-logic select. */
ALWAYS_INLINE void q3k_column(const uint8_t *g, int h, int c, __m512i q[4]) {
    const __m512i m2 = _mm512_set1_epi8(0x03), m3 = _mm512_set1_epi8(0x07);
    const __m512i qs = _mm512_loadu_si512(g + X16_Q3K_QS + (8 * h + c) * 64);
    const __m512i hm = _mm512_loadu_si512(g + X16_Q3K_HMASK + c * 64);
    for (int k = 0; k < 4; k++) {
        const int bit = 4 * h + k;
        const __m512i third = bit > 2 ? _mm512_srli_epi16(hm, bit - 2) : bit == 2 ? hm : _mm512_slli_epi16(hm, 2 - bit);
        const __m512i low = k ? _mm512_srli_epi16(qs, 2 * k) : qs;
        q[k] = _mm512_and_si512(_mm512_ternarylogic_epi32(m2, low, third, 0xCA), m3);
    }
}

/* q2_k's: q[k] the quants (0 .. 3) of block 4h + k in word column c: bits 2k, 2k + 1 of the qs word. */
ALWAYS_INLINE void q2k_column(const uint8_t *g, int h, int c, __m512i q[4]) {
    const __m512i qs = _mm512_loadu_si512(g + X16_Q2K_QS + (8 * h + c) * 64);
    for (int k = 0; k < 4; k++)
        q[k] = _mm512_and_si512(k ? _mm512_srli_epi16(qs, 2 * k) : qs, _mm512_set1_epi8(0x03));
}

/* q2_k's rows' d sc_s and dmin m_s (one lane per row) of the super-block's 16 sub-blocks. */
ALWAYS_INLINE void q2k_scales(const uint8_t *g, __m512 dsc[QK_K / 16], __m512 dmm[QK_K / 16]) {
    const __m512 d = q16b_f16x16(g), dmin = q16b_f16x16(g + X16_Q2K_DMIN);
    const __m512i nibble = _mm512_set1_epi32(0x0F);
    for (int w = 0; w < 4; w++) {
        const __m512i word = _mm512_loadu_si512(g + X16_Q2K_SCALES + 64 * w); /* sub-blocks 4w .. 4w + 3 */
        for (int i = 0; i < 4; i++) {
            dsc[4 * w + i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(word, 8 * i), nibble)));
            dmm[4 * w + i] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(word, 8 * i + 4), nibble)));
        }
    }
}

/* Word column c of q16_a blocks 4h .. 4h + 3 of format fmt: q[k] the quants of block 4h + k. */
ALWAYS_INLINE void k16_column(const int fmt, const uint8_t *g, int h, int c, __m512i q[4]) {
    if (fmt == K16_Q2_K)
        q2k_column(g, h, c, q);
    else if (fmt == K16_Q3_K)
        q3k_column(g, h, c, q);
    else
        q6k_column(g, h, c, q);
}

/* A super-block's quants, unpacked once for more tokens than a tile: [h][c][k]. */
typedef struct {
    __m512i q[2][8][4];
} q6k_quants;

/* T tokens' sums += the super-block (raw at g, or unpacked in u where u is not NULL) against
 * their activation blocks ys[i][0 .. 8): the products times dsc, the offsets times off (q6_k's and
 * q3_k's d sc, the bias taken at the end; q2_k's dmin m). A part of the super-block at pf is
 * prefetched a column (llmr_prefetch_part). */
ALWAYS_INLINE void q6k_tile(const int T, const int fmt, const uint8_t *g, const uint8_t *pf, const q6k_quants *u,
                            const __m512 dsc[QK_K / 16], const __m512 off[QK_K / 16], const block_q16_b *const *ys,
                            q16b_sums *sums) {
    for (int h = 0; h < 2; h++)
        for (int half = 0; half < 2; half++) { /* columns 4 half .. 4 half + 3: each block's sub-block `half` */
            __m512i lo[Q6K_TILE][4], hi[Q6K_TILE][4]; /* [token][block 4h + k] */
            for (int i = 0; i < T; i++)
                for (int k = 0; k < 4; k++)
                    lo[i][k] = hi[i][k] = _mm512_setzero_si512();
#pragma GCC unroll 4 /* all unrolled: the sums stay in their registers (a loop moved them about: 33 -> 37 GB/s from L2) */
            for (int cc = 0; cc < 4; cc++) {
                const int c = 4 * half + cc;
                __m512i q[4];
                if (u)
                    for (int k = 0; k < 4; k++)
                        q[k] = u->q[h][c][k];
                else
                    k16_column(fmt, g, h, c, q);
                llmr_prefetch_part(pf, X16_K16_BLOCK(fmt), 8 * h + c, 16);
                for (int i = 0; i < T; i++)
                    for (int k = 0; k < 4; k++)
                        q16b_madd(&lo[i][k], &hi[i][k], q[k], ys[i] + 4 * h + k, 4 * c);
            }
            for (int i = 0; i < T; i++)
                for (int k = 0; k < 4; k++) {
                    const block_q16_b *y = ys[i] + 4 * h + k;
                    const int s = 2 * (4 * h + k) + half;
                    q16b_accumulate(&sums[i], lo[i][k], hi[i][k], dsc[s], y->d, off[s], y->s16[half]);
                }
        }
}

/* Up to Q16B_TOKENS tokens: every super-block (of format fmt) against every token, tile by tile. */
ALWAYS_INLINE void gemm_tokens(const int fmt, int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                               const uint8_t *a, size_t a_stride) {
    q16b_sums sums[Q16B_TOKENS];
    q6k_quants u;
    for (int64_t i = 0; i < t; i++)
        sums[i].acc = sums[i].off = _mm512_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_K16_BLOCK(fmt);
        const uint8_t *pf = llmr_prefetch_block(g, X16_K16_BLOCK(fmt));
        __m512 dsc[QK_K / 16], dmm[QK_K / 16];
        X16_K16_SCALES(fmt, g, dsc, dmm);
        const __m512 *off = fmt == K16_Q2_K ? dmm : dsc;
        const block_q16_b *ys[Q6K_TILE];
        if (t <= Q6K_TILE) { /* decode: the quants straight from the weights */
            q16b_token_blocks(a, a_stride, 0, (int)t, b, ys);
            if (t == 2)
                q6k_tile(2, fmt, g, pf, NULL, dsc, off, ys, sums);
            else
                q6k_tile(1, fmt, g, pf, NULL, dsc, off, ys, sums);
            continue;
        }
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < 8; c++) {
                k16_column(fmt, g, h, c, u.q[h][c]);
                llmr_prefetch_part(pf, X16_K16_BLOCK(fmt), 8 * h + c, 16);
            }
        for (int64_t ti = 0; ti < t; ti += Q6K_TILE) {
            const int n = t - ti < Q6K_TILE ? (int)(t - ti) : Q6K_TILE;
            q16b_token_blocks(a, a_stride, ti, n, b, ys);
            if (n == 2)
                q6k_tile(2, fmt, g, NULL, &u, dsc, off, ys, sums + ti);
            else
                q6k_tile(1, fmt, g, NULL, &u, dsc, off, ys, sums + ti);
        }
    }
    /* the offsets' 32 (q3_k: 4; q2_k: 1), taken once: scaling by a power of two commutes with each
     * rounding */
    const __m512 bias = _mm512_set1_ps(X16_K16_BIAS(fmt));
    for (int64_t i = 0; i < t; i++)
        _mm512_storeu_ps(out + i * out_stride, _mm512_fnmadd_ps(sums[i].off, bias, sums[i].acc));
}

ALWAYS_INLINE void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                        size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q16B_TOKENS)
        gemm_tokens(fmt, k / QK_K, t - t0 < Q16B_TOKENS ? t - t0 : Q16B_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}

X16_K16_KERNEL(q6_K, K16_Q6_K, q16_b, avx512vnni)
X16_K16_KERNEL(q3_K, K16_Q3_K, q16_b, avx512vnni)
X16_K16_KERNEL(q2_K, K16_Q2_K, q16_b, avx512vnni)
