/* AVX2 (+FMA, F16C) q4_k and q5_k X16 kernels: 16 weight rows against 1..t tokens of q16_b
 * activations, the byte-plane arithmetic of gemm_x16_q4_k_avx512vnni.c without VNNI.
 *
 * Why bytes here too: the int16 kernels these replaced widened every quant byte and made 16
 * products per vpmaddwd; q4_k decode ran at 17 GB/s from L2 on one Zen 4 core, below what the
 * core reads from memory (1B-shape Q4_K_M decode 0.61 of llama.cpp's AVX2 build). vpmaddubsw
 * multiplies 32 u8 x s8 pairs and adds neighbours into int16: a quant word's 32 bytes (8 rows x
 * 4 quants) against a broadcast of 4 activation bytes are two pair sums a row, which vpmaddwd
 * later folds into one int32 lane per row. q16_b's two planes (lo unsigned, hi signed; the value
 * lo + 256 hi) take one each, the quants being the signed operand of the first (they are < 32)
 * and the unsigned one of the second. The pair sums stay in int16 for G words (a group): |lo
 * pair| <= 2 * 255 * 15 = 7650 for q4_k (G = 4: 30600), 2 * 255 * 31 = 15810 for q5_k (G = 2);
 * |hi pair| <= 2 * 128 * 31 less still, so nothing saturates or wraps. A group ends in one
 * vpmaddwd of each plane, with ones and with 256, into the sub-block's int32 sum, exact.
 *
 * Super-blocks outermost: each one's rows' sc and m are unpacked once (floats, per half of 8
 * rows) for up to Q16B_TOKENS tokens, whose running sums wait in memory; the tokens meet it in
 * tiles of up to Q4K_TILE, each half of the rows in turn. Per sub-block one FMA of the sum with
 * sc times the block's da, and one of m with its s, into the super-block's sums; those go into
 * the running sums times the rows' d and dmin, the offsets taken off at the end (as in the VNNI
 * kernel, which says what that saves). A lane's operations and their order do not depend on t
 * or the tile, so a token's result is the same bits whatever t. Error against float64: as the
 * VNNI kernel's, within (nb / 8 + 11) u M, inside X16_DOT_BOUND(nb). */
#include "gemm_x16_q16b_avx2.h"
#include "gemm_x16.h"

/* Tokens per tile: three registers a token (the sub-block's int32 sum and the group's two
 * int16 ones) beside the quant word, the broadcasts and the constants. */
#define Q4K_TILE 4

/* The rows' sc (sc_f[j][h]) and m (m_f[j][h]) of sub-block j as floats, half h (rows 8h .. 8h + 7):
 * q4_k's 6-bit scales and mins (x16_q4k_scales in gemm_x16.h, the same bytes) unpacked on whole
 * words, each lane a row's three packed words. */
ALWAYS_INLINE void q4k_scales(const uint8_t *g, __m256 sc_f[8][2], __m256 m_f[8][2]) {
    const __m256i m6 = _mm256_set1_epi32(0x3f3f3f3f), m4 = _mm256_set1_epi32(0x0f0f0f0f),
                  top2 = _mm256_set1_epi32(0x30303030), byte = _mm256_set1_epi32(0xFF);
    for (int h = 0; h < 2; h++) {
        const uint8_t *s = g + X16_Q4K_SCALES + 32 * h;
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)s), w1 = _mm256_loadu_si256((const __m256i *)(s + 64)),
                      w2 = _mm256_loadu_si256((const __m256i *)(s + 128));
        const __m256i sc[2] = {_mm256_and_si256(w0, m6),
                               _mm256_or_si256(_mm256_and_si256(w2, m4), _mm256_and_si256(_mm256_srli_epi32(w0, 2), top2))};
        const __m256i mn[2] = {_mm256_and_si256(w1, m6),
                               _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi32(w1, 2), top2))};
        for (int j = 0; j < 8; j++) {
            const __m128i shift = _mm_cvtsi32_si128(8 * (j % 4));
            sc_f[j][h] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(sc[j / 4], shift), byte));
            m_f[j][h] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(mn[j / 4], shift), byte));
        }
    }
}

/* Sub-block 2p + s's quants in qs word 8p + c, half h: 8 rows x 4, as bytes (q5_k: with the fifth
 * bit, bit 2p + s of the qh word's bytes, as bit 4). */
ALWAYS_INLINE __m256i q4k_quants(const int q5, const uint8_t *g, int p, int s, int c, int h) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i word = _mm256_loadu_si256((const __m256i *)(g + (q5 ? X16_Q5K_QS : X16_Q4K_QS) + (8 * p + c) * 64 + 32 * h));
    const __m256i q = _mm256_and_si256(s ? _mm256_srli_epi16(word, 4) : word, nibble);
    if (!q5)
        return q;
    /* bit b = 2p + s of each qh byte to bit 4: a 16-bit shift keeps it within its byte */
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(g + X16_Q5K_QH + c * 64 + 32 * h));
    const int b = 2 * p + s;
    const __m256i at4 = b < 4 ? _mm256_slli_epi16(qh, 4 - b) : b == 4 ? qh : _mm256_srli_epi16(qh, b - 4);
    return _mm256_or_si256(q, _mm256_and_si256(at4, _mm256_set1_epi8(0x10)));
}

/* T tokens' sums += the super-block at g (q4_k, or q5_k where q5) against their activation
 * blocks ys[i][0 .. 8), half h of the rows. A part of the super-block at pf is prefetched a
 * sub-block (llmr_prefetch_part). */
ALWAYS_INLINE void q4k_tile(const int T, const int q5, const uint8_t *g, const uint8_t *pf, int h, const __m256 sc_f[8][2],
                            const __m256 m_f[8][2], const block_q16_b *const *ys, q16b_sums *sums) {
    const int G = q5 ? 2 : 4; /* words per int16 group (the bounds above) */
    __m256 acc[Q4K_TILE], off[Q4K_TILE]; /* the super-block's sums, before d and dmin */
    for (int i = 0; i < T; i++)
        acc[i] = off[i] = _mm256_setzero_ps();
    for (int p = 0; p < 4; p++)
        for (int s = 0; s < 2; s++) { /* sub-block j = 2p + s: nibble s of words 8p .. 8p + 7 */
            const int j = 2 * p + s;
            llmr_prefetch_part(pf, q5 ? X16_Q5K_BLOCK : X16_Q4K_BLOCK, 8 * h + j, 16);
            __m256i sum[Q4K_TILE];
            for (int i = 0; i < T; i++)
                sum[i] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int c0 = 0; c0 < 8; c0 += G) {
                __m256i lo[Q4K_TILE], hi[Q4K_TILE];
                for (int i = 0; i < T; i++)
                    lo[i] = hi[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int c = c0; c < c0 + G; c++) {
                    const __m256i q = q4k_quants(q5, g, p, s, c, h);
                    for (int i = 0; i < T; i++) {
                        const block_q16_b *y = ys[i] + j;
                        lo[i] = _mm256_add_epi16(lo[i], q16b_lo_pairs(q, y, 4 * c));
                        hi[i] = _mm256_add_epi16(hi[i], q16b_hi_pairs(q, y, 4 * c));
                    }
                }
                for (int i = 0; i < T; i++)
                    sum[i] = q16b_fold(sum[i], lo[i], hi[i]);
            }
            for (int i = 0; i < T; i++) {
                const block_q16_b *y = ys[i] + j;
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), _mm256_mul_ps(sc_f[j][h], _mm256_set1_ps(y->d)), acc[i]);
                off[i] = _mm256_fmadd_ps(m_f[j][h], _mm256_set1_ps(y->s), off[i]);
            }
        }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16 * h)));
    const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + X16_Q4K_DMIN + 16 * h)));
    for (int i = 0; i < T; i++) {
        sums[i].acc[h] = _mm256_fmadd_ps(d, acc[i], sums[i].acc[h]);
        sums[i].off[h] = _mm256_fmadd_ps(dmin, off[i], sums[i].off[h]);
    }
}

/* Up to Q16B_TOKENS tokens: every super-block against every token, tile by tile, half by half. */
ALWAYS_INLINE void gemm_tokens(const int q5, int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                               const uint8_t *a, size_t a_stride) {
    const size_t block = q5 ? X16_Q5K_BLOCK : X16_Q4K_BLOCK;
    q16b_sums sums[Q16B_TOKENS];
    for (int64_t i = 0; i < t; i++)
        sums[i].acc[0] = sums[i].acc[1] = sums[i].off[0] = sums[i].off[1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * block;
        const uint8_t *pf = llmr_prefetch_block(g, block); /* by the first tile */
        __m256 sc_f[8][2], m_f[8][2];
        q4k_scales(g, sc_f, m_f);
        for (int64_t ti = 0; ti < t; ti += Q4K_TILE) {
            const block_q16_b *ys[Q4K_TILE];
            const int n = t - ti < Q4K_TILE ? (int)(t - ti) : Q4K_TILE;
            q16b_token_blocks(a, a_stride, ti, n, b, ys);
            for (int h = 0; h < 2; h++)
                switch (n) {
                case 4: q4k_tile(4, q5, g, ti ? NULL : pf, h, sc_f, m_f, ys, sums + ti); break;
                case 3: q4k_tile(3, q5, g, ti ? NULL : pf, h, sc_f, m_f, ys, sums + ti); break;
                case 2: q4k_tile(2, q5, g, ti ? NULL : pf, h, sc_f, m_f, ys, sums + ti); break;
                default: q4k_tile(1, q5, g, ti ? NULL : pf, h, sc_f, m_f, ys, sums + ti); break;
                }
        }
    }
    for (int64_t i = 0; i < t; i++)
        for (int h = 0; h < 2; h++)
            _mm256_storeu_ps(out + i * out_stride + 8 * h, _mm256_sub_ps(sums[i].acc[h], sums[i].off[h]));
}

static void gemm(const int q5, int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                 size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q16B_TOKENS)
        gemm_tokens(q5, k / QK_K, t - t0 < Q16B_TOKENS ? t - t0 : Q16B_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}

void gemm_x16_q4_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride) {
    gemm(0, k, t, out, out_stride, w, a, a_stride);
}

void gemm_x16_q5_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride) {
    gemm(1, k, t, out, out_stride, w, a, a_stride);
}
