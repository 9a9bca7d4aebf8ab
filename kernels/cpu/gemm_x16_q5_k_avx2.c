/* AVX2 (+FMA, F16C) X16 kernel of q5_k with q16_a activations: gemm_x16_avx2.c's q4_k kernel with
 * the fifth bit, one token at a time. Super-blocks outermost: each one's 16 rows' sub-block scales
 * are unpacked once (x16_q4k_scales: q5_k's lie as q4_k's) for up to Q4K_TOKENS tokens, whose
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
#include "gemm_x16_avx2.h"

ALWAYS_INLINE __m256i widen(const uint8_t *p) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)); }

/* int16 lanes q plus 16 where the lane of h has `bit` set. */
ALWAYS_INLINE __m256i fifth(__m256i q, __m256i h, __m256i bit) {
    const __m256i set = _mm256_cmpeq_epi16(_mm256_and_si256(h, bit), bit);
    return _mm256_add_epi16(q, _mm256_and_si256(set, _mm256_set1_epi16(16)));
}

/* The int16 quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c, rows 4r .. 4r + 3: the
 * nibbles plus 16 where their bit of qh word c is set. */
ALWAYS_INLINE void q5k_word(const void *src, int p, int c, int r, __m256i *lo, __m256i *hi) {
    const uint8_t *g = src;
    const __m256i nibble = _mm256_set1_epi16(0x0F);
    const __m256i bit_lo = _mm256_set1_epi16((short)(1 << 2 * p)), bit_hi = _mm256_set1_epi16((short)(2 << 2 * p));
    const __m256i raw = widen(g + X16_Q5K_QS + (8 * p + c) * 64 + r * 16), h = widen(g + X16_Q5K_QH + c * 64 + r * 16);
    *lo = fifth(_mm256_and_si256(raw, nibble), h, bit_lo);
    *hi = fifth(_mm256_srli_epi16(raw, 4), h, bit_hi);
}

static void q5k_unpack_quants(const uint8_t *g, q4k_quants *u) {
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 8; c++)
            for (int r = 0; r < 4; r++)
                q5k_word(g, p, c, r, &u->q[p][c][0][r], &u->q[p][c][1][r]);
}

void gemm_x16_q5_K_q16_a_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride) {
    q4k_gemm(X16_Q5K_BLOCK, q5k_word, q5k_unpack_quants, k, t, out, out_stride, w, a, a_stride);
}
