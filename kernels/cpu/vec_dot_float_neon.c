/* arm64 NEON kernels for float weights (f32, f16, bf16) against f32 activations: vec_dot and
 * the rows layout's gemm. NEON is baseline on arm64: no extra flags, no CPU test.
 *
 * vec_dot_float_avx512.c's scheme on 4 lanes: every output, in vec_dot and in any tile of gemm,
 * has one 4-lane accumulator, acc = fma(w[i..i+4), a[i..i+4), acc) for i = 0, 4, ... (vfmaq_f32;
 * the last k % 4 elements one zero-padded step), its lanes then summed by one fixed tree,
 * (l0 + l1) + (l2 + l3) (reduce4); so no result depends on the tile it lands in, the token count
 * or the thread count. A gemm tile is 4 rows x 6 tokens: 24 accumulators, 4 weight vectors (an
 * f16 or bf16 one converted once, then met by 6 tokens) and an activation vector, 29 of the 32
 * registers. Decode runs tiles of 4 rows and one token: four independent chains, as the one-row
 * kernel had before. f16 converts by vcvt_f32_f16 (exact), bf16 by a 16-bit shift (exact).
 * Weights are loaded as bytes, so rows need no alignment.
 *
 * Error: each product meets at most ceil(k / 4) additions in its lane and 2 in the tree: within
 * FLOAT_DOT_BOUND(k) = (k + 2) u sum|x w| of float64 (tests/neon/test_neon.c). */
#include <arm_neon.h>

#include "llmrun.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#include "vec_dot_float.h"

enum { TILE_TOKENS = 6 };

/* Four weights of format fmt as f32. */
ALWAYS_INLINE float32x4_t load4(enum float_format fmt, const uint8_t *w) {
    switch (fmt) {
    case FLOAT_F32:
        return vreinterpretq_f32_u8(vld1q_u8(w));
    case FLOAT_F16:
        return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(w)));
    default: /* bf16 */
        return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8(w)), 16));
    }
}

/* The sums of four accumulators' lanes, lane j of the result from v_j, each (l0 + l1) + (l2 + l3). */
ALWAYS_INLINE float32x4_t reduce4(float32x4_t v0, float32x4_t v1, float32x4_t v2, float32x4_t v3) {
    return vpaddq_f32(vpaddq_f32(v0, v1), vpaddq_f32(v2, v3));
}

/* A float_tile_fn (vec_dot_float.h). */
ALWAYS_INLINE void tile(enum float_format fmt, int64_t k, const uint8_t *const w[FLOAT_TILE_ROWS],
                        const float *const a[], int NT, float *out, size_t out_stride, int nr, int nt) {
    const int elem = FLOAT_ELEM(fmt);
    float32x4_t acc[FLOAT_TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < FLOAT_TILE_ROWS; r++)
        for (int j = 0; j < NT; j++)
            acc[r][j] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= k; i += 4) {
        float32x4_t wv[FLOAT_TILE_ROWS];
        for (int r = 0; r < FLOAT_TILE_ROWS; r++)
            wv[r] = load4(fmt, w[r] + i * elem);
        for (int j = 0; j < NT; j++) {
            const float32x4_t av = vld1q_f32(a[j] + i);
            for (int r = 0; r < FLOAT_TILE_ROWS; r++)
                acc[r][j] = vfmaq_f32(acc[r][j], wv[r], av);
        }
    }
    if (i < k) { /* the last k % 4: the same step on zero-padded copies */
        float32x4_t wv[FLOAT_TILE_ROWS];
        for (int r = 0; r < FLOAT_TILE_ROWS; r++) {
            uint8_t wt[16] = {0};
            memcpy(wt, w[r] + i * elem, (size_t)(k - i) * elem);
            wv[r] = load4(fmt, wt);
        }
        for (int j = 0; j < NT; j++) {
            float at[4] = {0};
            memcpy(at, a[j] + i, (size_t)(k - i) * sizeof(float));
            const float32x4_t av = vld1q_f32(at);
            for (int r = 0; r < FLOAT_TILE_ROWS; r++)
                acc[r][j] = vfmaq_f32(acc[r][j], wv[r], av);
        }
    }
    for (int j = 0; j < NT; j++) { /* NT, not nt: constant indices keep acc in registers */
        if (j >= nt)
            continue;
        const float32x4_t s = reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]);
        if (nr == FLOAT_TILE_ROWS) {
            vst1q_f32(out + j * out_stride, s);
        } else {
            float v[4];
            vst1q_f32(v, s);
            memcpy(out + j * out_stride, v, (size_t)nr * sizeof(float));
        }
    }
}

/* A last group of 3 to 5 tokens runs as a whole tile (tokens repeated), 1 or 2 one at a time. */
LLMR_FLOAT_KERNELS(neon, TILE_TOKENS, 3)
