/* The scalar quantisers' bytes for tests/test_quantize.py, which builds this twice: with the
 * compiler's vector lanes and with LLMR_ONE_LANE (the plain-float build that compilers without
 * vector types get), and holds both to the module's bytes.
 *
 *     quantize_rows IN OUT: IN float32 values (a multiple of 256) -> OUT: their q2_k, q3_k, q4_k,
 *     q5_k, q6_k and iq4_nl bytes, then q2_k's and q3_k's calibrated fits (q3_k's `search`) with
 *     importance 0.5 + |x|, one after another. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "llmrun.h"

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out)
        return 1;
    fseek(in, 0, SEEK_END);
    const long k = ftell(in) / (long)sizeof(float);
    fseek(in, 0, SEEK_SET);
    float *x = malloc((size_t)k * sizeof(float)), *imp = malloc((size_t)k * sizeof(float));
    uint8_t *y = malloc((size_t)k * 2);
    if (!x || !imp || !y || k % QK_K || fread(x, sizeof(float), (size_t)k, in) != (size_t)k)
        return 1;
    for (long i = 0; i < k; i++) imp[i] = 0.5f + fabsf(x[i]);
    void (*const plain[])(const float *, void *, int64_t) = {quantize_row_q2_K_ref, quantize_row_q3_K_ref,
                                                             quantize_row_q4_K_ref, quantize_row_q5_K_ref,
                                                             quantize_row_q6_K_ref, quantize_row_iq4_nl_ref};
    const int types[] = {LLMR_TYPE_Q2_K, LLMR_TYPE_Q3_K, LLMR_TYPE_Q4_K, LLMR_TYPE_Q5_K, LLMR_TYPE_Q6_K,
                         LLMR_TYPE_IQ4_NL};
    for (int t = 0; t < 6; t++) {
        plain[t](x, y, k);
        fwrite(y, 1, llmr_row_bytes(llmr_type_traits_get(types[t]), k), out);
    }
    const llmr_k_fit search = {.search = 1};
    quantize_row_q2_K_fit(x, y, k, &llmr_q2_k_fit, imp);
    fwrite(y, 1, llmr_row_bytes(llmr_type_traits_get(LLMR_TYPE_Q2_K), k), out);
    quantize_row_q3_K_fit(x, y, k, &search, imp);
    fwrite(y, 1, llmr_row_bytes(llmr_type_traits_get(LLMR_TYPE_Q3_K), k), out);
    return fclose(out) ? 1 : 0;
}
