/* Scalar quantisers and dequantisers, one pair per type, plus the q16_a activation quantiser.
 *
 * Byte-exact with quant/reference.py, which follows GGUF's reference quantisers: every step is
 * one float32 operation in the same order (the build turns off FMA contraction, which would
 * skip a rounding), and scales are computed in f32 and only stored as f16. */
#include <math.h>

#include "llmrun.h"

/* C's roundf, halves away from zero, as GGUF's quantisers and quant.reference._round_away. */
static inline int round_away(float v) {
    return (int)roundf(v);
}

void quantize_row_f32_ref(const float *x, void *y, int64_t k) {
    memcpy(y, x, (size_t)k * sizeof(float));
}

void dequantize_row_f32_ref(const void *x, float *y, int64_t k) {
    memcpy(y, x, (size_t)k * sizeof(float));
}

/* f16 and bf16 rows go through memcpy per element: a row of a bytes object or an mmap'd file
 * need not be 2-byte aligned. */
void quantize_row_f16_ref(const float *x, void *y, int64_t k) {
    uint8_t *out = y;
    for (int64_t i = 0; i < k; i++) {
        const uint16_t h = llmr_f32_to_f16(x[i]);
        memcpy(out + 2 * i, &h, 2);
    }
}

void dequantize_row_f16_ref(const void *x, float *y, int64_t k) {
    /* Through an aligned buffer, so the conversion loop vectorises. */
    uint16_t h[256];
    for (int64_t i = 0; i < k; i += 256) {
        const int64_t n = k - i < 256 ? k - i : 256;
        memcpy(h, (const uint8_t *)x + 2 * i, (size_t)n * 2);
        for (int64_t j = 0; j < n; j++)
            y[i + j] = llmr_f16_to_f32(h[j]);
    }
}

void quantize_row_bf16_ref(const float *x, void *y, int64_t k) {
    uint8_t *out = y;
    for (int64_t i = 0; i < k; i++) {
        const uint16_t h = llmr_f32_to_bf16(x[i]);
        memcpy(out + 2 * i, &h, 2);
    }
}

void dequantize_row_bf16_ref(const void *x, float *y, int64_t k) {
    const uint8_t *in = x;
    for (int64_t i = 0; i < k; i++) {
        uint16_t h;
        memcpy(&h, in + 2 * i, 2);
        y[i] = llmr_bf16_to_f32(h);
    }
}

/* max |x| over a block of n (q8_0's and q16_a's blocks, both 32) */
static float abs_max(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++)
        amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    return amax;
}

/* A block with a NaN (an infinity) in it gets d NaN (infinite) and every q 0, so that it reads
 * back as NaN, as its values had gone (what a q8_0 KV cache, whose rows are the model's
 * activations, needs; weights are finite). */
void quantize_row_q8_0_ref(const float *x, void *y, int64_t k) {
    block_q8_0 *b = y;
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0) {
        float amax = abs_max(x, QK8_0);
        for (int j = 0; j < QK8_0; j++)
            amax = isnan(x[j]) ? x[j] : amax;
        const float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        id = isfinite(id) ? id : 0.0f; /* d NaN or infinite, or below ~3.7e-37 (the block then reads as 0) */
        b[i].d = llmr_f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++) {
            const float v = x[j] * id; /* within +-127.5 where id is finite and nonzero; else 0 or NaN */
            b[i].qs[j] = (int8_t)(v == v ? round_away(v) : 0);
        }
    }
}

void dequantize_row_q8_0_ref(const void *x, float *y, int64_t k) {
    const block_q8_0 *b = x;
    for (int64_t i = 0; i < k / QK8_0; i++, y += QK8_0) {
        const float d = llmr_f16_to_f32(b[i].d);
        for (int j = 0; j < QK8_0; j++)
            y[j] = d * b[i].qs[j];
    }
}

void quantize_row_q4_0_ref(const float *x, void *y, int64_t k) {
    block_q4_0 *b = y;
    for (int64_t i = 0; i < k / QK4_0; i++, x += QK4_0) {
        /* The signed value of largest magnitude, first one on ties (numpy's argmax), maps to
         * -8, so the full range -8 .. 7 is used on the side that needs it. */
        float max = x[0];
        for (int j = 1; j < QK4_0; j++)
            max = fabsf(x[j]) > fabsf(max) ? x[j] : max;
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = llmr_f32_to_f16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const int lo = (int)(x[j] * id + 8.5f);
            const int hi = (int)(x[j + QK4_0 / 2] * id + 8.5f);
            b[i].qs[j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
        }
    }
}

void dequantize_row_q4_0_ref(const void *x, float *y, int64_t k) {
    const block_q4_0 *b = x;
    for (int64_t i = 0; i < k / QK4_0; i++, y += QK4_0) {
        const float d = llmr_f16_to_f32(b[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = d * ((b[i].qs[j] & 0x0F) - 8);
            y[j + QK4_0 / 2] = d * ((b[i].qs[j] >> 4) - 8);
        }
    }
}

void quantize_row_q4_1_ref(const float *x, void *y, int64_t k) {
    block_q4_1 *b = y;
    for (int64_t i = 0; i < k / QK4_1; i++, x += QK4_1) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < QK4_1; j++) {
            lo = x[j] < lo ? x[j] : lo;
            hi = x[j] > hi ? x[j] : hi;
        }
        const float d = (hi - lo) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = llmr_f32_to_f16(d);
        b[i].m = llmr_f32_to_f16(lo);
        for (int j = 0; j < QK4_1 / 2; j++) {
            const int q0 = (int)((x[j] - lo) * id + 0.5f);
            const int q1 = (int)((x[j + QK4_1 / 2] - lo) * id + 0.5f);
            b[i].qs[j] = (uint8_t)((q0 < 15 ? q0 : 15) | (q1 < 15 ? q1 : 15) << 4);
        }
    }
}

void dequantize_row_q4_1_ref(const void *x, float *y, int64_t k) {
    const block_q4_1 *b = x;
    for (int64_t i = 0; i < k / QK4_1; i++, y += QK4_1) {
        const float d = llmr_f16_to_f32(b[i].d);
        const float m = llmr_f16_to_f32(b[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = d * (b[i].qs[j] & 0x0F) + m;
            y[j + QK4_1 / 2] = d * (b[i].qs[j] >> 4) + m;
        }
    }
}

/* The fifth bits of a block's 32 values q (0..31): bit j of the little-endian u32 qh. */
static void pack_q5(const int *q, uint8_t *qh, uint8_t *qs) {
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4);
        h |= (uint32_t)(q[j] >> 4 & 1) << j | (uint32_t)(q[j + 16] >> 4 & 1) << (j + 16);
    }
    for (int b = 0; b < 4; b++)
        qh[b] = (uint8_t)(h >> 8 * b);
}

static inline int q5_at(const uint8_t *qh, const uint8_t *qs, int j) {
    const int nib = j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4;
    return nib | (qh[j / 8] >> (j % 8) & 1) << 4;
}

/* llama.cpp's quantize_row_q5_0_ref: as q4_0, the value of largest magnitude (first on ties)
 * maps to -16. */
void quantize_row_q5_0_ref(const float *x, void *y, int64_t k) {
    block_q5_0 *b = y;
    for (int64_t i = 0; i < k / QK5_0; i++, x += QK5_0) {
        float max = x[0];
        for (int j = 1; j < QK5_0; j++)
            max = fabsf(x[j]) > fabsf(max) ? x[j] : max;
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[QK5_0];
        for (int j = 0; j < QK5_0; j++) {
            const int v = (int)(x[j] * id + 16.5f);
            q[j] = v < 31 ? v : 31;
        }
        b[i].d = llmr_f32_to_f16(d);
        pack_q5(q, b[i].qh, b[i].qs);
    }
}

void dequantize_row_q5_0_ref(const void *x, float *y, int64_t k) {
    const block_q5_0 *b = x;
    for (int64_t i = 0; i < k / QK5_0; i++, y += QK5_0) {
        const float d = llmr_f16_to_f32(b[i].d);
        for (int j = 0; j < QK5_0; j++)
            y[j] = d * (float)(q5_at(b[i].qh, b[i].qs, j) - 16);
    }
}

/* quantize_row_q5_1_ref: as q4_1, with 31 steps. */
void quantize_row_q5_1_ref(const float *x, void *y, int64_t k) {
    block_q5_1 *b = y;
    for (int64_t i = 0; i < k / QK5_1; i++, x += QK5_1) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < QK5_1; j++) {
            lo = x[j] < lo ? x[j] : lo;
            hi = x[j] > hi ? x[j] : hi;
        }
        const float d = (hi - lo) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[QK5_1];
        for (int j = 0; j < QK5_1; j++) {
            const int v = (int)((x[j] - lo) * id + 0.5f);
            q[j] = v < 31 ? v : 31;
        }
        b[i].d = llmr_f32_to_f16(d);
        b[i].m = llmr_f32_to_f16(lo);
        pack_q5(q, b[i].qh, b[i].qs);
    }
}

void dequantize_row_q5_1_ref(const void *x, float *y, int64_t k) {
    const block_q5_1 *b = x;
    for (int64_t i = 0; i < k / QK5_1; i++, y += QK5_1) {
        const float d = llmr_f16_to_f32(b[i].d);
        const float m = llmr_f16_to_f32(b[i].m);
        for (int j = 0; j < QK5_1; j++)
            y[j] = d * (float)q5_at(b[i].qh, b[i].qs, j) + m;
    }
}

void quantize_row_q16_a_ref(const float *x, block_q16_a *y, int64_t k) {
    for (int64_t i = 0; i < k / QK_Q16_A; i++, x += QK_Q16_A) {
        const float d = abs_max(x, QK_Q16_A) / 32767.0f;
        const float id = llmr_q16_a_inverse(d);
        int sum = 0;
        for (int j = 0; j < QK_Q16_A; j++) {
            const float v = x[j] * id;
            const int q = v == v ? round_away(v) : 0; /* NaN: 0 */
            y[i].qs[j] = (int16_t)q;
            sum += q;
        }
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

void q16_b_from_a_ref(const block_q16_a *a, block_q16_b *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        b[i].d = a[i].d;
        b[i].s = a[i].s;
        for (int h = 0; h < 2; h++) {
            int sum = 0;
            for (int j = 16 * h; j < 16 * h + 16; j++) {
                b[i].lo[j] = (uint8_t)(a[i].qs[j] & 0xFF);
                b[i].hi[j] = (int8_t)((a[i].qs[j] - (a[i].qs[j] & 0xFF)) / 256); /* exact: floor(qs / 256) */
                sum += a[i].qs[j];
            }
            b[i].s16[h] = a[i].d * (float)sum;
        }
    }
}

/* ---- q4_k, q5_k: llama.cpp's quantize_row_q4_K_ref and _q5_K_ref, operation for operation (float32, no FMA: the
 * build has -ffp-contract=off), so the bytes are llama.cpp's and quant/reference.py's. */

/* llama.cpp's nearest_int: round half to even (|v| < 2^22 here). */
static inline int nearest_int(float v) {
    float val = v + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* The k-quants' searches fit each sub-block alone, in float32 operations whose order fixes the
 * bytes; their sums make long chains, each add waiting on the last. So they run LANES sub-blocks
 * side by side, as vectors where the compiler has them (GCC's and Clang's vector types: the same
 * IEEE operations lane by lane, none contracted into an FMA by this build), one at a time where
 * not (LANES 1, the same code on plain floats): the bytes are the same either way. A call fits
 * `lanes` (at most LANES) sub-blocks of n values, the i-th value of sub-block j at x[n j + i];
 * spare lanes repeat sub-block 0. */
/* (GCC 9 has __builtin_convertvector; LLMR_ONE_LANE: the plain-float build, to test it here) */
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)) && !defined(LLMR_ONE_LANE)
#define LANES 8
typedef float lanes_f __attribute__((vector_size(4 * LANES)));
typedef int32_t lanes_i __attribute__((vector_size(4 * LANES))); /* comparisons: -1 true, 0 false */
#define LANE(v, j) ((v)[j])
#define AS_BITS(v) ((lanes_i)(v)) /* the same bits */
#define AS_FLOATS(b) ((lanes_f)(b))
/* and where the toolchain can (GCC 12, x86-64, glibc's ifunc), the lane searches built for AVX2 and
 * AVX-512 too, the loader picking one for the CPU (the same operations, so the same bytes;
 * LLMR_NO_CLONES: the baseline build alone, to test it on any CPU) */
#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    !defined(LLMR_NO_CLONES)
#define LANE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LANE_CLONES
#endif
#define PICK(m, a, b) ((lanes_f)(((m) & (lanes_i)(a)) | (~(m) & (lanes_i)(b)))) /* m ? a : b */
#define PICK_I(m, a, b) (((m) & (a)) | (~(m) & (b)))
#define TO_FLOAT(v) __builtin_convertvector(v, lanes_f)
#else
#define LANES 1
#define LANE_CLONES
typedef float lanes_f;
typedef int32_t lanes_i;
#define LANE(v, j) (v)
static inline int32_t float_bits(float v) {
    int32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}
static inline float bits_float(int32_t b) {
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}
#define AS_BITS(v) float_bits(v)
#define AS_FLOATS(b) bits_float(b)
#define PICK(m, a, b) ((m) ? (a) : (b))
#define PICK_I(m, a, b) ((m) ? (a) : (b))
#define TO_FLOAT(v) ((float)(v))
#endif
#define LANE_MAX_N 32 /* values per sub-block, at most */

/* nearest_int lane by lane (an expression: no vector is passed to a function, whose ABI for
 * vectors wider than the baseline's registers the compiler warns about) */
#define NEAREST_INTS(v) ((AS_BITS((v) + 12582912.f) & 0x007fffff) - 0x00400000)
#define ABS_LANES(v) AS_FLOATS(AS_BITS(v) & 0x7fffffff)
/* the lanes of l clamped to lo .. hi (one comparison a step) */
#define CLAMP_INTS(l, lo, hi) ((l) = PICK_I((l) < (lo), (lo), (l)), (l) = PICK_I((l) > (hi), (hi), (l)))

/* values[i] lane j = v[n j + i] (j < lanes; spare lanes sub-block 0's) */
static void to_lanes(int lanes, int n, const float *v, lanes_f values[LANE_MAX_N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < LANES; j++) LANE(values[i], j) = v[n * (j < lanes ? j : 0) + i];
}

/* make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad) on each
 * lane: the sub-block's scale and -min (the_min) and its quants L (0 .. nmax); errors weighted
 * squares (q4_k, q5_k) or, with use_mad, weighted absolute values (q2_k). */
LANE_CLONES static void qkx2_lanes(int lanes, int n, int nmax, const float *x, const float *weights, uint8_t *L,
                                   float *scale_out, float *the_min, float rmin, float rdelta, int nstep,
                                   int use_mad) {
    const lanes_f zero = {0};
    lanes_f X[LANE_MAX_N] = {0}, W[LANE_MAX_N] = {0};
    to_lanes(lanes, n, x, X);
    to_lanes(lanes, n, weights, W);
    lanes_f min = X[0], max = X[0], sum_w = W[0], sum_x = sum_w * X[0];
    for (int i = 1; i < n; ++i) {
        min = PICK(X[i] < min, X[i], min);
        max = PICK(X[i] > max, X[i], max);
        sum_w += W[i];
        sum_x += W[i] * X[i];
    }
    min = PICK(min > 0.f, zero, min);
    /* a flat sub-block (max == min) keeps L = 0, scale 0 and this min: its lane's search below is
     * noise, never read */
    const lanes_f flat_min = min;
    lanes_f iscale = (float)nmax / (max - min), scale = 1.f / iscale, best_mad = zero;
    lanes_i Lbest[LANE_MAX_N], Laux[LANE_MAX_N];
    for (int i = 0; i < n; ++i) {
        Lbest[i] = NEAREST_INTS(iscale * (X[i] - min));
        CLAMP_INTS(Lbest[i], 0, nmax);
        const lanes_f diff = scale * TO_FLOAT(Lbest[i]) + min - X[i];
        best_mad += W[i] * (use_mad ? ABS_LANES(diff) : diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min); /* min: the best fit's so far */
        lanes_f sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < n; ++i) {
            Laux[i] = NEAREST_INTS(iscale * (X[i] - min));
            CLAMP_INTS(Laux[i], 0, nmax);
            const lanes_f l = TO_FLOAT(Laux[i]), w = W[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * X[i];
        }
        const lanes_f D = sum_w * sum_l2 - sum_l * sum_l;
        lanes_f this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        lanes_f this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        const lanes_i positive = this_min > 0.f;
        this_min = PICK(positive, zero, this_min);
        this_scale = PICK(positive, sum_xl / sum_l2, this_scale);
        lanes_f mad = zero;
        for (int i = 0; i < n; ++i) {
            const lanes_f diff = this_scale * TO_FLOAT(Laux[i]) + this_min - X[i];
            mad += W[i] * (use_mad ? ABS_LANES(diff) : diff * diff);
        }
        const lanes_i better = (D > 0.f) & (mad < best_mad);
        best_mad = PICK(better, mad, best_mad);
        scale = PICK(better, this_scale, scale);
        min = PICK(better, this_min, min);
        for (int i = 0; i < n; ++i) Lbest[i] = PICK_I(better, Laux[i], Lbest[i]);
    }
    for (int j = 0; j < lanes; j++) {
        const int flat = LANE(max, j) == LANE(flat_min, j);
        scale_out[j] = flat ? 0.f : LANE(scale, j);
        the_min[j] = -(flat ? LANE(flat_min, j) : LANE(min, j));
        for (int i = 0; i < n; i++) L[n * j + i] = (uint8_t)(flat ? 0 : LANE(Lbest[i], j));
    }
}

/* qkx2_lanes over `count` sub-blocks, LANES at a time */
static void make_qkx2_quants(int count, int n, int nmax, const float *x, const float *weights, uint8_t *L,
                             float *scale, float *the_min, float rmin, float rdelta, int nstep, int use_mad) {
    for (int j = 0; j < count; j += LANES)
        qkx2_lanes(count - j < LANES ? count - j : LANES, n, nmax, x + n * j, weights + n * j, L + n * j, scale + j,
                   the_min + j, rmin, rdelta, nstep, use_mad);
}

/* What quantize_row_q4_K_ref and quantize_row_q5_K_ref share, for one super-block x: per
 * sub-block make_qkx2_quants(nmax, fit's rmin, rdelta, nstep), then the block's first 16 bytes
 * (the f16 d and dmin, the 6-bit scales and mins packed in 12 bytes: the same in both), then
 * every value quantised again with them into L (0..nmax). llama.cpp's fit: rdelta 0.1, grid 0, no
 * importance; the calibrated quantiser's (llmr_k_fit) multiplies each value's weight by its
 * importance (the super-block's 256, or NULL) and puts the largest scale and min at 63 + grid. */
static void k_quants(const float *x, int nmax, const llmr_k_fit *fit, const float *importance, uint8_t head[16],
                     uint8_t L[QK_K]) {
    uint8_t *packed = head + 4;
    float weights[QK_K], mins[QK_K / 32], scales[QK_K / 32];
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[32 * j + l] = av_x + fabsf(x[32 * j + l]);
        if (importance)
            for (int l = 0; l < 32; ++l) weights[32 * j + l] *= importance[32 * j + l];
    }
    make_qkx2_quants(QK_K / 32, 32, nmax, x, weights, L, scales, mins, fit->rmin, fit->rdelta, fit->nstep, 0);
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float top = (float)(63.0 + fit->grid);
    const float inv_scale = max_scale > 0 ? top / max_scale : 0.f;
    const float inv_min = max_min > 0 ? top / max_min : 0.f;
    memset(packed, 0, 12);
    for (int j = 0; j < QK_K / 32; ++j) {
        int ls = (uint8_t)nearest_int(inv_scale * scales[j]), lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls > 63 ? 63 : ls;
        lm = lm > 63 ? 63 : lm;
        if (j < 4) {
            packed[j] = (uint8_t)ls;
            packed[j + 4] = (uint8_t)lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    const uint16_t d16 = llmr_f32_to_f16(max_scale / top), dmin16 = llmr_f32_to_f16(max_min / top);
    memcpy(head, &d16, 2);
    memcpy(head + 2, &dmin16, 2);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        llmr_q4_k_scale_min(j, packed, &sc, &m);
        const float d = llmr_f16_to_f32(d16) * sc;
        if (!d) continue;
        const float dm = llmr_f16_to_f32(dmin16) * m;
        for (int ii = 0; ii < 32; ++ii) {
            const int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        }
    }
}

void quantize_row_q4_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance) {
    block_q4_K *b = y;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        k_quants(x, 15, fit, importance ? importance + i * QK_K : NULL, (uint8_t *)&b[i], L);
        uint8_t *q = b[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

/* llama.cpp's quantize_row_q5_K_ref: q4_k's with 5-bit quants; element 32s + l keeps its low four
 * bits as q4_k's and its fifth as bit s of qh[l]. */
void quantize_row_q5_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance) {
    block_q5_K *b = y;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        k_quants(x, 31, fit, importance ? importance + i * QK_K : NULL, (uint8_t *)&b[i], L);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int s = 0; s < QK_K / 32; s++)
            for (int l = 0; l < 32; l++)
                b[i].qh[l] |= (uint8_t)((L[32 * s + l] >> 4) << s);
        uint8_t *q = b[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)((L[j + l] & 0xF) | ((L[j + l + 32] & 0xF) << 4));
    }
}

const llmr_k_fit llmr_q4_k_fit = {.rmin = -1.f, .rdelta = 0.1f, .nstep = 20, .grid = 0};
const llmr_k_fit llmr_q5_k_fit = {.rmin = -0.5f, .rdelta = 0.1f, .nstep = 15, .grid = 0};
const llmr_k_fit llmr_q6_k_fit = {.grid = 0}; /* its search is make_qx_quants' fixed 19 grids */

void quantize_row_q4_K_ref(const float *x, void *y, int64_t k) { quantize_row_q4_K_fit(x, y, k, &llmr_q4_k_fit, NULL); }
void quantize_row_q5_K_ref(const float *x, void *y, int64_t k) { quantize_row_q5_K_fit(x, y, k, &llmr_q5_k_fit, NULL); }

/* ggml's dequantize_row_q4_K: d * sc and dmin * m first (exact), then d1 * q - m1 (one rounding
 * each; -ffp-contract=off keeps them apart, as gguf-py's numpy). */
void dequantize_row_q4_K_ref(const void *x, float *y, int64_t k) {
    const block_q4_K *b = x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(b[i].d), dmin = llmr_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int j = 0; j < QK_K / 32; j++) {
            uint8_t sc, m;
            llmr_q4_k_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            const uint8_t *qj = q + 32 * (j / 2);
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(j % 2 ? qj[l] >> 4 : qj[l] & 0xF) - m1;
        }
    }
}

/* ---- q6_k: llama.cpp's quantize_row_q6_K_ref, operation for operation (as q4_k's above), so
 * the bytes are llama.cpp's and quant/reference.py's. */

#define GROUP_MAX_EPS 1e-15f /* ggml's: a sub-block of smaller values counts as all zero */
#define Q6_K_SUB 16           /* values per q6_k sub-block, each with its own int8 scale */

/* Each lane's weights, as make_qx_quants and make_q3_quants weigh: x^2 (times the importance), or
 * the given weights. */
static void qx_weights(int lanes, const lanes_f X[Q6_K_SUB], const float *importance, const float *weights,
                       lanes_f W[LANE_MAX_N]) {
    if (weights) {
        to_lanes(lanes, Q6_K_SUB, weights, W);
        return;
    }
    if (importance)
        to_lanes(lanes, Q6_K_SUB, importance, W);
    for (int i = 0; i < Q6_K_SUB; i++) W[i] = importance ? X[i] * X[i] * W[i] : X[i] * X[i];
}

/* The value of largest magnitude in each lane, the first of equals (amax: its magnitude). */
static void largest(const lanes_f X[Q6_K_SUB], lanes_f *amax, lanes_f *max) {
    const lanes_f zero = {0};
    *amax = *max = zero;
    for (int i = 0; i < Q6_K_SUB; i++) {
        const lanes_i bigger = ABS_LANES(X[i]) > *amax;
        *amax = PICK(bigger, ABS_LANES(X[i]), *amax);
        *max = PICK(bigger, X[i], *max);
    }
}

/* One trial grid of make_qx_quants: l = round(iscale x) clamped to -nmax .. nmax - 1, and the
 * sums of w x l and w l^2, in element order. */
#define QX_TRIAL(iscale, l, sumlx, suml2)                                                                         \
    do {                                                                                                       \
        sumlx = suml2 = zero;                                                                                  \
        for (int i = 0; i < Q6_K_SUB; i++) {                                                                   \
            l[i] = NEAREST_INTS((iscale) * X[i]);                                                              \
            CLAMP_INTS(l[i], -nmax, nmax - 1);                                                                 \
            const lanes_f q = TO_FLOAT(l[i]);                                                                  \
            sumlx += W[i] * X[i] * q;                                                                          \
            suml2 += W[i] * q * q;                                                                             \
        }                                                                                                      \
    } while (0)

/* make_qx_quants(16, nmax, x, L, rmse_type = 1, qw = NULL) on each lane: the signed scale whose
 * grid fits the sub-block best (least squares weighted by x^2) among 1 / iscale for iscale =
 * -(nmax + 0.1 s) / max, s = 0, -9 .. 9, max the value of largest magnitude; L = l + nmax. An
 * all-zero sub-block (below GROUP_MAX_EPS) gets scale 0 and L = 0. `importance` multiplies the
 * weights, or `weights` replace them (NULL: neither). */
LANE_CLONES static void qx_lanes(int lanes, int nmax, const float *x, uint8_t *L, float *scale_out,
                                 const float *importance, const float *weights) {
    const lanes_f zero = {0};
    lanes_f X[LANE_MAX_N] = {0}, W[LANE_MAX_N] = {0}, amax, max, sumlx, suml2;
    to_lanes(lanes, Q6_K_SUB, x, X);
    qx_weights(lanes, X, importance, weights, W);
    largest(X, &amax, &max);
    lanes_i l[Q6_K_SUB], best_l[Q6_K_SUB];
    QX_TRIAL((float)-nmax / max, best_l, sumlx, suml2);
    lanes_f scale = PICK(suml2 != 0.f, sumlx / suml2, zero);
    lanes_f best = scale * sumlx;
    for (int s = -9; s <= 9; s++) {
        if (s == 0) continue;
        QX_TRIAL(-(nmax + 0.1f * s) / max, l, sumlx, suml2);
        const lanes_i better = (suml2 > 0.f) & (sumlx * sumlx > best * suml2);
        for (int i = 0; i < Q6_K_SUB; i++) best_l[i] = PICK_I(better, l[i], best_l[i]);
        scale = PICK(better, sumlx / suml2, scale);
        best = PICK(better, scale * sumlx, best);
    }
    for (int j = 0; j < lanes; j++) {
        const int all_zero = LANE(amax, j) < GROUP_MAX_EPS;
        scale_out[j] = all_zero ? 0.f : LANE(scale, j);
        for (int i = 0; i < Q6_K_SUB; i++) L[Q6_K_SUB * j + i] = (uint8_t)(all_zero ? 0 : LANE(best_l[i], j) + nmax);
    }
}

/* qx_lanes over `count` sub-blocks of 16, LANES at a time (importance and weights: theirs, or NULL) */
static void make_qx_quants(int count, int nmax, const float *x, uint8_t *L, float *scale, const float *importance,
                           const float *weights) {
    for (int j = 0; j < count; j += LANES) {
        const int at = Q6_K_SUB * j;
        qx_lanes(count - j < LANES ? count - j : LANES, nmax, x + at, L + at, scale + j,
                 importance ? importance + at : NULL, weights ? weights + at : NULL);
    }
}

void quantize_row_q6_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance) {
    block_q6_K *b = y;
    uint8_t L[QK_K];
    float scales[QK_K / Q6_K_SUB];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        const float *imp = importance ? importance + i * QK_K : NULL;
        /* each sub-block's own scale; the largest in magnitude (the first of equals) sets d */
        float max_abs = 0, max_scale = 0;
        make_qx_quants(QK_K / Q6_K_SUB, 32, x, L, scales, imp, NULL);
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            if (fabsf(scales[j]) > max_abs) {
                max_abs = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(&b[i], 0, sizeof b[i]);
        if (max_abs < GROUP_MAX_EPS) /* all zero: d = 0, every byte 0 */
            continue;
        /* the scales as int8 in units of d = max_scale / -(128 + grid), then the quants again against them */
        const float iscale = (float)(-128.0 - fit->grid) / max_scale;
        b[i].d = llmr_f32_to_f16(1 / iscale);
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            const int sc = nearest_int(iscale * scales[j]);
            b[i].scales[j] = (int8_t)(sc < 127 ? sc : 127);
        }
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            const float d = llmr_f16_to_f32(b[i].d) * b[i].scales[j];
            if (!d) /* a scale that rounded to 0 keeps make_qx_quants' quants */
                continue;
            for (int e = Q6_K_SUB * j; e < Q6_K_SUB * (j + 1); e++) {
                const int l = nearest_int(x[e] / d);
                L[e] = (uint8_t)((l < -32 ? -32 : l > 31 ? 31 : l) + 32);
            }
        }
        /* the bit layout llmr_q6_k_quant reads */
        for (int e = 0; e < QK_K; e++) {
            const int h = e / 128, kk = e % 128 / 32, l = e % 32;
            b[i].ql[64 * h + 32 * (kk % 2) + l] |= (uint8_t)((L[e] & 0x0F) << 4 * (kk / 2));
            b[i].qh[32 * h + l] |= (uint8_t)((L[e] >> 4) << 2 * kk);
        }
    }
}

void quantize_row_q6_K_ref(const float *x, void *y, int64_t k) { quantize_row_q6_K_fit(x, y, k, &llmr_q6_k_fit, NULL); }

/* ggml's dequantize_row_q6_K: d * sc first (exact: 11 x 8 bits), then times q - 32. */
void dequantize_row_q6_K_ref(const void *x, float *y, int64_t k) {
    const block_q6_K *b = x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(b[i].d);
        for (int e = 0; e < QK_K; e++)
            *y++ = d * b[i].scales[e / Q6_K_SUB] * (float)llmr_q6_k_quant(&b[i], e);
    }
}

/* ggml's dequantize_row_q5_K: q4_k's arithmetic, the quant with its fifth bit. */
void dequantize_row_q5_K_ref(const void *x, float *y, int64_t k) {
    const block_q5_K *b = x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(b[i].d), dmin = llmr_f16_to_f32(b[i].dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            uint8_t sc, m;
            llmr_q4_k_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)llmr_q5_k_quant(&b[i], 32 * j + l) - m1;
        }
    }
}

/* ---- q3_k, q2_k: llama.cpp's quantize_row_q3_K_ref and quantize_row_q2_K_ref, operation for
 * operation (as q4_k's above), so the bytes are llama.cpp's and quant/reference.py's. */

/* The 2-bit fields of 256 values L (0..3) into qs[64]: element 128h + 32k + l at bits 2k of
 * qs[32h + l] (llmr_q2_k_quant reads them back). */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

/* make_q3_quants(16, nmax, x, L, do_rmse = true) on each lane: the grid of -nmax / max (max the
 * value of largest magnitude), then passes over the values, each moving one quant where that
 * improves the x^2-weighted least-squares fit; the fit's scale, L = l + nmax. The C stops after
 * five passes or one that changes nothing; the lanes take five (a pass that changed nothing would
 * change nothing again). An all-zero sub-block (below GROUP_MAX_EPS) gets scale 0 and L = 0.
 * `importance` (NULL: none) multiplies the weights. */
LANE_CLONES static void q3_lanes(int lanes, int nmax, const float *x, uint8_t *L, float *scale_out,
                                 const float *importance) {
    const lanes_f zero = {0};
    lanes_f X[LANE_MAX_N] = {0}, W[LANE_MAX_N] = {0}, amax, max, sumlx = zero, suml2 = zero;
    to_lanes(lanes, Q6_K_SUB, x, X);
    qx_weights(lanes, X, importance, NULL, W);
    largest(X, &amax, &max);
    const lanes_f iscale = (float)-nmax / max;
    lanes_i l[Q6_K_SUB];
    for (int i = 0; i < Q6_K_SUB; i++) {
        l[i] = NEAREST_INTS(iscale * X[i]);
        CLAMP_INTS(l[i], -nmax, nmax - 1);
        sumlx += W[i] * X[i] * TO_FLOAT(l[i]);
        suml2 += W[i] * TO_FLOAT(l[i]) * TO_FLOAT(l[i]);
    }
    for (int itry = 0; itry < 5; ++itry)
        for (int i = 0; i < Q6_K_SUB; i++) {
            const lanes_f q = TO_FLOAT(l[i]);
            lanes_f slx = sumlx - W[i] * X[i] * q, sl2 = suml2 - W[i] * q * q;
            lanes_i new_l = NEAREST_INTS(X[i] * sl2 / slx);
            CLAMP_INTS(new_l, -nmax, nmax - 1);
            const lanes_i movable = (slx > 0.f) & (new_l != l[i]);
            const lanes_f nq = TO_FLOAT(new_l);
            slx += W[i] * X[i] * nq;
            sl2 += W[i] * nq * nq;
            const lanes_i take = movable & (sl2 > 0.f) & (slx * slx * suml2 > sumlx * sumlx * sl2);
            l[i] = PICK_I(take, new_l, l[i]);
            sumlx = PICK(take, slx, sumlx);
            suml2 = PICK(take, sl2, suml2);
        }
    const lanes_f scale = PICK(suml2 > 0.f, sumlx / suml2, zero);
    for (int j = 0; j < lanes; j++) {
        const int all_zero = LANE(amax, j) < GROUP_MAX_EPS;
        scale_out[j] = all_zero ? 0.f : LANE(scale, j);
        for (int i = 0; i < Q6_K_SUB; i++) L[Q6_K_SUB * j + i] = (uint8_t)(all_zero ? 0 : LANE(l[i], j) + nmax);
    }
}

/* A super-block's mean square, summed in order (as quant/reference.py's _sum). */
static float mean_square(const float *x) {
    float s = -0.f;
    for (int e = 0; e < QK_K; e++) s += x[e] * x[e];
    return s / QK_K;
}

/* The weights of the calibrated q2_k and q3_k sub-block fits: each value's importance times
 * sqrt(sigma2 + x^2), as imatrix quantisers weigh; and each sub-block's summed weight, in order. */
static void spread_weights(const float *x, const float *importance, float sigma2, float w[QK_K],
                           float sub_w[QK_K / Q6_K_SUB]) {
    for (int e = 0; e < QK_K; e++) w[e] = importance[e] * sqrtf(sigma2 + x[e] * x[e]);
    for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
        float s = -0.f;
        for (int l = 0; l < Q6_K_SUB; l++) s += w[Q6_K_SUB * j + l];
        sub_w[j] = s;
    }
}

/* With importance, fit's `search` fits each sub-block by make_qx_quants' grids with spread_weights
 * (sigma2 twice the mean square) and its scales on the 6-bit grid by the same search, weighted by
 * the sub-blocks' summed weights; else make_q3_quants (the importance in its weights) and the
 * largest scale at -(32 + grid). */
void quantize_row_q3_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance) {
    block_q3_K *b = y;
    uint8_t L[QK_K];
    float scales[QK_K / Q6_K_SUB], w[QK_K], sub_w[QK_K / Q6_K_SUB];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        const float *imp = importance ? importance + i * QK_K : NULL;
        const int search = fit->search && imp;
        if (search)
            spread_weights(x, imp, 2.f * mean_square(x), w, sub_w);
        /* each sub-block's own scale; the largest in magnitude (the first of equals) sets d */
        if (search)
            make_qx_quants(QK_K / Q6_K_SUB, 4, x, L, scales, NULL, w);
        else
            for (int j = 0; j < QK_K / Q6_K_SUB; j += LANES)
                q3_lanes(QK_K / Q6_K_SUB - j < LANES ? QK_K / Q6_K_SUB - j : LANES, 4, x + Q6_K_SUB * j, L + Q6_K_SUB * j,
                         scales + j, imp ? imp + Q6_K_SUB * j : NULL);
        float amax = 0, max_scale = 0;
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(&b[i], 0, sizeof b[i]);
        if (max_scale) { /* the scales as 6-bit codes l - 32 in units of d */
            uint8_t l[QK_K / Q6_K_SUB];
            float d;
            if (search) {
                make_qx_quants(1, 32, scales, l, &d, NULL, sub_w);
            } else { /* d = max_scale / -(32 + grid) */
                const float iscale = (float)(-32.0 - fit->grid) / max_scale;
                for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
                    const int c = nearest_int(iscale * scales[j]);
                    l[j] = (uint8_t)((c < -32 ? -32 : c > 31 ? 31 : c) + 32);
                }
                d = 1 / iscale;
            }
            for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
                b[i].scales[j % 8] |= (uint8_t)((l[j] & 0xF) << 4 * (j / 8));
                b[i].scales[8 + j % 4] |= (uint8_t)((l[j] >> 4) << 2 * (j / 4));
            }
            b[i].d = llmr_f32_to_f16(d);
        }
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            const float d = llmr_f16_to_f32(b[i].d) * llmr_q3_k_scale(b[i].scales, j);
            if (!d) /* a scale that rounded to 0 keeps make_q3_quants' quants */
                continue;
            for (int e = Q6_K_SUB * j; e < Q6_K_SUB * (j + 1); e++) {
                const int l = nearest_int(x[e] / d);
                L[e] = (uint8_t)((l < -4 ? -4 : l > 3 ? 3 : l) + 4);
            }
        }
        /* the third bit of element e at bit e / 32 of hmask[e % 32], the low two as q2_k's */
        for (int e = 0; e < QK_K; e++)
            if (L[e] > 3) {
                b[i].hmask[e % 32] |= (uint8_t)(1 << e / 32);
                L[e] -= 4;
            }
        pack_2bit(L, b[i].qs);
    }
}

void quantize_row_q3_K_ref(const float *x, void *y, int64_t k) {
    const llmr_k_fit plain = {0};
    quantize_row_q3_K_fit(x, y, k, &plain, NULL);
}

/* quant/reference.py's _fit_codes: non-negative values v[16] on the grid d * l, l in 0 .. nmax, by
 * the least squared error weighted by w, among the grids nmax / max and 18 around it (each d
 * fitted by weighted least squares, as f16): d's f16 bits, the codes into l. */
static uint16_t fit_codes(const float *v, const float *w, int nmax, uint8_t l[Q6_K_SUB]) {
    float vmax = v[0];
    for (int i = 1; i < Q6_K_SUB; i++)
        if (v[i] > vmax) vmax = v[i];
    uint16_t d = 0;
    memset(l, 0, Q6_K_SUB);
    if (!(vmax > 0))
        return d;
    float best_err = INFINITY;
    for (int s = -9; s <= 9; s++) {
        const float iscale = ((float)nmax + 0.1f * (float)s) / vmax;
        uint8_t lc[Q6_K_SUB];
        float num = -0.f, den = -0.f;
        for (int i = 0; i < Q6_K_SUB; i++) {
            const int c = nearest_int(iscale * v[i]);
            lc[i] = (uint8_t)(c < 0 ? 0 : c > nmax ? nmax : c);
            den += w[i] * (float)lc[i] * (float)lc[i];
            num += w[i] * v[i] * (float)lc[i];
        }
        const uint16_t dc = llmr_f32_to_f16(den > 0 ? num / den : 0.f);
        const float dcf = llmr_f16_to_f32(dc);
        float err = -0.f;
        for (int i = 0; i < Q6_K_SUB; i++) {
            const float diff = v[i] - dcf * (float)lc[i];
            err += w[i] * (diff * diff);
        }
        if (err < best_err) {
            best_err = err;
            d = dc;
            memcpy(l, lc, Q6_K_SUB);
        }
    }
    return d;
}

/* With importance, each value weighs spread_weights' (sigma2 the mean square) in fit's search of
 * squared errors, and the scales and mins go on their 4-bit grids by fit_codes, weighted by the
 * sub-blocks' summed weights; else llama.cpp's (weights |x|, absolute errors). */
void quantize_row_q2_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance) {
    block_q2_K *b = y;
    uint8_t L[QK_K];
    float w[QK_K], sub_w[QK_K / Q6_K_SUB], mins[QK_K / Q6_K_SUB], scales[QK_K / Q6_K_SUB];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        const float *imp = importance ? importance + i * QK_K : NULL;
        if (imp)
            spread_weights(x, imp, mean_square(x), w, sub_w);
        else
            for (int e = 0; e < QK_K; e++) w[e] = fabsf(x[e]);
        make_qkx2_quants(QK_K / Q6_K_SUB, Q6_K_SUB, 3, x, w, L, scales, mins, fit->rmin, fit->rdelta, fit->nstep, !imp);
        float max_scale = 0, max_min = 0; /* as the C: from +0, so a -0.0 min never gets in */
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        /* 4-bit codes of the scales (low nibbles) and mins (high); as llama.cpp, the int code is
         * stored as a byte unclamped */
        uint16_t d16 = 0, dmin16 = 0;
        memset(b[i].scales, 0, sizeof b[i].scales);
        if (imp) {
            uint8_t ls[Q6_K_SUB], lm[Q6_K_SUB];
            d16 = fit_codes(scales, sub_w, 15, ls);
            dmin16 = fit_codes(mins, sub_w, 15, lm);
            for (int j = 0; j < QK_K / Q6_K_SUB; j++) b[i].scales[j] = (uint8_t)(ls[j] | lm[j] << 4);
        } else if (max_scale > 0) {
            const float iscale = 15.f / max_scale;
            for (int j = 0; j < QK_K / Q6_K_SUB; j++) b[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            d16 = llmr_f32_to_f16(max_scale / 15.f);
        }
        if (!imp && max_min > 0) {
            const float iscale = 15.f / max_min;
            for (int j = 0; j < QK_K / Q6_K_SUB; j++)
                b[i].scales[j] |= (uint8_t)((unsigned)nearest_int(iscale * mins[j]) << 4);
            dmin16 = llmr_f32_to_f16(max_min / 15.f);
        }
        b[i].d = d16;
        b[i].dmin = dmin16;
        for (int j = 0; j < QK_K / Q6_K_SUB; j++) {
            const float d = llmr_f16_to_f32(d16) * (b[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = llmr_f16_to_f32(dmin16) * (b[i].scales[j] >> 4);
            for (int e = Q6_K_SUB * j; e < Q6_K_SUB * (j + 1); e++) {
                const int l = nearest_int((x[e] + dm) / d);
                L[e] = (uint8_t)(l < 0 ? 0 : l > 3 ? 3 : l);
            }
        }
        pack_2bit(L, b[i].qs);
    }
}

const llmr_k_fit llmr_q2_k_fit = {.rmin = -0.5f, .rdelta = 0.1f, .nstep = 15};

void quantize_row_q2_K_ref(const float *x, void *y, int64_t k) { quantize_row_q2_K_fit(x, y, k, &llmr_q2_k_fit, NULL); }

/* ggml's dequantize_row_q3_K: d * (sc - 32) first (exact: 11 x 6 bits), then times q. */
void dequantize_row_q3_K_ref(const void *x, float *y, int64_t k) {
    const block_q3_K *b = x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(b[i].d);
        for (int e = 0; e < QK_K; e++)
            *y++ = d * (float)llmr_q3_k_scale(b[i].scales, e / Q6_K_SUB) * (float)llmr_q3_k_quant(&b[i], e);
    }
}

/* ggml's dequantize_row_q2_K: d * sc and dmin * m first (exact), then d1 * q - m1 (one rounding
 * each, kept apart by -ffp-contract=off). */
void dequantize_row_q2_K_ref(const void *x, float *y, int64_t k) {
    const block_q2_K *b = x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = llmr_f16_to_f32(b[i].d), dmin = llmr_f16_to_f32(b[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            const uint8_t sc = b[i].scales[e / Q6_K_SUB];
            const float d1 = d * (float)(sc & 0xF), m1 = dmin * (float)(sc >> 4);
            *y++ = d1 * (float)llmr_q2_k_quant(b[i].qs, e) - m1;
        }
    }
}

/* ---- iq4_nl: llama.cpp's quantize_iq4_nl without an importance matrix (what llama-quantize
 * runs: its quantize_row_iq4_nl_impl for one block of 32 with ntry = 7), operation for operation
 * (float32, no FMA), so the bytes are llama.cpp's and quant/reference.py's. */

/* The index of the level nearest v: the upper of the two around it unless v - lower < upper - v
 * (float differences, as ggml's best_index_int8); v at or past an end level takes it, NaN 15. */
static int iq4_nl_index(float v) {
    const int8_t *lv = llmr_iq4_nl_values;
    if (v <= lv[0]) return 0;
    if (v >= lv[15]) return 15;
    int up = 1;
    while (up < 15 && !(v < lv[up])) up++; /* the first level above v */
    return v - lv[up - 1] < lv[up] - v ? up - 1 : up;
}

/* sum w q x and sum w q^2 over a block on the grid of 1 / iscale, in order, each value's weight w
 * its square, times its importance where `importance` (else NULL), or with !square the
 * importance alone. */
static void iq4_nl_fit(const float *x, float iscale, float *sumqx, float *sumq2, const float *importance, int square) {
    float qx = 0, q2 = 0;
    for (int j = 0; j < QK4_NL; j++) {
        const float q = llmr_iq4_nl_values[iq4_nl_index(iscale * x[j])];
        float w = x[j] * x[j];
        if (importance)
            w = square ? w * importance[j] : importance[j];
        qx += w * q * x[j];
        q2 += w * q * q;
    }
    *sumqx = qx;
    *sumq2 = q2;
}

void quantize_row_iq4_nl_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance) {
    block_iq4_nl *b = y;
    for (int64_t i = 0; i < k / QK4_NL; i++, x += QK4_NL) {
        const float *imp = importance ? importance + i * QK4_NL : NULL;
        float amax = 0, max = 0; /* the value of largest magnitude, the first of equals */
        for (int j = 0; j < QK4_NL; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = 0;
        if (amax >= GROUP_MAX_EPS) {
            /* the largest magnitude on the end level -127, then 15 grids around it, the best kept */
            float sumqx, sumq2;
            iq4_nl_fit(x, 1 / (-max / -127.0f), &sumqx, &sumq2, imp, fit->square);
            d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
            float best = d * sumqx;
            for (int s = -7; s <= 7; s++) {
                iq4_nl_fit(x, (float)(s - 127) / max, &sumqx, &sumq2, imp, fit->square);
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
        }
        /* every value again on the chosen (f32, not yet f16) scale */
        const float id = d != 0 ? 1 / d : 0.f;
        uint8_t L[QK4_NL];
        for (int j = 0; j < QK4_NL; j++)
            L[j] = (uint8_t)iq4_nl_index(id * x[j]);
        b[i].d = llmr_f32_to_f16(d);
        for (int j = 0; j < QK4_NL / 2; j++)
            b[i].qs[j] = (uint8_t)(L[j] | L[j + QK4_NL / 2] << 4);
    }
}

void quantize_row_iq4_nl_ref(const float *x, void *y, int64_t k) {
    const llmr_k_fit plain = {0};
    quantize_row_iq4_nl_fit(x, y, k, &plain, NULL);
}

void dequantize_row_iq4_nl_ref(const void *x, float *y, int64_t k) {
    const block_iq4_nl *b = x;
    for (int64_t i = 0; i < k / QK4_NL; i++, y += QK4_NL) {
        const float d = llmr_f16_to_f32(b[i].d);
        for (int j = 0; j < QK4_NL / 2; j++) {
            y[j] = d * (float)llmr_iq4_nl_values[b[i].qs[j] & 0x0F];
            y[j + QK4_NL / 2] = d * (float)llmr_iq4_nl_values[b[i].qs[j] >> 4];
        }
    }
}

/* ---- q4_0, q5_0, q4_1, q5_1 calibrated: quant/calibrate.py's _weighted_symmetric and
 * _weighted_affine, operation for operation in double, each sum in order from its first term (a
 * sum starts at -0.0, which adds to any term exactly, the sign of a zero included: d = num / den
 * may be -0.0, stored as f16 0x8000). w: each column's weight (k doubles, the row's columns). */

/* The candidate grids: k / 10 for k in -9 .. 9, as float32 (calibrate.py's CANDIDATES). */
static double candidate(int s) { return (double)((float)s / 10.0f); }

/* A fitted scale or min as the block stores it: float32, then float16 (calibrate.py's _as_stored). */
static uint16_t as_stored(double v) { return llmr_f32_to_f16((float)v); }

/* q4_0 (half 8), q5_0 (half 16): for each candidate inverse scale -(half + c) / max, round to
 * -half .. half - 1, fit d by weighted least squares, keep the least weighted error -> d, q + half
 * (none finite: d 0, every q + half = half, as the reference's). */
static void weighted_symmetric(const float *xf, const double *w, int half, uint16_t *d_out, int q_out[32]) {
    double b[32];
    for (int j = 0; j < 32; j++)
        b[j] = xf[j];
    double max = b[0]; /* the value of largest magnitude, the first of equals (argmax) */
    for (int j = 1; j < 32; j++)
        max = fabs(b[j]) > fabs(max) ? b[j] : max;
    const double safe_max = max == 0 ? 1.0 : max;
    double best_err = INFINITY;
    *d_out = 0;
    for (int j = 0; j < 32; j++)
        q_out[j] = half;
    for (int s = -9; s <= 9; s++) {
        const double iscale = -(half + candidate(s)) / safe_max;
        double q[32], den = -0.0, num = -0.0, err = -0.0;
        for (int j = 0; j < 32; j++) {
            const double v = rint(b[j] * iscale);
            q[j] = v < -half ? -half : v > half - 1 ? half - 1 : v;
            const double wq = w[j] * q[j];
            den += wq * q[j];
            num += wq * b[j];
        }
        const uint16_t d16 = as_stored(den > 0 ? num / den : 0.0);
        const double d = llmr_f16_to_f32(d16);
        for (int j = 0; j < 32; j++) {
            const double e = b[j] - d * q[j];
            err += w[j] * (e * e);
        }
        if (err < best_err) {
            best_err = err;
            *d_out = d16;
            for (int j = 0; j < 32; j++)
                q_out[j] = (int)q[j] + half;
        }
    }
}

/* q4_1 (top 15), q5_1 (top 31): for each candidate step (max - min) / (top + c), round, fit d and
 * m by weighted least squares (a 2x2 system), keep the least weighted error -> d, m, q (none
 * finite: d 0, m the minimum, every q 0, as the reference's). */
static void weighted_affine(const float *xf, const double *w, int top, uint16_t *d_out, uint16_t *m_out,
                            int q_out[32]) {
    double b[32], lo = xf[0], hi = xf[0], sw = -0.0, swx = -0.0;
    for (int j = 0; j < 32; j++) {
        b[j] = xf[j];
        lo = b[j] < lo ? b[j] : lo;
        hi = b[j] > hi ? b[j] : hi;
        sw += w[j];
        swx += w[j] * b[j];
    }
    const double span = hi > lo ? hi - lo : 1.0;
    double best_err = INFINITY;
    *d_out = 0;
    *m_out = as_stored(lo);
    memset(q_out, 0, 32 * sizeof *q_out);
    for (int s = -9; s <= 9; s++) {
        const double step = (top + candidate(s)) / span;
        double q[32], swq = -0.0, swqq = -0.0, swxq = -0.0, err = -0.0;
        for (int j = 0; j < 32; j++) {
            const double v = rint((b[j] - lo) * step);
            q[j] = v < 0 ? 0 : v > top ? top : v;
            swq += w[j] * q[j];
            swqq += w[j] * q[j] * q[j];
            swxq += w[j] * b[j] * q[j];
        }
        /* a determinant this small against its terms' scale is a singular system: m alone */
        const double det = sw * swqq - swq * swq, det_scale = sw * swqq > 1e-300 ? sw * swqq : 1e-300;
        const int ok = det > 1e-300 * det_scale;
        const uint16_t d16 = as_stored(ok ? (sw * swxq - swq * swx) / det : 0.0);
        const uint16_t m16 = as_stored(ok ? (swqq * swx - swq * swxq) / det : swx / sw);
        const double d = llmr_f16_to_f32(d16), m = llmr_f16_to_f32(m16);
        for (int j = 0; j < 32; j++) {
            const double e = b[j] - d * q[j] - m;
            err += w[j] * (e * e);
        }
        if (err < best_err) {
            best_err = err;
            *d_out = d16;
            *m_out = m16;
            for (int j = 0; j < 32; j++)
                q_out[j] = (int)q[j];
        }
    }
}

static void pack_nibbles(const int *q, uint8_t *qs) {
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)(q[j] | q[j + 16] << 4);
}

int quantize_row_weighted(int type, const float *x, void *y, int64_t k, const double *w) {
    if (type != LLMR_TYPE_Q4_0 && type != LLMR_TYPE_Q5_0 && type != LLMR_TYPE_Q4_1 && type != LLMR_TYPE_Q5_1)
        return -1;
    int q[32];
    for (int64_t i = 0; i < k / 32; i++, x += 32, w += 32)
        if (type == LLMR_TYPE_Q4_0) {
            weighted_symmetric(x, w, 8, &((block_q4_0 *)y)[i].d, q);
            pack_nibbles(q, ((block_q4_0 *)y)[i].qs);
        } else if (type == LLMR_TYPE_Q5_0) {
            weighted_symmetric(x, w, 16, &((block_q5_0 *)y)[i].d, q);
            pack_q5(q, ((block_q5_0 *)y)[i].qh, ((block_q5_0 *)y)[i].qs);
        } else if (type == LLMR_TYPE_Q4_1) {
            weighted_affine(x, w, 15, &((block_q4_1 *)y)[i].d, &((block_q4_1 *)y)[i].m, q);
            pack_nibbles(q, ((block_q4_1 *)y)[i].qs);
        } else {
            weighted_affine(x, w, 31, &((block_q5_1 *)y)[i].d, &((block_q5_1 *)y)[i].m, q);
            pack_q5(q, ((block_q5_1 *)y)[i].qh, ((block_q5_1 *)y)[i].qs);
        }
    return 0;
}

/* ---- the calibrated k-quants' choice: quant/calibrate.py's quantize_k_weighted */

llmr_k_fit_fn llmr_k_fit_for(int type) {
    switch (type) {
    case LLMR_TYPE_Q2_K: return quantize_row_q2_K_fit;
    case LLMR_TYPE_Q3_K: return quantize_row_q3_K_fit;
    case LLMR_TYPE_Q4_K: return quantize_row_q4_K_fit;
    case LLMR_TYPE_Q5_K: return quantize_row_q5_K_fit;
    case LLMR_TYPE_Q6_K: return quantize_row_q6_K_fit;
    case LLMR_TYPE_IQ4_NL: return quantize_row_iq4_nl_fit;
    default: return NULL;
    }
}

/* sum_i w_i (dequantised_i - x_i)^2 over one block, in double, in order */
static double block_error(const llmr_type_traits *t, const uint8_t *block, const float *x, const double *w,
                          float *values) {
    t->dequantize(block, values, t->block_size);
    double e = -0.0;
    for (int i = 0; i < t->block_size; i++) {
        const double d = (double)values[i] - (double)x[i];
        e += w[i] * (d * d);
    }
    return e;
}

int quantize_row_k_best(int type, const float *x, void *y, int64_t k, const llmr_k_fit *fits, int n_fits,
                        const float *importance, const double *w) {
    const llmr_k_fit_fn fit = llmr_k_fit_for(type);
    if (!fit)
        return -1;
    const llmr_type_traits *t = llmr_type_traits_get(type);
    const int bs = t->block_size;
    uint8_t candidate[LLMR_MAX_BLOCK_BYTES];
    float values[QK_K];
    for (int64_t b = 0; b < k / bs; b++) {
        const float *xb = x + b * bs;
        uint8_t *yb = (uint8_t *)y + b * t->type_size;
        t->quantize(xb, yb, bs);
        double best = block_error(t, yb, xb, w + b * bs, values);
        for (int f = 0; f < n_fits; f++) {
            fit(xb, candidate, bs, &fits[f], importance ? importance + b * bs : NULL);
            const double e = block_error(t, candidate, xb, w + b * bs, values);
            if (e < best) {
                best = e;
                memcpy(yb, candidate, t->type_size);
            }
        }
    }
    return 0;
}
