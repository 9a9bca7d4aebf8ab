/* What the gemm_x16_q6_k_<isa>.c files share: q6_k's X16 super-block geometry, and the unpacked
 * form of a super-block (x16_q6k_quants: its 16 rows' quants times their sub-block scales) with
 * its unpacking in GCC / Clang vector extensions, which the NEON kernel uses; AVX-512 and AVX2
 * make the same bytes with their own intrinsics (the generic vectors compiled to a third of
 * their speed there).
 *
 * A super-block of a group is 16 rows' 210-byte blocks (3360 bytes): the 16 d (f16), then words
 * 0-31 of the rows' ql, 32-47 of their qh, 48-51 of their 16 int8 scales, word w of row r at
 * 32 + 4 (16 w + r). q16_a block j = 4h + k of the super-block (h < 2, k < 4) takes, for its
 * elements 4c .. 4c + 3 (word column c < 8), ql word 16h + 8 (k % 2) + c (the low nibbles for
 * k < 2, the high ones for k >= 2) and qh word 32 + 8h + c (bits 2k, 2k + 1 of each byte, the
 * quant's top two); columns 0-3 are sub-block 2j, 4-7 sub-block 2j + 1 (llmrun.h, block_q6_K). */
#ifndef LLMRUN_GEMM_X16_Q6_K_H
#define LLMRUN_GEMM_X16_Q6_K_H

#include <string.h>

#include "llmrun.h"

#define X16_Q6K_BLOCK (LLMR_X16 * sizeof(block_q6_K))
#define X16_Q6K_QL (LLMR_X16 * 2)
#define X16_Q6K_QH (X16_Q6K_QL + LLMR_X16 * 128)
#define X16_Q6K_SCALES (X16_Q6K_QH + LLMR_X16 * 64)
/* Tokens whose running sums a pass holds: each super-block is unpacked once for up to this many. */
#define X16_Q6K_TOKENS 64

typedef uint8_t x16_q6k_u8 __attribute__((vector_size(64)));   /* one word of 16 rows */
typedef int8_t x16_q6k_i8 __attribute__((vector_size(64)));
typedef int16_t x16_q6k_i16 __attribute__((vector_size(128)));
typedef int32_t x16_q6k_i32 __attribute__((vector_size(64)));   /* one lane per row */
typedef uint32_t x16_q6k_u32 __attribute__((vector_size(64)));
typedef float x16_q6k_f32 __attribute__((vector_size(64)));

/* A super-block's integer weights sc (q - 32) as int16, in the order the kernels read them:
 * w[j][c] is word column c of q16_a block j for rows 0-15, element 4c + i of row r at 4r + i.
 * |sc (q - 32)| <= 128 * 32 = 4096, so a q16_a block's 32 products with activations |qa| <=
 * 32767 (quantize_row_q16_a) sum within 32 * 4096 * 32767 < 2^32 in all, and an int32 lane of
 * int16 pairs, which holds 16 of them (the kernels' lanes (r, p)), within 16 * 4096 * 32767 =
 * 2,147,418,112 < 2^31: no lane can overflow. (Activations of -32768 could reach 2^31 exactly:
 * the activation quantisers never give it, |x / d| <= 32767 by construction.) */
typedef struct {
    int16_t w[QK_K / QK_Q16_A][8][LLMR_X16 * 4];
} x16_q6k_quants;

/* Sub-block scale i (< 4) of each row's scales word sw, sign-extended, at lanes 4r .. 4r + 3. */
static inline x16_q6k_i16 x16_q6k_scale_lanes(x16_q6k_u32 sw, int i) {
    typedef int16_t half_lanes __attribute__((vector_size(64)));
    const half_lanes s = (half_lanes)((x16_q6k_i32)(sw << (24 - 8 * i)) >> 24); /* row r's at 2r */
#define X16_Q6K_FOUR(r) 2 * (r), 2 * (r), 2 * (r), 2 * (r)
    return __builtin_shufflevector(s, s, X16_Q6K_FOUR(0), X16_Q6K_FOUR(1), X16_Q6K_FOUR(2), X16_Q6K_FOUR(3),
                                   X16_Q6K_FOUR(4), X16_Q6K_FOUR(5), X16_Q6K_FOUR(6), X16_Q6K_FOUR(7),
                                   X16_Q6K_FOUR(8), X16_Q6K_FOUR(9), X16_Q6K_FOUR(10), X16_Q6K_FOUR(11),
                                   X16_Q6K_FOUR(12), X16_Q6K_FOUR(13), X16_Q6K_FOUR(14), X16_Q6K_FOUR(15));
#undef X16_Q6K_FOUR
}

static inline void x16_q6k_unpack(const uint8_t *g, x16_q6k_quants *u) {
    x16_q6k_i16 sc[QK_K / 16];
    for (int w = 0; w < 4; w++) {
        x16_q6k_u32 sw;
        memcpy(&sw, g + X16_Q6K_SCALES + 64 * w, sizeof sw);
        for (int i = 0; i < 4; i++)
            sc[4 * w + i] = x16_q6k_scale_lanes(sw, i);
    }
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < 8; c++) {
            x16_q6k_u8 qh, ql[2];
            memcpy(&qh, g + X16_Q6K_QH + (8 * h + c) * 64, sizeof qh);
            for (int odd = 0; odd < 2; odd++)
                memcpy(&ql[odd], g + X16_Q6K_QL + (16 * h + 8 * odd + c) * 64, sizeof ql[odd]);
            for (int k = 0; k < 4; k++) {
                const int j = 4 * h + k;
                const x16_q6k_u8 q = ((ql[k % 2] >> (4 * (k / 2))) & 0x0F) | (((qh >> (2 * k)) & 3) << 4);
                const x16_q6k_i16 v = __builtin_convertvector((x16_q6k_i8)(q - 32), x16_q6k_i16) * sc[2 * j + c / 4];
                memcpy(u->w[j][c], &v, sizeof v);
            }
        }
}

#endif
