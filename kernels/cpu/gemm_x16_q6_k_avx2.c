/* AVX2 (+FMA, F16C) q6_k, q3_k and q2_k X16 kernels: 16 weight rows against 1..t tokens of q16_b
 * activations, the byte-plane arithmetic of gemm_x16_q6_k_avx512vnni.c on vpmaddubsw
 * (gemm_x16_q4_k_avx2.c says why bytes; gemm_x16_q6_k.h, where the words lie).
 *
 * Super-blocks outermost: each one's rows' d sc (floats, per half of 8 rows, for its 16
 * sub-blocks) are made once for up to Q16B_TOKENS tokens, whose running sums wait in memory
 * between super-blocks; the tokens meet it in tiles of up to Q6K_TILE, each half of the rows in
 * turn. q16_a block 4h + k's quants q in word column c (q6_k: 0 .. 63, a nibble of an ql word and
 * two bits of the qh word; q3_k: 0 .. 7, two bits of the qs word and one of the hmask word; q2_k:
 * 0 .. 3, two bits of the qs word) are a 32-byte vector, 8 rows x 4 (for more than one token made
 * once per super-block into q6k_unpacked, 4 KiB, in L1); vpmaddubsw pairs them with 4 activation
 * bytes of a plane. q6_k: a lo pair sum reaches 2 * 255 * 63 = 32130, so each is folded into
 * int32 at once; a hi one |2 * 128 * 63| = 16128, two of them summed in int16 first. q3_k, q2_k
 * (quants below 8): a sub-block's four columns of pair sums in int16 (|lo| <= 4 * 2 * 255 * 7),
 * then one fold. Columns 0-3 of a block are its first 16-element sub-block and 4-7 its second,
 * each with its own scale: per sub-block one FMA of the exact int32 sum with the rows' d sc times
 * the block's da, and one of an offset scale with s16 (the block's d times the sum of its 16
 * activations) into the offsets, taken off at the end (q6_k's and q3_k's offset scale is d sc,
 * times 32 (4) at the end, q - 32 (q - 4) being the weight; q2_k's is dmin m). A lane's
 * operations and their order do not depend on t or the tile, so a token's result is the same
 * bits whatever t.
 *
 * Error against float64: as the VNNI kernel's, within about (2 nb + 3) u M, inside
 * X16_DOT_BOUND(nb) = (2 nb + 4) u M (tests/test_kernels.py). */
#include "gemm_x16_q16b_avx2.h"
#include "gemm_x16_q6_k.h"

/* Tokens per tile: two registers a token (the block's int32 sum, the hi pair sums) beside the
 * quants and the broadcasts; 64 tokens of a 2048 x 8192 matrix took 27.2 ms in tiles of 2, 27.0
 * of 3, 27.6 of 4 (one Zen 4 core). */
#define Q6K_TILE 2

/* The rows' d sc_s of the super-block's 16 sub-blocks, half h of the rows (one lane per row): d at
 * g, the int8 scales in the four words at sw (q6_k's own; q3_k's made by x16_q3k_scale_words). */
ALWAYS_INLINE void q6k_scales(const uint8_t *g, const uint8_t *sw, __m256 dsc[QK_K / 16][2]) {
    for (int h = 0; h < 2; h++) {
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16 * h)));
        for (int w = 0; w < 4; w++) {
            const __m256i word = _mm256_loadu_si256((const __m256i *)(sw + 64 * w + 32 * h));
            for (int i = 0; i < 4; i++) /* byte i of each row's word: scale 4w + i, sign-extended */
                dsc[4 * w + i][h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_srai_epi32(
                                                         _mm256_sll_epi32(word, _mm_cvtsi32_si128(24 - 8 * i)), 24)));
        }
    }
}

/* The quants of q16_a block 4hb + k in word column c, rows 8 rh .. 8 rh + 7, as bytes (0 .. 63). */
ALWAYS_INLINE __m256i q6k_quants(const uint8_t *g, int hb, int k, int c, int rh) {
    const __m256i ql = _mm256_loadu_si256((const __m256i *)(g + X16_Q6K_QL + (16 * hb + 8 * (k % 2) + c) * 64 + 32 * rh));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(g + X16_Q6K_QH + (8 * hb + c) * 64 + 32 * rh));
    const __m256i low = _mm256_and_si256(k < 2 ? ql : _mm256_srli_epi16(ql, 4), _mm256_set1_epi8(0x0F));
    /* bits 2k, 2k + 1 of each qh byte to bits 4, 5: a 16-bit shift keeps them within their byte */
    const __m256i top = k == 0 ? _mm256_slli_epi16(qh, 4) : k == 1 ? _mm256_slli_epi16(qh, 2)
                        : k == 2 ? qh : _mm256_srli_epi16(qh, 2);
    return _mm256_or_si256(low, _mm256_and_si256(top, _mm256_set1_epi8(0x30)));
}

/* q3_k's: the quants of q16_a block 4hb + k in word column c, rows 8 rh .. 8 rh + 7, as bytes
 * (0 .. 7): bits 2k, 2k + 1 of the qs word and bit 4hb + k of the hmask word, at bit 2 (16-bit
 * shifts of at most 5 keep it within its byte). */
ALWAYS_INLINE __m256i q3k_quants(const uint8_t *g, int hb, int k, int c, int rh) {
    const __m256i qs = _mm256_loadu_si256((const __m256i *)(g + X16_Q3K_QS + (8 * hb + c) * 64 + 32 * rh));
    const __m256i hm = _mm256_loadu_si256((const __m256i *)(g + X16_Q3K_HMASK + c * 64 + 32 * rh));
    const int bit = 4 * hb + k;
    const __m256i third = bit > 2 ? _mm256_srli_epi16(hm, bit - 2) : bit == 2 ? hm : _mm256_slli_epi16(hm, 2 - bit);
    const __m256i low = k ? _mm256_srli_epi16(qs, 2 * k) : qs;
    return _mm256_or_si256(_mm256_and_si256(low, _mm256_set1_epi8(0x03)), _mm256_and_si256(third, _mm256_set1_epi8(0x04)));
}

/* q2_k's: the quants (0 .. 3) of q16_a block 4hb + k in word column c, rows 8 rh .. 8 rh + 7: bits
 * 2k, 2k + 1 of the qs word. */
ALWAYS_INLINE __m256i q2k_quants(const uint8_t *g, int hb, int k, int c, int rh) {
    const __m256i qs = _mm256_loadu_si256((const __m256i *)(g + X16_Q2K_QS + (8 * hb + c) * 64 + 32 * rh));
    return _mm256_and_si256(k ? _mm256_srli_epi16(qs, 2 * k) : qs, _mm256_set1_epi8(0x03));
}

/* The quants of format fmt. */
ALWAYS_INLINE __m256i k16_quants(const int fmt, const uint8_t *g, int hb, int k, int c, int rh) {
    return fmt == K16_Q2_K ? q2k_quants(g, hb, k, c, rh) : fmt == K16_Q3_K ? q3k_quants(g, hb, k, c, rh)
                                                         : q6k_quants(g, hb, k, c, rh);
}

/* q2_k's rows' d sc_s and dmin m_s of the super-block's 16 sub-blocks, half h of the rows. */
ALWAYS_INLINE void q2k_scales(const uint8_t *g, __m256 dsc[QK_K / 16][2], __m256 dmm[QK_K / 16][2]) {
    const __m256i nibble = _mm256_set1_epi32(0x0F);
    for (int h = 0; h < 2; h++) {
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16 * h)));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + X16_Q2K_DMIN + 16 * h)));
        for (int w = 0; w < 4; w++) {
            const __m256i word = _mm256_loadu_si256((const __m256i *)(g + X16_Q2K_SCALES + 64 * w + 32 * h));
            for (int i = 0; i < 4; i++) { /* byte i of each row's word: sub-block 4w + i's sc | m << 4 */
                const __m256i sc = _mm256_and_si256(_mm256_srl_epi32(word, _mm_cvtsi32_si128(8 * i)), nibble);
                const __m256i m = _mm256_and_si256(_mm256_srl_epi32(word, _mm_cvtsi32_si128(8 * i + 4)), nibble);
                dsc[4 * w + i][h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc));
                dmm[4 * w + i][h] = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(m));
            }
        }
    }
}

/* A super-block's quants, unpacked once for more than one token: [hb][k][c][rh]. */
typedef struct {
    __m256i q[2][4][8][2];
} q6k_unpacked;

/* T tokens' sums += the super-block (raw at g, or unpacked in u where u is not NULL) against their
 * activation blocks ys[i][0 .. 8), half rh of the rows: the products times dsc, the offsets times
 * off (q6_k's and q3_k's d sc, the bias taken at the end; q2_k's dmin m). A part of the
 * super-block at pf is prefetched a sub-block (llmr_prefetch_part). */
ALWAYS_INLINE void q6k_tile(const int T, const int fmt, const uint8_t *g, const uint8_t *pf, const q6k_unpacked *u, int rh,
                            const __m256 dsc[QK_K / 16][2], const __m256 off_scale[QK_K / 16][2],
                            const block_q16_b *const *ys, q16b_sums *sums) {
    /* One token's running sums stay in registers for the super-block; more tokens' in memory */
    __m256 acc = sums[0].acc[rh], off = sums[0].off[rh];
    for (int hb = 0; hb < 2; hb++)
        for (int k = 0; k < 4; k++) /* q16_a block 4hb + k */
#pragma GCC unroll 2
            for (int half = 0; half < 2; half++) { /* its 16-element sub-block: columns 4 half .. 4 half + 3 */
                llmr_prefetch_part(pf, X16_K16_BLOCK(fmt), 16 * rh + 8 * hb + 2 * k + half, 32);
                __m256i sum[Q6K_TILE];
                for (int i = 0; i < T; i++)
                    sum[i] = _mm256_setzero_si256();
                if (fmt != K16_Q6_K) { /* quants < 8: |pair| <= 2 * 255 * 7; a sub-block's 4 columns in int16 */
                    __m256i lo[Q6K_TILE], hi[Q6K_TILE];
                    for (int i = 0; i < T; i++)
                        lo[i] = hi[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
                    for (int c = 4 * half; c < 4 * half + 4; c++) {
                        const __m256i q = u ? u->q[hb][k][c][rh] : k16_quants(fmt, g, hb, k, c, rh);
                        for (int i = 0; i < T; i++) {
                            const block_q16_b *y = ys[i] + 4 * hb + k;
                            lo[i] = _mm256_add_epi16(lo[i], q16b_lo_pairs(q, y, 4 * c));
                            hi[i] = _mm256_add_epi16(hi[i], q16b_hi_pairs(q, y, 4 * c));
                        }
                    }
                    for (int i = 0; i < T; i++)
                        sum[i] = q16b_fold(sum[i], lo[i], hi[i]);
                } else { /* q6_k: |lo pair| <= 2 * 255 * 63, folded at once; two hi pairs in int16 */
#pragma GCC unroll 2
                    for (int c0 = 4 * half; c0 < 4 * half + 4; c0 += 2) {
                        __m256i hi[Q6K_TILE];
                        for (int i = 0; i < T; i++)
                            hi[i] = _mm256_setzero_si256();
#pragma GCC unroll 2
                        for (int c = c0; c < c0 + 2; c++) {
                            const __m256i q = u ? u->q[hb][k][c][rh] : q6k_quants(g, hb, k, c, rh);
                            for (int i = 0; i < T; i++) {
                                const block_q16_b *y = ys[i] + 4 * hb + k;
                                sum[i] = q16b_fold_lo(sum[i], q16b_lo_pairs(q, y, 4 * c));
                                hi[i] = _mm256_add_epi16(hi[i], q16b_hi_pairs(q, y, 4 * c));
                            }
                        }
                        for (int i = 0; i < T; i++)
                            sum[i] = q16b_fold_hi(sum[i], hi[i]);
                    }
                }
                const __m256 s = dsc[2 * (4 * hb + k) + half][rh], os = off_scale[2 * (4 * hb + k) + half][rh];
                for (int i = 0; i < T; i++) {
                    const block_q16_b *y = ys[i] + 4 * hb + k;
                    __m256 *a = T == 1 ? &acc : &sums[i].acc[rh], *o = T == 1 ? &off : &sums[i].off[rh];
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), _mm256_mul_ps(s, _mm256_set1_ps(y->d)), *a);
                    *o = _mm256_fmadd_ps(os, _mm256_set1_ps(y->s16[half]), *o);
                }
            }
    if (T == 1) {
        sums[0].acc[rh] = acc;
        sums[0].off[rh] = off;
    }
}

/* Up to Q16B_TOKENS tokens: every super-block (of format fmt) against every token, tile by tile,
 * half by half. */
ALWAYS_INLINE void gemm_tokens(const int fmt, int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                               const uint8_t *a, size_t a_stride) {
    q16b_sums sums[Q16B_TOKENS];
    q6k_unpacked u;
    for (int64_t i = 0; i < t; i++)
        sums[i].acc[0] = sums[i].acc[1] = sums[i].off[0] = sums[i].off[1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_K16_BLOCK(fmt);
        const uint8_t *pf = llmr_prefetch_block(g, X16_K16_BLOCK(fmt));
        __m256 dsc[QK_K / 16][2], dmm[QK_K / 16][2];
        X16_K16_SCALES(fmt, g, dsc, dmm);
        const __m256(*off)[2] = fmt == K16_Q2_K ? dmm : dsc;
        if (t == 1) { /* decode: the quants straight from the weights */
            const block_q16_b *y;
            q16b_token_blocks(a, a_stride, 0, 1, b, &y);
            q6k_tile(1, fmt, g, pf, NULL, 0, dsc, off, &y, sums);
            q6k_tile(1, fmt, g, pf, NULL, 1, dsc, off, &y, sums);
            continue;
        }
        for (int hb = 0; hb < 2; hb++)
            for (int k = 0; k < 4; k++)
                for (int c = 0; c < 8; c++) {
                    llmr_prefetch_part(pf, X16_K16_BLOCK(fmt), 32 * hb + 8 * k + c, 64);
                    for (int rh = 0; rh < 2; rh++)
                        u.q[hb][k][c][rh] = k16_quants(fmt, g, hb, k, c, rh);
                }
        for (int64_t ti = 0; ti < t; ti += Q6K_TILE) {
            const block_q16_b *ys[Q6K_TILE];
            const int n = t - ti < Q6K_TILE ? (int)(t - ti) : Q6K_TILE;
            q16b_token_blocks(a, a_stride, ti, n, b, ys);
            for (int rh = 0; rh < 2; rh++)
                switch (n) {
                case 2: q6k_tile(2, fmt, g, NULL, &u, rh, dsc, off, ys, sums + ti); break;
                default: q6k_tile(1, fmt, g, NULL, &u, rh, dsc, off, ys, sums + ti); break;
                }
        }
    }
    /* the offsets' 32 (q3_k: 4; q2_k: 1), taken once: scaling by a power of two commutes with each
     * rounding */
    const __m256 bias = _mm256_set1_ps(X16_K16_BIAS(fmt));
    for (int64_t i = 0; i < t; i++)
        for (int rh = 0; rh < 2; rh++)
            _mm256_storeu_ps(out + i * out_stride + 8 * rh, _mm256_fnmadd_ps(sums[i].off[rh], bias, sums[i].acc[rh]));
}

ALWAYS_INLINE void gemm(const int fmt, int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                        size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q16B_TOKENS)
        gemm_tokens(fmt, k / QK_K, t - t0 < Q16B_TOKENS ? t - t0 : Q16B_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}

X16_K16_KERNEL(q6_K, K16_Q6_K, q16_b, avx2)
X16_K16_KERNEL(q3_K, K16_Q3_K, q16_b, avx2)
X16_K16_KERNEL(q2_K, K16_Q2_K, q16_b, avx2)
