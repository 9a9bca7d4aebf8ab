/* The scalar quantisers' bytes for tests/test_quantize.py, which builds this twice: with the
 * compiler's vector lanes and with LLMR_ONE_LANE (the plain-float build that compilers without
 * vector types get) and with LLMR_NO_CLONES (the baseline build alone), and holds them to the
 * module's bytes and to each other.
 *
 *     quantize_rows IN OUT: IN float32 values (a multiple of 256) -> OUT: their q2_k, q3_k, q4_k,
 *     q5_k, q6_k and iq4_nl bytes, then calibrated fits of each type with importance 0.5 + |x|,
 *     then a calibrated q4_k choice among two fits, one after another. */
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
    /* the calibrated fits, each with the importance, then a calibrated choice among two fits */
    const llmr_k_fit search = {.search = 1}, grid = {.grid = 0.3}, wide = {.rmin = -0.9f, .rdelta = 0.05f, .nstep = 36},
                     alone = {.square = 0}, squared = {.square = 1};
    const struct {
        int type;
        const llmr_k_fit *fit;
    } fits[] = {{LLMR_TYPE_Q2_K, &llmr_q2_k_fit}, {LLMR_TYPE_Q3_K, &search}, {LLMR_TYPE_Q3_K, &grid},
                {LLMR_TYPE_Q4_K, &wide},          {LLMR_TYPE_Q5_K, &wide},   {LLMR_TYPE_Q6_K, &grid},
                {LLMR_TYPE_IQ4_NL, &alone},       {LLMR_TYPE_IQ4_NL, &squared}};
    for (size_t f = 0; f < sizeof fits / sizeof fits[0]; f++) {
        llmr_k_fit_for(fits[f].type)(x, y, k, fits[f].fit, imp);
        fwrite(y, 1, llmr_row_bytes(llmr_type_traits_get(fits[f].type), k), out);
    }
    double *w = malloc((size_t)k * sizeof(double));
    if (!w)
        return 1;
    for (long i = 0; i < k; i++) w[i] = imp[i] * imp[i];
    const llmr_k_fit both[] = {wide, llmr_q4_k_fit};
    if (quantize_row_k_best(LLMR_TYPE_Q4_K, x, y, k, both, 2, imp, w))
        return 1;
    fwrite(y, 1, llmr_row_bytes(llmr_type_traits_get(LLMR_TYPE_Q4_K), k), out);
    return fclose(out) ? 1 : 0;
}
