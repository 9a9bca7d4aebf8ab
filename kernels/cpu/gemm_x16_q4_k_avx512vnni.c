/* AVX-512 VNNI q4_k and q5_k X16 kernels: 16 weight rows against 1..t tokens of q16_b activations
 * (gemm_x16_q16b_avx512vnni.h says why bytes). Decode and prefill are one code path.
 *
 * Super-blocks outermost: each one's 16 rows' sub-block scales are unpacked once (sc and m as
 * floats, one lane per row; q5_k's lie as q4_k's) for up to Q16B_TOKENS tokens, whose
 * running sums wait in memory between super-blocks; the tokens meet it in tiles of up to
 * Q4K_TILE. Per pair p of sub-blocks (2p: the low nibbles of qs words 8p .. 8p + 7, 2p + 1: their
 * high nibbles), a qs word's 64 bytes masked (and shifted) are the two sub-blocks' quants, 16
 * rows x 4, as bytes; q5_k adds each quant's fifth bit (bits 2p and 2p + 1 of qh word c's bytes)
 * as bit 4 by one bit select. q16b_madd sums them against activation blocks 2p and 2p + 1 into
 * int32 lanes, one per row, exact (|sum| <= 32 * 31 * 32767 < 2^31; converted to float with at
 * most one rounding, none for q4_k's < 2^24). Per sub-block one FMA with the rows' sc times
 * the block's da into the super-block's sum, and one of m with its s into the super-block's
 * offsets; per super-block and token, one FMA of each with the rows' d (dmin) into the running
 * sums, the offsets taken off at the end. (d and dmin applied per sub-block instead cost 16
 * multiplies a super-block on the pipes the dot products use: one token from L3, 2048 x 2048,
 * 33.5 -> 35.6 GB/s.) A token's operations do not depend on the tokens beside it, so its
 * result is the same bits whatever t.
 *
 * Error against float64: a term c P (c = fl(sc da): 1 rounding, sc being exact; P: at most 1)
 * meets at most 8 FMAs in its super-block's sum, 1 + nb / 8 in the running sums (nb = k / 32)
 * and the subtraction; an offset term (m exact, s one rounding) the same: within
 * (nb / 8 + 11) u M, inside X16_DOT_BOUND(nb) = (2 nb + 4) u M for nb >= 8. */
#include "gemm_x16_q16b_avx512vnni.h"
#include "gemm_x16.h"

/* Tokens per tile: 4 int32 sums a token (16 registers for 4 tokens) beside the quant word, its
 * two nibble halves and the broadcasts. */
#define Q4K_TILE 4

/* The 16 rows' sc (sc_f[j]) and m (m_f[j]) of sub-block j as floats, one lane per row: q4_k's
 * 6-bit scales and mins (x16_q4k_scales in gemm_x16.h, the same bytes) unpacked on whole
 * words, each lane a row's three packed words. */
ALWAYS_INLINE void q4k_scales(const uint8_t *g, __m512 sc_f[8], __m512 m_f[8]) {
    const __m512i w0 = _mm512_loadu_si512(g + X16_Q4K_SCALES), w1 = _mm512_loadu_si512(g + X16_Q4K_SCALES + 64),
                  w2 = _mm512_loadu_si512(g + X16_Q4K_SCALES + 128);
    const __m512i m6 = _mm512_set1_epi32(0x3f3f3f3f), m4 = _mm512_set1_epi32(0x0f0f0f0f),
                  top2 = _mm512_set1_epi32(0x30303030), byte = _mm512_set1_epi32(0xFF);
    const __m512i sc[2] = {_mm512_and_si512(w0, m6), _mm512_or_si512(_mm512_and_si512(w2, m4),
                                                                     _mm512_and_si512(_mm512_srli_epi32(w0, 2), top2))};
    const __m512i mn[2] = {_mm512_and_si512(w1, m6),
                           _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, 4), m4),
                                           _mm512_and_si512(_mm512_srli_epi32(w1, 2), top2))};
    for (int j = 0; j < 8; j++) {
        const int shift = 8 * (j % 4);
        sc_f[j] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(sc[j / 4], shift), byte));
        m_f[j] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(mn[j / 4], shift), byte));
    }
}

/* The fifth bits of sub-block s (bit s of each qh byte) as bit 4, nothing else: 16-bit shifts keep
 * a byte's bit 4 within the byte for shifts of up to 4 left or 3 right. */
ALWAYS_INLINE __m512i q5k_bit4(__m512i qh, int s) {
    const __m512i bit4 = _mm512_set1_epi8(0x10);
    const __m512i at4 = s < 4 ? _mm512_slli_epi16(qh, 4 - s) : s == 4 ? qh : _mm512_srli_epi16(qh, s - 4);
    return _mm512_and_si512(at4, bit4);
}

/* T tokens' sums += the super-block at g (q4_k, or q5_k where q5) against their activation blocks
 * ys[i][0 .. 8). A part of the super-block at pf is prefetched a word (llmr_prefetch_part). */
ALWAYS_INLINE void q4k_tile(const int T, const int q5, const uint8_t *g, const uint8_t *pf, const __m512 sc_f[8], const __m512 m_f[8],
                            const block_q16_b *const *ys, q16b_sums *sums) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const uint8_t *qs = g + (q5 ? X16_Q5K_QS : X16_Q4K_QS);
    q16b_sums part[Q4K_TILE];
    for (int i = 0; i < T; i++)
        part[i].acc = part[i].off = _mm512_setzero_ps();
    for (int p = 0; p < 4; p++) {
        __m512i lo[Q4K_TILE][2], hi[Q4K_TILE][2]; /* [token][sub-block 2p, 2p + 1] */
        for (int i = 0; i < T; i++)
            lo[i][0] = lo[i][1] = hi[i][0] = hi[i][1] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            const __m512i word = _mm512_loadu_si512(qs + (8 * p + c) * 64);
            llmr_prefetch_part(pf, q5 ? X16_Q5K_BLOCK : X16_Q4K_BLOCK, 8 * p + c, 32);
            __m512i q[2];
            if (q5) { /* the nibble where the mask is set, bit 4 from qh: one select (0xCA: a ? b : c) */
                const __m512i qh = _mm512_loadu_si512(g + X16_Q5K_QH + c * 64);
                q[0] = _mm512_ternarylogic_epi32(nibble, word, q5k_bit4(qh, 2 * p), 0xCA);
                q[1] = _mm512_ternarylogic_epi32(nibble, _mm512_srli_epi16(word, 4), q5k_bit4(qh, 2 * p + 1), 0xCA);
            } else {
                q[0] = _mm512_and_si512(word, nibble);
                q[1] = _mm512_and_si512(_mm512_srli_epi16(word, 4), nibble);
            }
            for (int i = 0; i < T; i++)
                for (int s = 0; s < 2; s++)
                    q16b_madd(&lo[i][s], &hi[i][s], q[s], ys[i] + 2 * p + s, 4 * c);
        }
        for (int i = 0; i < T; i++)
            for (int s = 0; s < 2; s++) {
                const block_q16_b *y = ys[i] + 2 * p + s;
                q16b_accumulate(&part[i], lo[i][s], hi[i][s], sc_f[2 * p + s], y->d, m_f[2 * p + s], y->s);
            }
    }
    const __m512 d = q16b_f16x16(g), dmin = q16b_f16x16(g + X16_Q4K_DMIN);
    for (int i = 0; i < T; i++) {
        sums[i].acc = _mm512_fmadd_ps(d, part[i].acc, sums[i].acc);
        sums[i].off = _mm512_fmadd_ps(dmin, part[i].off, sums[i].off);
    }
}

/* Up to Q16B_TOKENS tokens: every super-block against every token, tile by tile. */
ALWAYS_INLINE void gemm_tokens(const int q5, int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                               const uint8_t *a, size_t a_stride) {
    const size_t block = q5 ? X16_Q5K_BLOCK : X16_Q4K_BLOCK;
    q16b_sums sums[Q16B_TOKENS];
    for (int64_t i = 0; i < t; i++)
        sums[i].acc = sums[i].off = _mm512_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * block;
        const uint8_t *pf = llmr_prefetch_block(g, block); /* by the first tile */
        __m512 sc_f[8], m_f[8];
        q4k_scales(g, sc_f, m_f);
        for (int64_t ti = 0; ti < t; ti += Q4K_TILE) {
            const block_q16_b *ys[Q4K_TILE];
            const int n = t - ti < Q4K_TILE ? (int)(t - ti) : Q4K_TILE;
            q16b_token_blocks(a, a_stride, ti, n, b, ys);
            switch (n) {
            case 4: q4k_tile(4, q5, g, ti ? NULL : pf, sc_f, m_f, ys, sums + ti); break;
            case 3: q4k_tile(3, q5, g, ti ? NULL : pf, sc_f, m_f, ys, sums + ti); break;
            case 2: q4k_tile(2, q5, g, ti ? NULL : pf, sc_f, m_f, ys, sums + ti); break;
            default: q4k_tile(1, q5, g, ti ? NULL : pf, sc_f, m_f, ys, sums + ti); break;
            }
        }
    }
    q16b_store(t, sums, out, out_stride);
}

static void gemm(const int q5, int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                 size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += Q16B_TOKENS)
        gemm_tokens(q5, k / QK_K, t - t0 < Q16B_TOKENS ? t - t0 : Q16B_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}

void gemm_x16_q4_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride) {
    gemm(0, k, t, out, out_stride, w, a, a_stride);
}

void gemm_x16_q5_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride) {
    gemm(1, k, t, out, out_stride, w, a, a_stride);
}
