/* Scalar reference for the float ops of the LLaMA graph: rmsnorm, rope, attention, silu_mul, gelu_mul.
 * Shapes and conventions are Hugging Face's LLaMA, so converted checkpoints match it. */
#include <math.h>

#include "llmrun.h"

void rmsnorm_ref(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++, x += d, out += d) {
        /* Squares summed in double: d is in the thousands, and float would lose ~log2(d) bits. */
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)x[i] * x[i];
        const float scale = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        /* HF order: normalise, round to f32, then multiply by the weight. */
        for (int64_t i = 0; i < d; i++)
            out[i] = (x[i] * scale) * w[i];
    }
}

void llmr_rope_table(float *cos_t, float *sin_t, const int32_t *pos, const float *inv_freq, int64_t t,
                     int64_t half, float mscale) {
    for (int64_t ti = 0; ti < t; ti++)
        for (int64_t i = 0; i < half; i++) {
            /* The angle is the f32 product, as HF computes it; cos/sin of that f32 in double
             * then rounded, so the result does not depend on the libm's cosf accuracy. */
            const float angle = (float)pos[ti] * inv_freq[i];
            cos_t[ti * half + i] = (float)cos((double)angle) * mscale;
            sin_t[ti * half + i] = (float)sin((double)angle) * mscale;
        }
}

void rope_ref(float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t h, int64_t hd, int64_t rd) {
    const int64_t half = rd / 2; /* pairs (i, i + rd/2) of the first rd elements; the rest pass */
    for (int64_t ti = 0; ti < t; ti++, cos_t += half, sin_t += half)
        for (int64_t hi = 0; hi < h; hi++) {
            float *v = x + (ti * h + hi) * hd;
            for (int64_t i = 0; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * cos_t[i] - b * sin_t[i];
                v[i + half] = b * cos_t[i] + a * sin_t[i];
            }
        }
}

void llmr_kv_rotate(float *x, int64_t rows, int64_t hd, int divide) {
    const int64_t n = hd & -hd; /* the largest power of two dividing hd */
    const float inv = 1.0f / (float)n;
    for (int64_t r = 0; r < rows * hd; r += n) { /* each run of n: butterflies, H_n = [[H, H], [H, -H]] */
        float *v = x + r;
        for (int64_t len = 1; len < n; len *= 2)
            for (int64_t i = 0; i < n; i += 2 * len)
                for (int64_t j = i; j < i + len; j++) {
                    const float a = v[j], b = v[j + len];
                    v[j] = a + b;
                    v[j + len] = a - b;
                }
        if (divide)
            for (int64_t j = 0; j < n; j++)
                v[j] *= inv;
    }
}

/* Element i of a cache row of type kv as the f32 it stands for: f16 widened, q8_0's d * q (both
 * exact). */
static inline float kv_at(const void *row, int64_t i, int kv) {
    if (kv == LLMR_KV_F16) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)row + 2 * i, 2);
        return llmr_f16_to_f32(h);
    }
    if (kv == LLMR_KV_Q8_0) {
        const block_q8_0 *b = (const block_q8_0 *)row + i / QK8_0;
        return llmr_f16_to_f32(b->d) * b->qs[i % QK8_0];
    }
    return ((const float *)row)[i];
}

static float dot(const float *a, const void *b, int kv, int64_t n) {
    float acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++)
            acc[l] += a[i + l] * kv_at(b, i + l, kv);
    for (; i < n; i++)
        acc[0] += a[i] * kv_at(b, i, kv);
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

void attention_ref(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t,
                   int64_t hq, int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window, float scale,
                   int64_t h0, int64_t h1, float *scratch) {
    float *scores = scratch, *acc = scratch + n_past + t; /* acc: one head's sums, out of out */
    const int64_t group = hq / hkv; /* query heads per kv head */
    const int64_t kv_stride = hd; /* elements between positions in a kv head's rows */
    for (int64_t ti = 0; ti < t; ti++) {
        const int64_t end = n_past + ti + 1; /* causal: positions .. n_past + ti */
        const int64_t start = window > 0 && end > window ? end - window : 0; /* a sliding window's first */
        const int64_t n_kv = end - start;
        for (int64_t h = h0; h < h1; h++) {
            const float *qh = q + (ti * hq + h) * hd;
            const int64_t first = ((h / group) * n_ctx + start) * hd; /* the kv head's row at start */
            const void *kh = llmr_kv_skip(k, first, kv_type), *vh = llmr_kv_skip(v, first, kv_type);
            float *oh = out + (ti * hq + h) * hd;

            float max = -INFINITY;
            for (int64_t j = 0; j < n_kv; j++) {
                scores[j] = dot(qh, llmr_kv_skip(kh, j * kv_stride, kv_type), kv_type, hd) * scale;
                max = scores[j] > max ? scores[j] : max;
            }
            /* Subtracting the max keeps every exp in (0, 1], so nothing overflows. */
            float sum = 0.0f;
            for (int64_t j = 0; j < n_kv; j++) {
                scores[j] = expf(scores[j] - max);
                sum += scores[j];
            }
            const float inv_sum = 1.0f / sum;
            for (int64_t i = 0; i < hd; i++)
                acc[i] = 0.0f;
            for (int64_t j = 0; j < n_kv; j++) {
                const float p = scores[j] * inv_sum;
                const void *vj = llmr_kv_skip(vh, j * kv_stride, kv_type);
                for (int64_t i = 0; i < hd; i++)
                    acc[i] += p * kv_at(vj, i, kv_type);
            }
            memcpy(oh, acc, (size_t)hd * sizeof(float));
        }
    }
}

void silu_mul_ref(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* GELU's tanh approximation, as PyTorch's gelu(approximate="tanh") computes it in f32. */
void gelu_mul_ref(float *out, const float *gate, const float *up, int64_t n) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    for (int64_t i = 0; i < n; i++) {
        const float x = gate[i];
        out[i] = 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x))) * up[i];
    }
}
