/* Attention on arm64 NEON (Advanced SIMD, part of every arm64 CPU).
 *
 * attention_avx2.c's method on 4-lane vectors: flash attention's online softmax over blocks of 8
 * cache positions (a block's scores in two vectors, one position per lane), each block of K and
 * V rows loaded once for a tile of up to 4 tokens x the query heads that share it and reused
 * from L1 by the rest. Not the scalar kernel's arithmetic (another sum order, a polynomial exp,
 * a running max): within the bound tests/test_kernels.py holds the x86 kernels to, whose
 * reasoning (blocks of 8, an exp within 2 ulp) is this kernel's too; tests/neon/test_neon.c
 * checks it under qemu. A row's arithmetic does not depend on which other tokens and heads
 * share its tile, so any split between threads gives the same bits. An f16 cache is widened
 * as it is loaded (fcvtl, exact), a q8_0 one multiplied out (d * q, exact): the f32 arithmetic
 * on the same values, the same bits.
 *
 * Not yet timed on arm64 hardware (none here); its instruction counts are the AVX2 kernel's,
 * which ran 2.4x the scalar kernel there. */
#include <arm_neon.h>
#include <math.h>

#include "llmrun.h"

#define BLOCK 8 /* cache positions per step: two vectors of scores */
#define HEADS 8 /* at most this many query heads and */
#define TOKENS LLMR_ATTENTION_TOKENS /* this many tokens share a pass over K and V */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* e^x for x <= 0, within 2 ulp: exp_x86.h's method (x = n ln2 + r, Cephes' expf polynomial for
 * e^r, 2^n made in the exponent bits; clamped at -88, so -inf gives 0). */
ALWAYS_INLINE float32x4_t exp_nonpos4(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* Elements i .. i + 3 of a cache row of type kv as the floats they stand for (f16 widened,
 * q8_0's d * q); with n < 4 only the first n, through a zeroed copy, the other lanes 0 (a q8_0
 * row's hd being a multiple of 32, n is then 0 or less). */
ALWAYS_INLINE float32x4_t kv_load4(const void *row, int64_t i, int64_t n, int kv) {
    if (kv == LLMR_KV_Q8_0) {
        if (n < 4)
            return vdupq_n_f32(0.0f);
        const block_q8_0 *b = (const block_q8_0 *)row + i / QK8_0;
        int8_t q8[8] = {0};
        memcpy(q8, b->qs + i % QK8_0, 4);
        const int32x4_t q = vmovl_s16(vget_low_s16(vmovl_s8(vld1_s8(q8))));
        return vmulq_n_f32(vcvtq_f32_s32(q), llmr_f16_to_f32(b->d));
    }
    if (n >= 4)
        return kv == LLMR_KV_F16 ? vcvt_f32_f16(vld1_f16((const float16_t *)row + i))
                                 : vld1q_f32((const float *)row + i);
    if (kv == LLMR_KV_F16) {
        float16_t h[4] = {0};
        memcpy(h, (const float16_t *)row + i, (size_t)(n > 0 ? n : 0) * sizeof h[0]);
        return vcvt_f32_f16(vld1_f16(h));
    }
    float x[4] = {0};
    memcpy(x, (const float *)row + i, (size_t)(n > 0 ? n : 0) * sizeof x[0]);
    return vld1q_f32(x);
}

/* q's elements i .. i + 3, the first n of them (the others 0). */
ALWAYS_INLINE float32x4_t q_load4(const float *q, int64_t i, int64_t n) { return kv_load4(q, i, n, LLMR_KV_F32); }

/* For the R query rows q_r = q + r * hd (heads of one token that share the kv head), lanes of
 * s[r][0] and s[r][1]: the scores of positions 0-3 and 4-7, dot(q_r, row c) over hd floats, as
 * in attention_avx2.c: each K vector loaded (and widened or multiplied out) once for the R rows,
 * an FMA chain per row and position, then pairwise adds (a transpose folded into them): s[r]
 * does not depend on R. */
ALWAYS_INLINE void dots_n(float32x4_t (*s)[2], const float *q, const int R, const void *const row[BLOCK], int64_t hd,
                          int kv) {
    const int G = R <= 2 ? 8 : 4; /* positions at once: R * G chains (8 .. 16) in flight */
    float32x4_t acc[4][BLOCK];
    for (int c0 = 0; c0 < BLOCK; c0 += G) {
        float32x4_t a[16]; /* [g * R + r] */
        for (int j = 0; j < G * R; j++)
            a[j] = vdupq_n_f32(0.0f);
        for (int64_t i = 0; i < hd; i += 4) {
            float32x4_t qv[4];
            for (int r = 0; r < R; r++)
                qv[r] = q_load4(q + r * hd, i, hd - i);
            for (int g = 0; g < G; g++) {
                const float32x4_t x = kv_load4(row[c0 + g], i, hd - i, kv);
                for (int r = 0; r < R; r++)
                    a[g * R + r] = vfmaq_f32(a[g * R + r], qv[r], x);
            }
        }
        for (int g = 0; g < G; g++)
            for (int r = 0; r < R; r++)
                acc[r][c0 + g] = a[g * R + r];
    }
    for (int r = 0; r < R; r++)
        for (int h = 0; h < 2; h++)
            s[r][h] = vpaddq_f32(vpaddq_f32(acc[r][4 * h], acc[r][4 * h + 1]),
                                 vpaddq_f32(acc[r][4 * h + 2], acc[r][4 * h + 3]));
}

/* dots_n for the nh heads of one token (rows hd apart from q), in groups of at most 4 compiled
 * with their count fixed. */
ALWAYS_INLINE void dots(float32x4_t (*s)[2], const float *q, int64_t nh, const void *const row[BLOCK], int64_t hd,
                        int kv) {
    for (; nh >= 4; nh -= 4, q += 4 * hd, s += 4)
        dots_n(s, q, 4, row, hd, kv);
    if (nh == 3)
        dots_n(s, q, 3, row, hd, kv);
    else if (nh == 2)
        dots_n(s, q, 2, row, hd, kv);
    else if (nh == 1)
        dots_n(s, q, 1, row, hd, kv);
}

/* For the nr query rows r < nr of one token (sums at o + r * hd, weights at p + r * BLOCK):
 * o_r = f_r * o_r + sum over c < n of p_r[c] * V row c (rows stride elements apart),
 * attention_avx2.c's add_rows_n with four vectors of o per row in registers. */
ALWAYS_INLINE void add_rows_n(float *o, const float *f, const float *p, int nr, const void *row, int64_t n,
                              int64_t stride, int64_t hd, int kv) {
    for (int64_t i0 = 0; i0 < hd; i0 += 16) {
        float32x4_t acc[4][4];
        for (int e = 0; e < 4; e++)
            for (int r = 0; r < nr; r++)
                acc[r][e] = vmulq_n_f32(q_load4(o + r * hd, i0 + 4 * e, hd - i0 - 4 * e), f[r]);
        for (int64_t c = 0; c < n; c++) {
            const void *vc = llmr_kv_skip(row, c * stride, kv); /* row c: whole q8_0 blocks from it */
            for (int e = 0; e < 4; e++) {
                const float32x4_t x = kv_load4(vc, i0 + 4 * e, hd - i0 - 4 * e, kv);
                for (int r = 0; r < nr; r++)
                    acc[r][e] = vfmaq_n_f32(acc[r][e], x, p[r * BLOCK + c]);
            }
        }
        for (int e = 0; e < 4; e++)
            for (int r = 0; r < nr; r++) {
                const int64_t left = hd - i0 - 4 * e;
                if (left >= 4)
                    vst1q_f32(o + r * hd + i0 + 4 * e, acc[r][e]);
                else if (left > 0) {
                    float x[4];
                    vst1q_f32(x, acc[r][e]);
                    memcpy(o + r * hd + i0 + 4 * e, x, (size_t)left * sizeof x[0]);
                }
            }
    }
}

/* add_rows_n for any nr: four rows at a time (LLaMA-3's and most GQA models' heads per kv head,
 * compiled with the count fixed), then what is left. */
ALWAYS_INLINE void add_rows(float *o, const float *f, const float *p, int64_t nr, const void *row, int64_t n,
                            int64_t stride, int64_t hd, int kv) {
    for (int64_t r = 0; r < nr; r += 4) {
        if (nr - r >= 4)
            add_rows_n(o + r * hd, f + r, p + r * BLOCK, 4, row, n, stride, hd, kv);
        else
            add_rows_n(o + r * hd, f + r, p + r * BLOCK, (int)(nr - r), row, n, stride, hd, kv);
    }
}

/* Lanes j of the block (8 positions, two vectors) with lo <= j < hi: all ones, else 0. */
ALWAYS_INLINE void lanes_between(uint32x4_t m[2], int64_t lo, int64_t hi) {
    static const int32_t idx[BLOCK] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int h = 0; h < 2; h++) {
        const int32x4_t j = vld1q_s32(idx + 4 * h);
        m[h] = vandq_u32(vcgeq_s32(j, vdupq_n_s32((int32_t)(lo < 0 ? 0 : lo > BLOCK ? BLOCK : lo))),
                         vcltq_s32(j, vdupq_n_s32((int32_t)(hi < 0 ? 0 : hi > BLOCK ? BLOCK : hi))));
    }
}

/* attention_avx2.c's attend: a tile of nt tokens x nh query heads of one kv head, each row with
 * the arithmetic of the row alone, the running sums in acc (this thread's own). */
ALWAYS_INLINE void attend(float *out, float *acc, const float *q, const void *k, const void *v, int64_t nt, int64_t nh,
                          int64_t q_stride, int64_t hd, int64_t kv_stride, int64_t n_kv, int64_t window, float scale,
                          int kv) {
    float max[TOKENS * HEADS];        /* per row, the largest score so far */
    float32x4_t sum[TOKENS * HEADS][2]; /* per row and lane, the weights so far, relative to e^max */
    for (int64_t r = 0; r < nt * nh; r++) {
        max[r] = -INFINITY;
        sum[r][0] = sum[r][1] = vdupq_n_f32(0.0f);
    }
    memset(acc, 0, (size_t)(nt * nh * hd) * sizeof(float));
    const int64_t end = n_kv + nt - 1; /* the last token's positions */
    /* Token i sees [LO(i), n_kv + i): every position from 0, or the last `window` of them, on
     * the grid of multiples of BLOCK, lanes outside them masked: the same blocks whatever tile. */
#define LO(i) (window > 0 && n_kv + (i) > window ? n_kv + (i) - window : 0)
    for (int64_t j0 = LO(0) / BLOCK * BLOCK; j0 < end; j0 += BLOCK) {
        const int64_t n = end - j0 < BLOCK ? end - j0 : BLOCK;
        /* A short last block repeats its last row in the spare lanes (masked out). */
        const void *kr[BLOCK];
        for (int c = 0; c < BLOCK; c++)
            kr[c] = llmr_kv_skip(k, (j0 + (c < n ? c : n - 1)) * kv_stride, kv);
        for (int64_t i = j0 < n_kv ? 0 : j0 - n_kv + 1; i < nt && LO(i) < j0 + n; i++) { /* the tokens that see the block */
            const int64_t ni = n_kv + i - j0 < BLOCK ? n_kv + i - j0 : BLOCK;
            uint32x4_t seen[2];
            lanes_between(seen, LO(i) - j0, ni);
            float f[HEADS];
            float pc[HEADS * BLOCK];
            float32x4_t d[HEADS][2];
            dots(d, q + i * q_stride, nh, kr, hd, kv);
            for (int64_t h = 0; h < nh; h++) {
                const int64_t r = i * nh + h;
                float32x4_t *s = d[h];
                for (int e = 0; e < 2; e++)
                    s[e] = vbslq_f32(seen[e], vmulq_n_f32(s[e], scale), vdupq_n_f32(-INFINITY));
                const float block_max = vmaxvq_f32(vmaxq_f32(s[0], s[1]));
                const float new_max = block_max > max[r] ? block_max : max[r];
                /* what was summed, rescaled to the new max (first block: by 0) */
                f[h] = vgetq_lane_f32(exp_nonpos4(vdupq_n_f32(max[r] - new_max)), 0);
                max[r] = new_max;
                for (int e = 0; e < 2; e++) {
                    const float32x4_t p = exp_nonpos4(vsubq_f32(s[e], vdupq_n_f32(new_max)));
                    sum[r][e] = vaddq_f32(vmulq_n_f32(sum[r][e], f[h]), p);
                    vst1q_f32(pc + h * BLOCK + 4 * e, p);
                }
            }
            /* V rows from the row's first position in the block: a window's earlier rows are not read */
            const int64_t c0 = LO(i) > j0 ? LO(i) - j0 : 0;
            add_rows(acc + i * nh * hd, f, pc + c0, nh, llmr_kv_skip(v, (j0 + c0) * kv_stride, kv), ni - c0, kv_stride,
                     hd, kv);
        }
    }
#undef LO
    for (int64_t i = 0; i < nt; i++)
        for (int64_t h = 0; h < nh; h++) {
            const float *o = acc + (i * nh + h) * hd;
            const float inv = 1.0f / vaddvq_f32(vaddq_f32(sum[i * nh + h][0], sum[i * nh + h][1]));
            for (int64_t e = 0; e < hd; e++)
                out[i * q_stride + h * hd + e] = o[e] * inv;
        }
}

#define ATTENTION_ENTRY attention_neon
#include "attention_tiles.h"
