/* AVX-512 (F, BW, VL) X16 kernel of q5_k with q16_a activations: gemm_x16_avx512.c's q4_k kernel
 * (q4k_gemm, gemm_x16_avx512.h) with the fifth bit. Compiled as the `avx512` kernel (the
 * avx512vnni path runs q5_k on u8 x s8 products: gemm_x16_q4_k_avx512vnni.c).
 *
 * For more than one token each super-block's quants are unpacked once, into int16 (8 KiB, in
 * L1), for up to Q4K_TOKENS tokens: a 512-token 2048 x 2048 product on one thread took 1.35-1.9x
 * q4_k's time when each tile unpacked them (wall clock, a loaded machine), 1.1x with this
 * (14.1-14.8 against 12.8-13.7 ms of thread CPU time). One token (decode) unpacks them as it reads
 * them, into the same integers.
 *
 * Per pair of sub-blocks 2p (the low nibbles of qs words 8p .. 8p + 7) and 2p + 1 (their high
 * nibbles), a 32-byte load of a qs word c of 8 rows widened to int16 is lane 4r + i: row r's qs
 * byte 4c' + i (c' = c mod 8), whose fifth bits are bits 2p and 2p + 1 of row r's qh byte 4c' + i,
 * in the same lane of qh word c' widened alike: one test and one masked add of 16 each. Then
 * q4_k's arithmetic, whose lanes stay exact (16 products of a quant up to 31 and an activation up
 * to 32767: below 2^24), and its error: within (nb + 3) u M, inside X16_DOT_BOUND(nb)
 * (tests/test_kernels.py); the same bits whatever t. */
#include "gemm_x16_avx512.h"

#ifndef Q5K_ISA /* this file's own build: the avx512 name */
#define Q5K_ISA avx512
#endif
#define Q5K_CAT(a, b) a##b
#define Q5K_NAME(isa) Q5K_CAT(gemm_x16_q5_K_q16_a_, isa)

ALWAYS_INLINE __m512i widen(const uint8_t *p) { return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p)); }

/* The int16 quants of sub-blocks 2p (lo) and 2p + 1 (hi) in qs word 8p + c, rows 0-7 and 8-15:
 * the nibbles plus 16 where their bit of qh word c is set. */
ALWAYS_INLINE void q5k_word(const void *g, int p, int c, __m512i lo[2], __m512i hi[2]) {
    const __m512i nibble = _mm512_set1_epi16(0x0F), sixteen = _mm512_set1_epi16(16);
    const __m512i bit_lo = _mm512_set1_epi16((short)(1 << 2 * p)), bit_hi = _mm512_set1_epi16((short)(2 << 2 * p));
    for (int v = 0; v < 2; v++) {
        const __m512i raw = widen((const uint8_t *)g + X16_Q5K_QS + (8 * p + c) * 64 + v * 32);
        const __m512i h = widen((const uint8_t *)g + X16_Q5K_QH + c * 64 + v * 32);
        const __m512i l = _mm512_and_si512(raw, nibble), u = _mm512_srli_epi16(raw, 4);
        lo[v] = _mm512_mask_add_epi16(l, _mm512_test_epi16_mask(h, bit_lo), l, sixteen);
        hi[v] = _mm512_mask_add_epi16(u, _mm512_test_epi16_mask(h, bit_hi), u, sixteen);
    }
}

static void q5k_unpack_quants(const uint8_t *g, q4k_quants *u) {
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 8; c++)
            q5k_word(g, p, c, u->q[p][c][0], u->q[p][c][1]);
}

void Q5K_NAME(Q5K_ISA)(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                       size_t a_stride) {
    q4k_gemm(X16_Q5K_BLOCK, q5k_word, q5k_unpack_quants, k, t, out, out_stride, w, a, a_stride);
}
