/* arm64 NEON dot products for float weights (f32, f16, bf16) against f32 activations.
 * NEON is baseline on arm64: no extra flags, no CPU test.
 *
 * Four 4-lane accumulators updated by explicit FMAs (vfmaq_f32), so the sum is in a different
 * order from the scalar kernel's; both are within (K + 2) u sum|x w| of float64
 * (tests/test_isa.py, tests/neon/test_neon.c). f16 converts by vcvt_f32_f16 (exact), bf16 by
 * a 16-bit shift (exact). A row length that is not a multiple of 4 ends with one zero-padded
 * step. Weights are loaded as bytes, so rows need no alignment. */
#include <arm_neon.h>

#include "llmrun.h"

/* Four weights as f32. */
typedef float32x4_t (*load4_fn)(const uint8_t *w);

static inline float32x4_t load4_f32(const uint8_t *w) { return vreinterpretq_f32_u8(vld1q_u8(w)); }
static inline float32x4_t load4_f16(const uint8_t *w) {
    return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(w)));
}
static inline float32x4_t load4_bf16(const uint8_t *w) {
    return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8(w)), 16));
}

/* dot(w, a) over k elements of elem_size bytes each; inlined with a constant `load`. */
static inline __attribute__((always_inline)) float dot(const uint8_t *w, const float *a, int64_t k,
                                                       int elem_size, load4_fn load) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float32x4_t acc2 = vdupq_n_f32(0.0f), acc3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        acc0 = vfmaq_f32(acc0, load(w + (i + 0) * elem_size), vld1q_f32(a + i + 0));
        acc1 = vfmaq_f32(acc1, load(w + (i + 4) * elem_size), vld1q_f32(a + i + 4));
        acc2 = vfmaq_f32(acc2, load(w + (i + 8) * elem_size), vld1q_f32(a + i + 8));
        acc3 = vfmaq_f32(acc3, load(w + (i + 12) * elem_size), vld1q_f32(a + i + 12));
    }
    for (; i + 4 <= k; i += 4)
        acc0 = vfmaq_f32(acc0, load(w + i * elem_size), vld1q_f32(a + i));
    if (i < k) { /* the last k % 4 elements, zero-padded */
        uint8_t wt[16] = {0};
        float at[4] = {0};
        memcpy(wt, w + i * elem_size, (size_t)(k - i) * elem_size);
        memcpy(at, a + i, (size_t)(k - i) * sizeof(float));
        acc1 = vfmaq_f32(acc1, load(wt), vld1q_f32(at));
    }
    return vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
}

void vec_dot_f32_f32_neon(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 4, load4_f32);
}

void vec_dot_f16_f32_neon(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 2, load4_f16);
}

void vec_dot_bf16_f32_neon(int64_t k, float *s, const void *w, const void *a) {
    *s = dot(w, a, k, 2, load4_bf16);
}
