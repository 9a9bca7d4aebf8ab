/* The type-agnostic loops: matmul and get_rows reach each type's kernels through the traits
 * and dispatch tables, so a new type or ISA never touches this file. */
#include "llmrun.h"

size_t llmr_matmul_scratch(const llmr_type_traits *t, int64_t rows, int64_t k) {
    return t->act == LLMR_ACT_Q16_A ? (size_t)rows * (size_t)(k / QK) * sizeof(block_q16_a) : 0;
}

void llmr_matmul(const llmr_kernels *kern, int type, float *out, const float *x, const void *w,
                 int64_t t, int64_t n, int64_t k, void *scratch) {
    const llmr_type_traits *tr = llmr_type_traits_get(type);
    const llmr_vec_dot_fn vec_dot = kern->vec_dot[type];
    const size_t w_row = (size_t)llmr_row_bytes(tr, k);

    /* Quantise each activation row once; every weight row then reuses it. */
    const void *act = x;
    size_t act_row = (size_t)k * sizeof(float);
    if (tr->act == LLMR_ACT_Q16_A) {
        for (int64_t ti = 0; ti < t; ti++)
            kern->quantize_q16_a(x + ti * k, (block_q16_a *)scratch + ti * (k / QK), k);
        act = scratch;
        act_row = (size_t)(k / QK) * sizeof(block_q16_a);
    }

    /* Weight rows outer: a row stays in cache while every token uses it, and the weights,
     * by far the larger operand, stream through memory once. */
    for (int64_t ni = 0; ni < n; ni++) {
        const uint8_t *wr = (const uint8_t *)w + ni * w_row;
        for (int64_t ti = 0; ti < t; ti++)
            vec_dot(k, out + ti * n + ni, wr, (const uint8_t *)act + ti * act_row);
    }
}

int64_t llmr_get_rows(int type, float *out, const void *w, int64_t rows, const int32_t *ids, int64_t n,
                      int64_t k, int32_t *bad) {
    const llmr_type_traits *tr = llmr_type_traits_get(type);
    const size_t w_row = (size_t)llmr_row_bytes(tr, k);
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = ids[i];
        if (id < 0 || id >= rows) {
            *bad = id;
            return i;
        }
        tr->dequantize((const uint8_t *)w + (size_t)id * w_row, out + i * k, k);
    }
    return -1;
}
