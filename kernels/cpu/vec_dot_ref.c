/* Scalar dot products, vec_dot_<weight type>_<activation type>: the reference every SIMD
 * variant is held to (quant.reference.matmul spells out the same arithmetic). */
#include "llmrun.h"
#include "kernels_ref.h"

/* Float weights: eight partial sums break the add-latency chain (and let the compiler put
 * them in vector registers) without -ffast-math; the order is fixed, so results are
 * reproducible. Float rows convert in chunks to an f32 buffer first for the same reason. */
enum { LANES = 8, CHUNK = 256 };

static float dot_f32(const float *w, const float *a, int64_t k) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= k; i += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] += w[i + l] * a[i + l];
    for (int l = 0; i < k; i++, l++)
        acc[l] += w[i] * a[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void vec_dot_converted(int64_t k, float *s, const uint8_t *w, const float *a, int elem_size,
                              llmr_dequantize_fn convert) {
    float buf[CHUNK];
    float sum = 0.0f;
    for (int64_t i = 0; i < k; i += CHUNK) {
        const int64_t n = k - i < CHUNK ? k - i : CHUNK;
        convert(w + i * elem_size, buf, n);
        sum += dot_f32(buf, a + i, n);
    }
    *s = sum;
}

void vec_dot_f32_f32_ref(int64_t k, float *s, const void *w, const void *a) {
    *s = dot_f32(w, a, k);
}

void vec_dot_f16_f32_ref(int64_t k, float *s, const void *w, const void *a) {
    vec_dot_converted(k, s, w, a, 2, dequantize_row_f16_ref);
}

void vec_dot_bf16_f32_ref(int64_t k, float *s, const void *w, const void *a) {
    vec_dot_converted(k, s, w, a, 2, dequantize_row_bf16_ref);
}

/* The float gemm: vec_dot's sums, each row's weights converted once per CHUNK for all t tokens
 * (vec_dot converts them once per token) and met by the tokens while in L1. out holds each
 * output's running sum over the chunks: from 0, in chunk order, as vec_dot_converted's sum. */
static void gemm_converted(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const uint8_t *w,
                           const uint8_t *a, size_t a_stride, int elem_size, llmr_dequantize_fn convert) {
    float buf[CHUNK];
    for (int64_t r = 0; r < n; r++) {
        for (int64_t j = 0; j < t; j++)
            out[j * out_stride + r] = 0.0f;
        for (int64_t i = 0; i < k; i += CHUNK) {
            const int64_t m = k - i < CHUNK ? k - i : CHUNK;
            convert(w + (r * k + i) * elem_size, buf, m);
            for (int64_t j = 0; j < t; j++)
                out[j * out_stride + r] += dot_f32(buf, (const float *)(a + j * a_stride) + i, m);
        }
    }
}

void gemm_f32_f32_ref(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w,
                      const void *a, size_t a_stride) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < t; j++) {
            const float *aj = (const float *)((const uint8_t *)a + j * a_stride);
            out[j * out_stride + r] = dot_f32((const float *)w + r * k, aj, k);
        }
}

void gemm_f16_f32_ref(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w,
                      const void *a, size_t a_stride) {
    gemm_converted(k, n, t, out, out_stride, w, a, a_stride, 2, dequantize_row_f16_ref);
}

void gemm_bf16_f32_ref(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w,
                       const void *a, size_t a_stride) {
    gemm_converted(k, n, t, out, out_stride, w, a, a_stride, 2, dequantize_row_bf16_ref);
}

/* Quantised weights: integer sums per block (exact in int32), one float step per block. The
 * rows layout and the X16 layout (each block copied out of its group first) share the block
 * functions, so the two give the same result bit for bit. */

static inline float block_dot_q8_0(const void *w, const block_q16_a *y) {
    const block_q8_0 *x = w;
    int32_t isum = 0;
    for (int j = 0; j < QK8_0; j++)
        isum += x->qs[j] * y->qs[j];
    return llmr_f16_to_f32(x->d) * y->d * (float)isum;
}

/* sum(q * qa) for one block of 4-bit weights, q4_0's or q4_1's (element j low nibble, j + 16
 * high nibble). */
static inline int32_t isum_q4(const uint8_t *qs, const int16_t *qa) {
    int32_t isum = 0;
    for (int j = 0; j < QK4_0 / 2; j++)
        isum += (qs[j] & 0x0F) * qa[j] + (qs[j] >> 4) * qa[j + QK4_0 / 2];
    return isum;
}

/* sum d (q - 8) a = d (da sum(q qa) - 8 sa): the offset costs one multiply per block. */
static inline float block_dot_q4_0(const void *w, const block_q16_a *y) {
    const block_q4_0 *x = w;
    return llmr_f16_to_f32(x->d) * (y->d * (float)isum_q4(x->qs, y->qs) - 8.0f * y->s);
}

/* sum (d q + m) a = d da sum(q qa) + m sa. */
static inline float block_dot_q4_1(const void *w, const block_q16_a *y) {
    const block_q4_1 *x = w;
    return llmr_f16_to_f32(x->d) * y->d * (float)isum_q4(x->qs, y->qs) + llmr_f16_to_f32(x->m) * y->s;
}

/* sum(q * qa) for one block of 5-bit weights, q5_0's (q - 16, signed) or q5_1's (q). */
static inline int32_t isum_q5(const uint8_t *qh, const uint8_t *qs, int offset, const int16_t *qa) {
    uint32_t h;
    memcpy(&h, qh, 4);
    int32_t isum = 0;
    for (int j = 0; j < QK5_0 / 2; j++) {
        const int lo = ((qs[j] & 0x0F) | (int)(h >> j & 1) << 4) - offset;
        const int hi = ((qs[j] >> 4) | (int)(h >> (j + 16) & 1) << 4) - offset;
        isum += lo * qa[j] + hi * qa[j + QK5_0 / 2];
    }
    return isum;
}

/* sum d (q - 16) a = d da sum((q - 16) qa): signed weights, as q8_0, so no offset term. */
static inline float block_dot_q5_0(const void *w, const block_q16_a *y) {
    const block_q5_0 *x = w;
    return llmr_f16_to_f32(x->d) * y->d * (float)isum_q5(x->qh, x->qs, 16, y->qs);
}

/* sum (d q + m) a = d da sum(q qa) + m sa, as q4_1. */
static inline float block_dot_q5_1(const void *w, const block_q16_a *y) {
    const block_q5_1 *x = w;
    return llmr_f16_to_f32(x->d) * y->d * (float)isum_q5(x->qh, x->qs, 0, y->qs) + llmr_f16_to_f32(x->m) * y->s;
}

/* sum d v[q] a = d da sum(v[q] qa), v the iq4_nl levels: signed (-127..113), as q8_0's weights,
 * so no offset term; |sum| <= 32 * 127 * 32767 < 2^31. */
static inline float block_dot_iq4_nl(const void *w, const block_q16_a *y) {
    const block_iq4_nl *x = w;
    int32_t isum = 0;
    for (int j = 0; j < QK4_NL / 2; j++)
        isum += llmr_iq4_nl_values[x->qs[j] & 0x0F] * y->qs[j] + llmr_iq4_nl_values[x->qs[j] >> 4] * y->qs[j + QK4_NL / 2];
    return llmr_f16_to_f32(x->d) * y->d * (float)isum;
}

/* The 32-element types' block_dot as a step: sum plus the block's term (kernels_ref.h). */
#define QUANT_KERNELS(type, block_t, id, qk)                                                            \
    static inline float block_step_##type(const block_t *x, const block_q16_a *y, float sum) {        \
        return sum + block_dot_##type(x, y);                                                          \
    }                                                                                                 \
    REF_KERNELS(type, block_t, id, qk)

/* weight block i meets activation block i: these types' blocks are q16_a's (llmrun.h asserts it) */
QUANT_KERNELS(q8_0, block_q8_0, LLMR_TYPE_Q8_0, QK8_0)
QUANT_KERNELS(q4_0, block_q4_0, LLMR_TYPE_Q4_0, QK4_0)
QUANT_KERNELS(q4_1, block_q4_1, LLMR_TYPE_Q4_1, QK4_1)
QUANT_KERNELS(q5_0, block_q5_0, LLMR_TYPE_Q5_0, QK5_0)
QUANT_KERNELS(q5_1, block_q5_1, LLMR_TYPE_Q5_1, QK5_1)
QUANT_KERNELS(iq4_nl, block_iq4_nl, LLMR_TYPE_IQ4_NL, QK4_NL)

/* q4_K: sub-block j of a super-block (32 values: the low or high nibbles of qs[32 (j / 2) ..])
 * meets activation block j: sum_j (d sc_j) da_j sum(q qa) - (dmin m_j) sa_j, in one running
 * sum over the row's sub-blocks (vec_dot_q4_K_q16_a_neon does the same operations in order).
 * block_step_q4_K adds one super-block's eight terms to `sum`, y its eight activation blocks. */
static inline float block_step_q4_K(const block_q4_K *x, const block_q16_a *y, float sum) {
    const float d = llmr_f16_to_f32(x->d), dmin = llmr_f16_to_f32(x->dmin);
    for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
        uint8_t sc, m;
        llmr_q4_k_scale_min(j, x->scales, &sc, &m);
        const uint8_t *q = x->qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        int32_t isum = 0;
        for (int l = 0; l < 32; l++)
            isum += (q[l] >> shift & 0x0F) * y->qs[l];
        sum += d * (float)sc * y->d * (float)isum - dmin * (float)m * y->s;
    }
    return sum;
}


/* q6_K: q16_a block j of a super-block spans sub-blocks 2j and 2j + 1 (16 values each, with its
 * own int8 scale): sum_j d da_j (sc_2j P_2j + sc_2j+1 P_2j+1), P the sub-block's sum of
 * (q - 32) qa, |P| <= 16 * 32 * 32767 < 2^24 (exact in int32); the two scaled sums, up to 2^32
 * in magnitude, are added in int64 and rounded to float once. Signed weights: no offset term,
 * so q16_a's s is not needed. vec_dot_q6_K_q16_a_neon does the same operations in order.
 * block_step_q6_K adds one super-block's eight terms to `sum`, y its eight activation blocks. */
static inline float block_step_q6_K(const block_q6_K *x, const block_q16_a *y, float sum) {
    const float d = llmr_f16_to_f32(x->d);
    for (int j = 0; j < QK_K / QK_Q16_A; j++, y++) {
        int32_t p[2] = {0, 0}; /* sub-blocks 2j, 2j + 1 */
        for (int l = 0; l < QK_Q16_A; l++)
            p[l / 16] += llmr_q6_k_quant(x, QK_Q16_A * j + l) * y->qs[l];
        const int64_t isum = (int64_t)x->scales[2 * j] * p[0] + (int64_t)x->scales[2 * j + 1] * p[1];
        sum += d * y->d * (float)isum;
    }
    return sum;
}

REF_KERNELS(q4_K, block_q4_K, LLMR_TYPE_Q4_K, QK_K)
REF_KERNELS(q6_K, block_q6_K, LLMR_TYPE_Q6_K, QK_K)
