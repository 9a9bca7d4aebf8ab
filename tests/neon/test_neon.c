/* The arm64 NEON kernels against the scalar references, built for aarch64 and run under qemu by
 * tests/test_neon.py (or natively on arm64):
 *
 *   aarch64-linux-gnu-gcc -O2 -static -ffp-contract=off -Ikernels/include tests/neon/test_neon.c \
 *       kernels/cpu/{vec_dot_quant,vec_dot_float,quants}_neon.c kernels/cpu/{vec_dot,quants}_ref.c -lm
 *
 * - q8_0 / q4_0 / q4_1 / q5_0 / q5_1 / iq4_nl / q2_k .. q6_k dots against q16_a, and quantize_q16_a:
 *   bit-identical to _ref (the NEON kernels sum each block's integers exactly and repeat the
 *   scalar float steps in order); q6_k's 4-token tile bit-identical to its single-token dot.
 * - f32 / f16 / bf16 dots: the NEON sum order differs, so each of NEON and _ref must be within
 *   FLOAT_DOT_BOUND = (K + 2) u sum_k |x_k w_k| of the float64 dot (u = 2^-24; K products and at
 *   most K - 1 additions, each off by u times a partial sum <= sum|x w|, plus one final rounding,
 *   give (K + 1) u; one u of slack: the bound of tests/test_kernels.py), and so within twice it of
 *   each other.
 * - the f32 / f16 / bf16 gemms (NEON and scalar): each output bit-identical to the same file's
 *   vec_dot, whatever the row and token counts.
 * - X16 groups (kernels/cpu/gemm_x16_neon.c; q4_k too; q5_k: gemm_x16_q5_k_neon.c; q6_k:
 *   gemm_x16_q6_k_neon.c): within X16_DOT_BOUND of the scalar X16
 *   kernels.
 * - attention (attention_neon.c): within the SIMD attention bound of float64 (test_attention);
 *   with f16 caches, the f32 result on the widened caches bit for bit.
 * Sizes are awkward: N rows 1, 3, 17; K 32, 96, 2080 (1, 3, 65 blocks), float K also 5, 33, 100
 * (vector tails); weight rows start at an odd byte address. Prints "N passed, M failed"; exits 1
 * on any failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "llmrun.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static float uniform(void) { return (float)((next_u64() >> 40) * 0x1.0p-24) * 2.0f - 1.0f; } /* [-1, 1) */

static int passed, failed;
static void check(int ok, const char *what, int64_t n, int64_t k, int64_t row, const char *detail) {
    if (ok) { passed++; return; }
    failed++;
    if (failed <= 20) printf("FAIL %s N=%lld K=%lld row=%lld: %s\n", what, (long long)n, (long long)k, (long long)row, detail);
}

static const int ROWS[] = {1, 3, 17};
static const int K_QUANT[] = {32, 96, 2080};
static const int K_FLOAT[] = {32, 96, 2080, 5, 33, 100};
#define U 0x1.0p-24

/* Activations with a few outliers (which set a block's scale) and a wide range of scales. */
static void fill_x(float *x, int64_t k) {
    const float scale = powf(10.0f, 3.0f * uniform());
    for (int64_t i = 0; i < k; i++) x[i] = 2.0f * scale * uniform();
    for (int64_t i = 0; i < k && i < 3; i++) x[i] *= 50.0f;
}

static void test_quant_dots(void) {
    /* d_at, m_at: the byte offsets of a block's f16 scale and minimum (-1: none) */
    static const struct { const char *name; int block_size, type_size, d_at, m_at; llmr_vec_dot_fn neon, ref; } T[] = {
        {"q8_0", 32, 34, 0, -1, vec_dot_q8_0_q16_a_neon, vec_dot_q8_0_q16_a_ref},
        {"q4_0", 32, 18, 0, -1, vec_dot_q4_0_q16_a_neon, vec_dot_q4_0_q16_a_ref},
        {"q4_1", 32, 20, 0, 2, vec_dot_q4_1_q16_a_neon, vec_dot_q4_1_q16_a_ref},
        {"q5_0", 32, 22, 0, -1, vec_dot_q5_0_q16_a_neon, vec_dot_q5_0_q16_a_ref},
        {"q5_1", 32, 24, 0, 2, vec_dot_q5_1_q16_a_neon, vec_dot_q5_1_q16_a_ref},
        {"iq4_nl", 32, 18, 0, -1, vec_dot_iq4_nl_q16_a_neon, vec_dot_iq4_nl_q16_a_ref},
        {"q4_k", QK_K, 144, 0, 2, vec_dot_q4_K_q16_a_neon, vec_dot_q4_K_q16_a_ref}, /* d, dmin */
        {"q5_k", QK_K, 176, 0, 2, vec_dot_q5_K_q16_a_neon, vec_dot_q5_K_q16_a_ref}, /* d, dmin */
        {"q6_k", QK_K, 210, 208, -1, vec_dot_q6_K_q16_a_neon, vec_dot_q6_K_q16_a_ref}, /* d last */
        {"q3_k", QK_K, 110, 108, -1, vec_dot_q3_K_q16_a_neon, vec_dot_q3_K_q16_a_ref}, /* d last */
        {"q2_k", QK_K, 84, 80, 82, vec_dot_q2_K_q16_a_neon, vec_dot_q2_K_q16_a_ref},   /* d, dmin last */
    };
    for (int t = 0; t < (int)(sizeof T / sizeof T[0]); t++)
        for (int ki = 0; ki < 3; ki++)
            for (int ni = 0; ni < 3; ni++) {
                /* super-blocks: as many as K_QUANT has blocks of 32 */
                const int64_t k = K_QUANT[ki] * (T[t].block_size / QK_Q16_A), n = ROWS[ni], nb = k / QK_Q16_A;
                const int64_t row = k / T[t].block_size * T[t].type_size, nwb = k / T[t].block_size;
                uint8_t *buf = malloc((size_t)(n * row + 1)), *w = buf + 1; /* odd address */
                float *x = malloc((size_t)k * sizeof(float));
                block_q16_a *a = malloc((size_t)nb * sizeof(block_q16_a));
                for (int64_t i = 0; i < n * row; i++) w[i] = (uint8_t)next_u64();
                for (int64_t r = 0; r < n; r++) /* finite scales (and minimums) */
                    for (int64_t b = 0; b < nwb; b++) {
                        uint8_t *blk = w + r * row + b * T[t].type_size;
                        const uint16_t d = llmr_f32_to_f16(0.01f * uniform()), m = llmr_f32_to_f16(0.1f * uniform());
                        memcpy(blk + T[t].d_at, &d, 2);
                        if (T[t].m_at >= 0) memcpy(blk + T[t].m_at, &m, 2);
                    }
                fill_x(x, k);
                quantize_row_q16_a_ref(x, a, k);
                for (int64_t r = 0; r < n; r++) {
                    float got = NAN, want = NAN;
                    T[t].neon(k, &got, w + r * row, a);
                    T[t].ref(k, &want, w + r * row, a);
                    char detail[96];
                    snprintf(detail, sizeof detail, "neon %a, ref %a", got, want);
                    check(llmr_f32_to_bits(got) == llmr_f32_to_bits(want), T[t].name, n, k, r, detail);
                }
                free(buf); free(x); free(a);
            }
}

/* The 4-token tiles: each output equals the same weight row's single-token dot bit for bit, for
 * four different activation rows (the tile reads them a_stride bytes apart). */
static void test_tiles(void) {
    static const struct { const char *name; int type_size, d_at; llmr_vec_dot_tile_fn tile; llmr_vec_dot_fn dot; } T[] = {
        {"tile q6_k", 210, 208, vec_dot_tile_q6_K_q16_a_neon, vec_dot_q6_K_q16_a_neon},
    };
    for (int t = 0; t < (int)(sizeof T / sizeof T[0]); t++)
        for (int ki = 0; ki < 3; ki++) {
            const int64_t k = K_QUANT[ki] * (QK_K / QK_Q16_A), nb = k / QK_Q16_A, row = k / QK_K * T[t].type_size;
            const int64_t n = 3;
            uint8_t *buf = malloc((size_t)(n * row + 1)), *w = buf + 1; /* odd address */
            float *x = malloc((size_t)k * sizeof(float));
            block_q16_a *a = malloc((size_t)(LLMR_TILE * nb) * sizeof(block_q16_a));
            for (int64_t i = 0; i < n * row; i++) w[i] = (uint8_t)next_u64();
            for (int64_t b = 0; b < n * row / T[t].type_size; b++) {
                const uint16_t d = llmr_f32_to_f16(0.01f * uniform());
                memcpy(w + b * T[t].type_size + T[t].d_at, &d, 2);
            }
            for (int i = 0; i < LLMR_TILE; i++) {
                fill_x(x, k);
                quantize_row_q16_a_ref(x, a + i * nb, k);
            }
            for (int64_t r = 0; r < n; r++) {
                float got[2 * LLMR_TILE];
                T[t].tile(k, got, 2, w + r * row, a, nb * sizeof(block_q16_a)); /* outputs 2 apart */
                for (int i = 0; i < LLMR_TILE; i++) {
                    float want = NAN;
                    T[t].dot(k, &want, w + r * row, a + i * nb);
                    char detail[96];
                    snprintf(detail, sizeof detail, "token %d: tile %a, single %a", i, got[2 * i], want);
                    check(llmr_f32_to_bits(got[2 * i]) == llmr_f32_to_bits(want), T[t].name, n, k, r, detail);
                }
            }
            free(buf); free(x); free(a);
        }
}

static float w_to_f32(int t, const uint8_t *p) {
    if (t == 0) { float f; memcpy(&f, p, 4); return f; }
    uint16_t h; memcpy(&h, p, 2);
    return t == 1 ? llmr_f16_to_f32(h) : llmr_bf16_to_f32(h);
}

static void test_float_dots(void) {
    static const struct { const char *name; int size; llmr_vec_dot_fn neon, ref; } T[] = {
        {"f32", 4, vec_dot_f32_f32_neon, vec_dot_f32_f32_ref},
        {"f16", 2, vec_dot_f16_f32_neon, vec_dot_f16_f32_ref},
        {"bf16", 2, vec_dot_bf16_f32_neon, vec_dot_bf16_f32_ref},
    };
    for (int t = 0; t < 3; t++)
        for (int ki = 0; ki < 6; ki++)
            for (int ni = 0; ni < 3; ni++) {
                const int64_t k = K_FLOAT[ki], n = ROWS[ni], row = k * T[t].size;
                uint8_t *buf = malloc((size_t)(n * row + 1)), *w = buf + 1; /* odd address */
                float *x = malloc((size_t)k * sizeof(float));
                for (int64_t i = 0; i < n * k; i++) {
                    /* f16 includes subnormals (scale 1e-6 now and then); all values finite */
                    const float v = 0.1f * uniform() * (next_u64() % 16 == 0 ? 1e-5f : 1.0f);
                    if (t == 0) memcpy(w + 4 * i, &v, 4);
                    else { const uint16_t h = t == 1 ? llmr_f32_to_f16(v) : llmr_f32_to_bf16(v); memcpy(w + 2 * i, &h, 2); }
                }
                fill_x(x, k);
                for (int64_t r = 0; r < n; r++) {
                    double exact = 0.0, mag = 0.0;
                    for (int64_t i = 0; i < k; i++) {
                        const double p = (double)w_to_f32(t, w + r * row + i * T[t].size) * x[i];
                        exact += p; mag += fabs(p);
                    }
                    const double bound = (double)(k + 2) * U * mag; /* FLOAT_DOT_BOUND(K) * sum|x w| */
                    float got = NAN, want = NAN;
                    T[t].neon(k, &got, w + r * row, x);
                    T[t].ref(k, &want, w + r * row, x);
                    const double e_neon = fabs(got - exact), e_ref = fabs(want - exact), e_pair = fabs((double)got - want);
                    char detail[160];
                    snprintf(detail, sizeof detail, "neon %.9g ref %.9g exact %.9g; errs %.3g %.3g %.3g, bound %.3g",
                             got, want, exact, e_neon, e_ref, e_pair, bound);
                    check(e_neon <= bound && e_ref <= bound && e_pair <= 2 * bound, T[t].name, n, k, r, detail);
                }
                free(buf); free(x);
            }
}

/* The float gemms (4 rows x 6 tokens tiles, rows or tokens repeated in a last partial tile) against
 * the same file's vec_dot, one call per output: bit-identical (the same accumulator steps and
 * tree for every output, wherever it falls in the tiles); the scalar gemm against the scalar
 * vec_dot likewise. Outputs sit out_stride = n + 3 apart, the 3 between must stay untouched; the
 * activations k + 1 floats apart. */
static void test_float_gemm(void) {
    static const struct { const char *name; int size; llmr_gemm_fn gemm, gemm_ref; llmr_vec_dot_fn dot, dot_ref; } T[] = {
        {"f32 gemm", 4, gemm_f32_f32_neon, gemm_f32_f32_ref, vec_dot_f32_f32_neon, vec_dot_f32_f32_ref},
        {"f16 gemm", 2, gemm_f16_f32_neon, gemm_f16_f32_ref, vec_dot_f16_f32_neon, vec_dot_f16_f32_ref},
        {"bf16 gemm", 2, gemm_bf16_f32_neon, gemm_bf16_f32_ref, vec_dot_bf16_f32_neon, vec_dot_bf16_f32_ref},
    };
    static const int TOKENS[] = {1, 2, 3, 5, 6, 7, 9, 13, 17};
    for (int t = 0; t < 3; t++)
        for (int ki = 0; ki < 6; ki++)
            for (int ni = 0; ni < 3; ni++)
                for (int ti = 0; ti < 9; ti++) {
                    const int64_t k = K_FLOAT[ki], n = ROWS[ni], row = k * T[t].size, nt = TOKENS[ti];
                    const int64_t a_stride = k + 1, out_stride = n + 3;
                    uint8_t *buf = malloc((size_t)(n * row + 1)), *w = buf + 1; /* odd address */
                    float *x = malloc((size_t)(nt * a_stride) * sizeof(float));
                    float *got = malloc((size_t)(nt * out_stride) * sizeof(float));
                    float *got_ref = malloc((size_t)(nt * out_stride) * sizeof(float));
                    for (int64_t i = 0; i < n * k; i++) {
                        const float v = 0.1f * uniform();
                        if (t == 0) memcpy(w + 4 * i, &v, 4);
                        else { const uint16_t h = t == 1 ? llmr_f32_to_f16(v) : llmr_f32_to_bf16(v); memcpy(w + 2 * i, &h, 2); }
                    }
                    for (int64_t j = 0; j < nt; j++)
                        fill_x(x + j * a_stride, k);
                    for (int64_t i = 0; i < nt * out_stride; i++)
                        got[i] = got_ref[i] = NAN;
                    T[t].gemm(k, n, nt, got, (size_t)out_stride, w, x, (size_t)a_stride * sizeof(float));
                    T[t].gemm_ref(k, n, nt, got_ref, (size_t)out_stride, w, x, (size_t)a_stride * sizeof(float));
                    for (int64_t j = 0; j < nt; j++)
                        for (int64_t r = 0; r < out_stride; r++) {
                            const float g = got[j * out_stride + r], gr = got_ref[j * out_stride + r];
                            float want = NAN, want_ref = NAN;
                            if (r < n) {
                                T[t].dot(k, &want, w + r * row, x + j * a_stride);
                                T[t].dot_ref(k, &want_ref, w + r * row, x + j * a_stride);
                            }
                            const int ok = r < n ? llmr_f32_to_bits(g) == llmr_f32_to_bits(want) &&
                                                       llmr_f32_to_bits(gr) == llmr_f32_to_bits(want_ref)
                                                 : isnan(g) && isnan(gr); /* between rows: not written */
                            char detail[160];
                            snprintf(detail, sizeof detail, "token %lld of %lld: gemm %.9g vec_dot %.9g; ref gemm %.9g "
                                     "vec_dot %.9g", (long long)j, (long long)nt, g, want, gr, want_ref);
                            check(ok, T[t].name, n, k, r, detail);
                        }
                    free(buf); free(x); free(got); free(got_ref);
                }
}

static void check_q16a(const float *x, int64_t k, const char *what) {
    const int64_t nb = k / QK_Q16_A;
    block_q16_a *got = calloc((size_t)nb, sizeof *got), *want = calloc((size_t)nb, sizeof *want);
    quantize_row_q16_a_neon(x, got, k);
    quantize_row_q16_a_ref(x, want, k);
    for (int64_t b = 0; b < nb; b++) {
        char detail[96];
        snprintf(detail, sizeof detail, "block %lld differs (d %a/%a, s %a/%a)", (long long)b, got[b].d, want[b].d, got[b].s, want[b].s);
        check(memcmp(&got[b], &want[b], sizeof got[b]) == 0, what, 1, k, b, detail);
    }
    free(got); free(want);
}

static void test_quantize_q16a(void) {
    for (int ki = 0; ki < 3; ki++)
        for (int rep = 0; rep < 17; rep++) {
            const int64_t k = K_QUANT[ki];
            float *x = malloc((size_t)k * sizeof(float));
            for (int64_t i = 0; i < k; i++) /* a scale per block across 1e-4 .. 1e4 */
                x[i] = uniform() * powf(10.0f, 4.0f * ((float)((i / QK_Q16_A * 7919 + rep * 31) % 97) / 48.0f - 1.0f));
            fill_x(x, k);
            check_q16a(x, k, "quantize_q16_a random");
            free(x);
        }
    /* Ties and near-ties: max|x| = 32767 makes d = 1 and id = 1 exactly, so x * id = x. */
    float x[4 * QK_Q16_A];
    const float special[] = {0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 0.49999997f, -0.49999997f,
                             0.50000006f, 32766.5f, -32766.5f, 1e-30f, -0.0f, 0.0f, 3.4999998f, 100.5f};
    for (int j = 0; j < QK_Q16_A; j++) x[j] = j == 0 ? 32767.0f : special[j % 16];
    for (int j = 0; j < QK_Q16_A; j++) x[QK_Q16_A + j] = 0.0f;                 /* all zero: d = 0, id = 0 */
    for (int j = 0; j < QK_Q16_A; j++) x[2 * QK_Q16_A + j] = j == 5 ? -32767.0f : (float)j - 15.5f;
    for (int j = 0; j < QK_Q16_A; j++) x[3 * QK_Q16_A + j] = 1e-3f * special[j % 16] + (j == 0 ? 7.0f : 0.0f);
    check_q16a(x, 4 * QK_Q16_A, "quantize_q16_a ties");
    /* What a corrupt file feeds it: NaN among numbers (left out of the max, q = 0), an infinity
     * (d = inf, id = 0), a block whose 1/d would not be finite (id = 0). */
    for (int j = 0; j < QK_Q16_A; j++) {
        x[j] = j == 3 || j == 20 ? NAN : (float)j - 9.25f;
        x[QK_Q16_A + j] = j == 7 ? INFINITY : 1.0f;
        x[2 * QK_Q16_A + j] = j % 2 ? 1e-40f : -3e-39f;
        x[3 * QK_Q16_A + j] = NAN;
    }
    check_q16a(x, 4 * QK_Q16_A, "quantize_q16_a non-finite");
}

/* The scale d and offset of the 32 values of sub-block s of a rows-layout block (value = d q +
 * offset, q as the kernels take it: q5_0's, q8_0's and iq4_nl's levels signed, the others' unsigned). */
static void sub_block_scale(int type, const uint8_t *blk, int s, double *d, double *offset) {
    uint16_t d16, m16;
    memcpy(&d16, blk, 2);
    memcpy(&m16, blk + 2, 2);
    *d = llmr_f16_to_f32(d16);
    *offset = 0.0;
    if (type == LLMR_TYPE_Q4_0)
        *offset = -8.0 * *d;
    else if (type == LLMR_TYPE_Q4_1 || type == LLMR_TYPE_Q5_1)
        *offset = llmr_f16_to_f32(m16);
    else if (type == LLMR_TYPE_Q4_K || type == LLMR_TYPE_Q5_K) { /* the same scales, at the same bytes */
        uint8_t sc, m;
        llmr_q4_k_scale_min(s, ((const block_q4_K *)blk)->scales, &sc, &m);
        *offset = -(double)llmr_f16_to_f32(m16) * m;
        *d *= sc;
    }
}

/* The X16 layout (16 rows interleaved per block): NEON against the scalar X16 kernels (which
 * are the rows layout's arithmetic, bit for bit), within X16_DOT_BOUND(nb) = (2 nb + 4) u M of
 * each other's exact value, M = sum_b (|d| da sum|qw qa| + |offset| |sa|) over the nb activation
 * blocks (a q4_k sub-block's d is d sc, its offset -dmin m) (tests/test_kernels.py); so within
 * twice that of each other. Groups of 16 rows: one and three; 1 and 3 tokens. */
static void test_x16(void) {
    static const struct { const char *name; int type; llmr_gemm_x16_fn neon, ref; } T[] = {
        {"x16 q8_0", LLMR_TYPE_Q8_0, gemm_x16_q8_0_q16_a_neon, gemm_x16_q8_0_q16_a_ref},
        {"x16 q4_0", LLMR_TYPE_Q4_0, gemm_x16_q4_0_q16_a_neon, gemm_x16_q4_0_q16_a_ref},
        {"x16 q4_1", LLMR_TYPE_Q4_1, gemm_x16_q4_1_q16_a_neon, gemm_x16_q4_1_q16_a_ref},
        {"x16 q5_0", LLMR_TYPE_Q5_0, gemm_x16_q5_0_q16_a_neon, gemm_x16_q5_0_q16_a_ref},
        {"x16 q5_1", LLMR_TYPE_Q5_1, gemm_x16_q5_1_q16_a_neon, gemm_x16_q5_1_q16_a_ref},
        {"x16 iq4_nl", LLMR_TYPE_IQ4_NL, gemm_x16_iq4_nl_q16_a_neon, gemm_x16_iq4_nl_q16_a_ref},
        {"x16 q4_k", LLMR_TYPE_Q4_K, gemm_x16_q4_K_q16_a_neon, gemm_x16_q4_K_q16_a_ref},
        {"x16 q5_k", LLMR_TYPE_Q5_K, gemm_x16_q5_K_q16_a_neon, gemm_x16_q5_K_q16_a_ref},
        {"x16 q6_k", LLMR_TYPE_Q6_K, gemm_x16_q6_K_q16_a_neon, gemm_x16_q6_K_q16_a_ref},
        {"x16 q3_k", LLMR_TYPE_Q3_K, gemm_x16_q3_K_q16_a_neon, gemm_x16_q3_K_q16_a_ref},
        {"x16 q2_k", LLMR_TYPE_Q2_K, gemm_x16_q2_K_q16_a_neon, gemm_x16_q2_K_q16_a_ref},
    };
    static const int GROUP_ROWS[] = {16, 48}, TOKENS[] = {1, 3};
    for (int t = 0; t < (int)(sizeof T / sizeof T[0]); t++)
        for (int ki = 0; ki < 3; ki++)
            for (int ni = 0; ni < 2; ni++)
                for (int ti = 0; ti < 2; ti++) {
                    const llmr_type_traits *tr = llmr_type_traits_get(T[t].type);
                    const int bs = tr->block_size, subs = bs / QK_Q16_A;
                    /* super-blocks: as many as K_QUANT has blocks of 32 */
                    const int64_t k = K_QUANT[ki] * subs, n = GROUP_ROWS[ni], tokens = TOKENS[ti];
                    const int64_t nb = k / QK_Q16_A, nwb = k / bs, row = nwb * tr->type_size, group = 16 * row;
                    uint8_t *buf = malloc((size_t)(n * row + 1)), *w = buf + 1; /* odd address */
                    float *x = malloc((size_t)(tokens * k) * sizeof(float));
                    block_q16_a *a = malloc((size_t)(tokens * nb) * sizeof(block_q16_a));
                    float *got = malloc((size_t)(tokens * n) * sizeof(float)), *want = malloc((size_t)(tokens * n) * sizeof(float));
                    for (int64_t i = 0; i < n * row; i++) w[i] = (uint8_t)next_u64();
                    for (int64_t g = 0; g < n / 16; g++) /* finite scales (and minimums): the f16 fields */
                        for (int64_t b = 0; b < nwb; b++)
                            for (int f = 0; f < 16 * tr->n_scales; f++) {
                                const uint16_t h = llmr_f32_to_f16((f < 16 ? 0.01f : 0.1f) * uniform());
                                memcpy(w + g * group + b * 16 * tr->type_size + 2 * f, &h, 2);
                            }
                    for (int64_t i = 0; i < tokens; i++) {
                        fill_x(x + i * k, k);
                        quantize_row_q16_a_ref(x + i * k, a + i * nb, k);
                    }
                    for (int64_t g = 0; g < n / 16; g++) {
                        T[t].neon(k, tokens, got + g * 16, (size_t)n, w + g * group, a, nb * sizeof(block_q16_a));
                        T[t].ref(k, tokens, want + g * 16, (size_t)n, w + g * group, a, nb * sizeof(block_q16_a));
                    }
                    for (int64_t i = 0; i < tokens; i++)
                        for (int64_t r = 0; r < n; r++) {
                            double mag = 0.0;
                            for (int64_t b = 0; b < nwb; b++) {
                                uint8_t blk[LLMR_MAX_BLOCK_BYTES];
                                llmr_x16_get_block(tr, w + r / 16 * group, (int)(r % 16), b, blk);
                                float wq[QK_K];
                                tr->dequantize(blk, wq, bs); /* d q + offset, exactly */
                                for (int s = 0; s < subs; s++) {
                                    double d, off;
                                    sub_block_scale(T[t].type, blk, s, &d, &off);
                                    const block_q16_a *y = &a[i * nb + b * subs + s];
                                    if (T[t].type == LLMR_TYPE_Q2_K) { /* its mins per 16 values: |d sc q| + |dmin m| */
                                        const block_q2_K *q2 = (const block_q2_K *)blk;
                                        for (int j = 0; j < QK_Q16_A; j++) {
                                            const int e = s * QK_Q16_A + j, sc = q2->scales[e / 16];
                                            mag += (fabs((double)llmr_f16_to_f32(q2->d) * (sc & 0xF) * llmr_q2_k_quant(q2->qs, e)) +
                                                    fabs((double)llmr_f16_to_f32(q2->dmin) * (sc >> 4))) * fabs((double)y->qs[j] * y->d);
                                        }
                                        continue;
                                    }
                                    for (int j = 0; j < QK_Q16_A; j++) /* |d q qa da| from the value: |w - off| = |d q| */
                                        mag += fabs(((double)wq[s * QK_Q16_A + j] - off) * y->qs[j] * y->d);
                                    mag += fabs(off * y->s);
                                }
                            }
                            const double bound = 2.0 * (double)(2 * nb + 4) * U * mag;
                            const float gv = got[i * n + r], wv = want[i * n + r];
                            char detail[128];
                            snprintf(detail, sizeof detail, "neon %.9g ref %.9g, err %.3g, bound %.3g", gv, wv,
                                     fabs((double)gv - wv), bound);
                            check(fabs((double)gv - wv) <= bound, T[t].name, n, k, r, detail);
                        }
                    free(buf); free(x); free(a); free(got); free(want);
                }
}

/* q6_k's X16 kernel at its largest integer terms: every sub-block scale -128 and every quant 0
 * (sc (q - 32) = 4096) against activations of 32767 (constant rows): a sub-block's 16 products
 * in a lane make 2,147,418,112, just under 2^31, and a block's 32 would pass it. 16 rows, three
 * super-blocks, built in the X16 layout directly (ql = qh = 0; d 1e-3, or -2.5 in odd rows);
 * against the scalar X16 kernel (int64 sums) within twice X16_DOT_BOUND: a wrapped int32 would
 * be off by 2^32 d da. */
static void test_x16_q6k_extremes(void) {
    enum { NB = 3, K = NB * QK_K, NQ = K / QK_Q16_A };
    static uint8_t w[NB * 16 * sizeof(block_q6_K)];
    static float x[K], got[16], want[16];
    static block_q16_a a[NQ];
    memset(w, 0, sizeof w);
    for (int b = 0; b < NB; b++) {
        uint8_t *g = w + b * 16 * sizeof(block_q6_K);
        for (int r = 0; r < 16; r++) {
            const uint16_t h = llmr_f32_to_f16(r % 2 ? -2.5f : 1e-3f);
            memcpy(g + 2 * r, &h, 2);
        }
        memset(g + 32 + 48 * 64, 0x80, 4 * 64); /* the scales words: int8 -128 */
    }
    for (int i = 0; i < K; i++) x[i] = 3.0f;
    quantize_row_q16_a_ref(x, a, K);
    gemm_x16_q6_K_q16_a_neon(K, 1, got, 16, w, a, sizeof a);
    gemm_x16_q6_K_q16_a_ref(K, 1, want, 16, w, a, sizeof a);
    for (int r = 0; r < 16; r++) {
        const double mag = fabs((r % 2 ? -2.5 : llmr_f16_to_f32(llmr_f32_to_f16(1e-3f)))) * a[0].d * 4096.0 * 32767.0 * K;
        const double bound = 2.0 * (2 * NQ + 4) * U * mag;
        char detail[128];
        snprintf(detail, sizeof detail, "neon %.9g ref %.9g, bound %.3g", got[r], want[r], bound);
        check(a[0].qs[0] == 32767 && fabs((double)got[r] - want[r]) <= bound, "x16 q6_k extremes", 16, K, r, detail);
    }
}

/* Attention (kernels/cpu/attention_neon.c) against float64, every query row within the bound of
 * tests/test_kernels.py's ATTENTION_SIMD_BOUND (blocks of 8, an exp within 2 ulp):
 * (2 (hd + 4) u A + (2 n_kv + 8 ceil(n_kv / 8) + 4) u) max|v|, A = max_j sum|q k_j| / sqrt(hd);
 * for decode and prefill runs, GQA groups, head dims with and without a vector tail, sliding
 * windows; rows past the last position and before a window's first are NaN, which must not
 * reach the output. With the caches in f16: the f32 result on the widened caches, bit for bit;
 * in q8_0 (hd a multiple of 32): the f32 result on caches of the blocks' values, bit for bit. */
static void attention_case(int64_t n_past, int64_t t, int64_t hq, int64_t hkv, int64_t hd, int64_t window) {
    const int64_t n_ctx = n_past + t + 3, kv = n_ctx * hkv * hd;
    float *q = malloc((size_t)(t * hq * hd) * sizeof(float)), *out = malloc((size_t)(t * hq * hd) * sizeof(float));
    float *out16 = malloc((size_t)(t * hq * hd) * sizeof(float)), *kc = malloc((size_t)kv * sizeof(float));
    float *vc = malloc((size_t)kv * sizeof(float));
    uint16_t *kh = malloc((size_t)kv * 2), *vh = malloc((size_t)kv * 2);
    float *scratch = malloc((size_t)(n_ctx + LLMR_ATTENTION_TOKENS * hq * hd + 16) * sizeof(float));
    for (int64_t i = 0; i < t * hq * hd; i++) q[i] = 2.0f * uniform();
    /* the caches [hkv][n_ctx][hd]; f16 values, so that the f16 caches hold them exactly */
    for (int64_t g = 0; g < hkv; g++)
        for (int64_t j = 0; j < n_ctx; j++) {
            const int seen = j < n_past + t && !(window > 0 && j + window < n_past + 1);
            for (int64_t e = 0; e < hd; e++) {
                kc[(g * n_ctx + j) * hd + e] = seen ? llmr_f16_to_f32(llmr_f32_to_f16(uniform())) : NAN;
                vc[(g * n_ctx + j) * hd + e] = seen ? llmr_f16_to_f32(llmr_f32_to_f16(uniform())) : NAN;
            }
        }
    for (int64_t e = 0; e < kv; e++) {
        kh[e] = llmr_f32_to_f16(kc[e]);
        vh[e] = llmr_f32_to_f16(vc[e]);
    }
    const float scale = 1.0f / sqrtf((float)hd);
    attention_neon(out, q, kc, vc, LLMR_KV_F32, t, hq, hkv, hd, n_ctx, n_past, window, scale, 0, hq, scratch);
    attention_neon(out16, q, kh, vh, LLMR_KV_F16, t, hq, hkv, hd, n_ctx, n_past, window, scale, 0, hq, scratch);
    int same8 = 1;
    if (hd % QK8_0 == 0) { /* q8_0 caches, and f32 ones of their values (d * q, exact) */
        const size_t blocks = (size_t)(kv / QK8_0) * sizeof(block_q8_0), outs = (size_t)(t * hq * hd) * sizeof(float);
        block_q8_0 *k8 = malloc(blocks), *v8 = malloc(blocks);
        float *kd = malloc((size_t)kv * sizeof(float)), *vd = malloc((size_t)kv * sizeof(float));
        float *out8 = malloc(outs), *outd = malloc(outs);
        quantize_row_q8_0_ref(kc, k8, kv);
        quantize_row_q8_0_ref(vc, v8, kv);
        dequantize_row_q8_0_ref(k8, kd, kv);
        dequantize_row_q8_0_ref(v8, vd, kv);
        attention_neon(out8, q, k8, v8, LLMR_KV_Q8_0, t, hq, hkv, hd, n_ctx, n_past, window, scale, 0, hq, scratch);
        attention_neon(outd, q, kd, vd, LLMR_KV_F32, t, hq, hkv, hd, n_ctx, n_past, window, scale, 0, hq, scratch);
        for (int64_t e = 0; e < t * hq * hd; e++)
            same8 &= llmr_f32_to_bits(out8[e]) == llmr_f32_to_bits(outd[e]) && !isnan(out8[e]);
        free(k8); free(v8); free(kd); free(vd); free(out8); free(outd);
    }
    char what[96];
    snprintf(what, sizeof what, "attention n_past=%lld t=%lld heads=%lld/%lld hd=%lld window=%lld",
             (long long)n_past, (long long)t, (long long)hq, (long long)hkv, (long long)hd, (long long)window);
    for (int64_t i = 0; i < t; i++)
        for (int64_t h = 0; h < hq; h++) {
            const int64_t g = h / (hq / hkv), end = n_past + i + 1, start = window > 0 && end > window ? end - window : 0;
            const float *qh = q + (i * hq + h) * hd;
            double a = 0.0, m = -INFINITY, vmax = 0.0, sum = 0.0;
            double *s = malloc((size_t)(end - start) * sizeof(double)), o[512] = {0};
            for (int64_t j = start; j < end; j++) {
                double dot = 0.0, mag = 0.0;
                for (int64_t e = 0; e < hd; e++) {
                    dot += (double)qh[e] * kc[(g * n_ctx + j) * hd + e];
                    mag += fabs((double)qh[e] * kc[(g * n_ctx + j) * hd + e]);
                    vmax = fmax(vmax, fabs((double)vc[(g * n_ctx + j) * hd + e]));
                }
                s[j - start] = dot * scale;
                a = fmax(a, mag * scale);
                m = fmax(m, s[j - start]);
            }
            for (int64_t j = start; j < end; j++) {
                const double p = exp(s[j - start] - m);
                sum += p;
                for (int64_t e = 0; e < hd; e++) o[e] += p * vc[(g * n_ctx + j) * hd + e];
            }
            const int64_t n_kv = end - start;
            const double bound = (2.0 * (hd + 4) * U * a + (2.0 * n_kv + 8.0 * ((n_kv + 7) / 8) + 4) * U) * vmax;
            double err = 0.0;
            int same16 = 1;
            for (int64_t e = 0; e < hd; e++) {
                const float got = out[(i * hq + h) * hd + e];
                err = isnan(got) ? INFINITY : fmax(err, fabs(got - o[e] / sum));
                same16 &= llmr_f32_to_bits(got) == llmr_f32_to_bits(out16[(i * hq + h) * hd + e]);
            }
            char detail[96];
            snprintf(detail, sizeof detail, "token %lld head %lld: err %.3g, bound %.3g", (long long)i, (long long)h,
                     err, bound);
            check(err <= bound, what, t, hd, h, detail);
            check(same16, what, t, hd, h, "the f16 cache's result differs from the widened f32 cache's");
            check(same8, what, t, hd, h, "the q8_0 cache's result differs from the f32 cache of its values'");
            free(s);
        }
    free(q); free(out); free(out16); free(kc); free(vc); free(kh); free(vh); free(scratch);
}

static void test_attention(void) {
    static const int64_t N_PAST[] = {0, 1, 37, 300}, T[] = {1, 3, 17}, HD[] = {8, 24, 64, 80, 20, 5};
    static const int64_t HEADS[][2] = {{9, 3}, {4, 4}, {8, 1}, {32, 8}, {6, 3}}; /* groups of 3, 1, 8, 4, 2 */
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 5; c++)
                for (int d = 0; d < 6; d++)
                    attention_case(N_PAST[a], T[b], HEADS[c][0], HEADS[c][1], HD[d], 0);
    static const int64_t WINDOWS[] = {5, 16, 23, 400};
    for (int a = 1; a < 4; a++)
        for (int b = 0; b < 3; b++)
            for (int w = 0; w < 4; w++)
                attention_case(N_PAST[a], T[b], 9, 3, 24, WINDOWS[w]);
}

int main(void) {
    test_attention();
    test_x16();
    test_x16_q6k_extremes();
    test_quant_dots();
    test_tiles();
    test_float_dots();
    test_float_gemm();
    test_quantize_q16a();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
