/* The traits table: for each weight type, its block geometry, what it multiplies against and
 * its reference converters. ISA-independent; the vec_dot kernels live in the dispatch table.
 * The same facts as quant/types.py's table: tests/test_kernels.py compares the two through
 * _kernels.type_traits(), so a type added here and not there (or the other way) fails a test. */
#include <stddef.h>
#include <stdio.h>

#include "llmrun.h"

static const llmr_type_traits TRAITS[LLMR_TYPE_COUNT] = {
    /* {name, block_size, type_size, n_scales, act, x16, quantize, dequantize[, scales_at]} */
    [LLMR_TYPE_F32] = {"f32", 1, 4, 0, LLMR_ACT_F32, 0, quantize_row_f32_ref, dequantize_row_f32_ref},
    [LLMR_TYPE_F16] = {"f16", 1, 2, 0, LLMR_ACT_F32, 0, quantize_row_f16_ref, dequantize_row_f16_ref},
    [LLMR_TYPE_BF16] = {"bf16", 1, 2, 0, LLMR_ACT_F32, 0, quantize_row_bf16_ref, dequantize_row_bf16_ref},
    [LLMR_TYPE_Q8_0] = {"q8_0", QK8_0, sizeof(block_q8_0), 1, LLMR_ACT_Q16_A, 1, quantize_row_q8_0_ref,
                        dequantize_row_q8_0_ref},
    [LLMR_TYPE_Q4_0] = {"q4_0", QK4_0, sizeof(block_q4_0), 1, LLMR_ACT_Q16_A, 1, quantize_row_q4_0_ref,
                        dequantize_row_q4_0_ref},
    [LLMR_TYPE_Q4_1] = {"q4_1", QK4_1, sizeof(block_q4_1), 2, LLMR_ACT_Q16_A, 1, quantize_row_q4_1_ref,
                        dequantize_row_q4_1_ref},
    [LLMR_TYPE_Q5_0] = {"q5_0", QK5_0, sizeof(block_q5_0), 1, LLMR_ACT_Q16_A, 1, quantize_row_q5_0_ref,
                        dequantize_row_q5_0_ref},
    [LLMR_TYPE_Q5_1] = {"q5_1", QK5_1, sizeof(block_q5_1), 2, LLMR_ACT_Q16_A, 1, quantize_row_q5_1_ref,
                        dequantize_row_q5_1_ref},
    /* q2_k's d and dmin, q3_k's d, are their blocks' last fields */
    [LLMR_TYPE_Q2_K] = {"q2_k", QK_K, sizeof(block_q2_K), 2, LLMR_ACT_Q16_A, 1, quantize_row_q2_K_ref,
                        dequantize_row_q2_K_ref, offsetof(block_q2_K, d)},
    [LLMR_TYPE_Q3_K] = {"q3_k", QK_K, sizeof(block_q3_K), 1, LLMR_ACT_Q16_A, 1, quantize_row_q3_K_ref,
                        dequantize_row_q3_K_ref, offsetof(block_q3_K, d)},
    [LLMR_TYPE_IQ4_NL] = {"iq4_nl", QK4_NL, sizeof(block_iq4_nl), 1, LLMR_ACT_Q16_A, 1, quantize_row_iq4_nl_ref,
                          dequantize_row_iq4_nl_ref},
    [LLMR_TYPE_Q4_K] = {"q4_k", QK_K, sizeof(block_q4_K), 2, LLMR_ACT_Q16_A, 1, quantize_row_q4_K_ref,
                        dequantize_row_q4_K_ref},
    [LLMR_TYPE_Q5_K] = {"q5_k", QK_K, sizeof(block_q5_K), 2, LLMR_ACT_Q16_A, 1, quantize_row_q5_K_ref,
                        dequantize_row_q5_K_ref},
    /* d is the block's last field */
    [LLMR_TYPE_Q6_K] = {"q6_k", QK_K, sizeof(block_q6_K), 1, LLMR_ACT_Q16_A, 1, quantize_row_q6_K_ref,
                        dequantize_row_q6_K_ref, offsetof(block_q6_K, d)},
};

const llmr_type_traits *llmr_type_traits_get(int type) {
    if (type < 0 || type >= LLMR_TYPE_COUNT || TRAITS[type].name == NULL)
        return NULL;
    return &TRAITS[type];
}

int llmr_types_check(char *err, size_t err_size) {
    for (int id = 0; id < LLMR_TYPE_COUNT; id++) {
        const llmr_type_traits *t = &TRAITS[id];
        const char *problem =
            !t->name ? NULL
            : !t->quantize || !t->dequantize ? "has no reference quantiser or dequantiser"
            : t->block_size < 1 || t->type_size < 1 ? "has an empty block"
            : t->type_size > LLMR_MAX_BLOCK_BYTES ? "has blocks larger than LLMR_MAX_BLOCK_BYTES"
            /* matmul sizes and walks activations in q16_a blocks, the weight's blocks in step */
            : t->act == LLMR_ACT_Q16_A && t->block_size % QK_Q16_A ? "has blocks that are not whole q16_a blocks"
            : t->scales_at < 0 || t->scales_at + 2 * t->n_scales > t->type_size ? "has scale fields outside its block"
            /* llmr_x16_get_block moves n_scales f16 fields, then the other bytes as 4-byte words */
            : t->x16 && (t->type_size - 2 * t->n_scales) % 4 ? "has X16 quants that are not 4-byte words"
            : t->x16 && t->scales_at % 4 ? "has X16 scale fields inside a 4-byte word"
            : NULL;
        if (problem) {
            snprintf(err, err_size, "weight type %s (id %d) %s (kernels/cpu/types.c)", t->name, id, problem);
            return -1;
        }
    }
    return 0;
}

int64_t llmr_row_bytes(const llmr_type_traits *t, int64_t k) {
    if (k < 0 || k % t->block_size)
        return -1;
    return k / t->block_size * t->type_size;
}

void llmr_x16_get_block(const llmr_type_traits *t, const void *group, int r, int64_t b, void *out) {
    const uint8_t *g = (const uint8_t *)group + (size_t)b * LLMR_X16 * (size_t)t->type_size;
    uint8_t *block = out, *scales = block + t->scales_at;
    for (int f = 0; f < t->n_scales; f++)
        memcpy(scales + 2 * f, g + (f * LLMR_X16 + r) * 2, 2);
    /* the other bytes, in order, around the scale fields */
    const uint8_t *q = g + t->n_scales * LLMR_X16 * 2;
    const int words = (t->type_size - 2 * t->n_scales) / 4;
    for (int c = 0; c < words; c++) {
        const int at = 4 * c < t->scales_at ? 4 * c : 4 * c + 2 * t->n_scales;
        memcpy(block + at, q + (c * LLMR_X16 + r) * 4, 4);
    }
}
