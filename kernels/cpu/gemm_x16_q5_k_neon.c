/* NEON X16 kernel of q5_k with q16_a activations: gemm_x16_neon.c's q4_k kernel (q4k_gemm,
 * gemm_x16_neon.h) with the fifth bit, one token at a time, super-blocks outermost: each one's 16
 * rows' sub-block scales are unpacked once (x16_q4k_scales: q5_k's lie as q4_k's) for up to
 * Q4K_TOKENS tokens, whose running sums wait in memory between super-blocks. Per pair of sub-blocks 2p (the low nibbles of
 * qs words 8p .. 8p + 7) and 2p + 1 (their high nibbles) and four rows, a 16-byte load of qs word
 * c is byte 4r + i: row r's qs byte 4c' + i (c' = c mod 8), whose fifth bits are bits 2p and 2p + 1
 * of the same byte of qh word c' (vtst, and, or, before widening). Each sub-block sums in its own
 * four int32 lanes per row, exact, reduced by two rounds of pairwise adds; then per sub-block one
 * conversion, one FMA with the rows' d sc times da and one fused multiply-subtract of dmin m sa.
 * The same bits whatever t. Error: each term (c = fl(d sc da): 1 rounding; offsets exact before the
 * FMS) meets at most 2 nb accumulations in its lane: within (2 nb + 1) u M, inside X16_DOT_BOUND(nb)
 * (tests/neon/test_neon.c). */
#include "gemm_x16_neon.h"

/* q4_k's quants plus 16 where their fifth bit (bit 2p or 2p + 1 of the same byte of qh word c) is set. */
ALWAYS_INLINE void q5k_word(const uint8_t *g, int p, int c, int j, uint8x16_t *lo, uint8x16_t *hi) {
    const uint8x16_t nibble = vdupq_n_u8(0x0F), sixteen = vdupq_n_u8(0x10);
    const uint8x16_t bit_lo = vdupq_n_u8((uint8_t)(1 << 2 * p)), bit_hi = vdupq_n_u8((uint8_t)(2 << 2 * p));
    const uint8x16_t raw = vld1q_u8(g + X16_Q5K_QS + (8 * p + c) * 64 + j * 16), h = vld1q_u8(g + X16_Q5K_QH + c * 64 + j * 16);
    *lo = vorrq_u8(vandq_u8(raw, nibble), vandq_u8(vtstq_u8(h, bit_lo), sixteen));
    *hi = vorrq_u8(vshrq_n_u8(raw, 4), vandq_u8(vtstq_u8(h, bit_hi), sixteen));
}

void gemm_x16_q5_K_q16_a_neon(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride) {
    q4k_gemm(X16_Q5K_BLOCK, q5k_word, k, t, out, out_stride, w, a, a_stride);
}
