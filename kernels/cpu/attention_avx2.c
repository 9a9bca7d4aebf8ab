/* Attention on AVX2 + FMA. Compiled with -mavx2 -mfma -mf16c; dispatch.c calls it only on a CPU
 * that has all three.
 *
 * attention_avx512.c's method with 8 lanes: flash attention's online softmax over blocks of 8
 * cache positions, one position per lane, each block of K and V rows loaded once for a tile of
 * up to 4 tokens x the query heads that share it. Not the scalar kernel's arithmetic;
 * tests/test_kernels.py bounds the difference. A row's arithmetic does not depend on which
 * other tokens and heads share its tile, so any split between threads gives the same bits.
 * An f16 cache is widened as it is loaded (vcvtph2ps, exact), a q8_0 one multiplied out (d * q,
 * exact), as in attention_avx512.c: the f32 arithmetic on the same values, so the same bits. */
#include <immintrin.h>
#include <math.h>

#include "exp_x86.h"
#include "llmrun.h"

#define BLOCK 8 /* cache positions per step */
#define HEADS 8 /* at most this many query heads and */
#define TOKENS LLMR_ATTENTION_TOKENS /* this many tokens share a pass over K and V */

/* The first r of 8 lanes (none for r <= 0), for maskload / maskstore. */
static inline __m256i lanes(int64_t r) {
    const int n = r >= 8 ? 8 : r <= 0 ? 0 : (int)r;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}


/* Lane c = the sum of a[c]'s lanes: a transpose folded into the adds. */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 b[4], c[2];
    for (int i = 0; i < 4; i++) /* per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3 */
        b[i] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; i++) { /* per 128-bit lane: the 4 sums of rows 4i .. 4i + 3 */
        const __m256d x = _mm256_castps_pd(b[2 * i]), y = _mm256_castps_pd(b[2 * i + 1]);
        c[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)), _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(c[0], c[1], 0x20), _mm256_permute2f128_ps(c[0], c[1], 0x31));
}

static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Elements i .. i + 7 of a cache row of type kv as the floats they stand for: f16 widened,
 * q8_0's d * q (i a multiple of 8: within one block). */
ALWAYS_INLINE __m256 kv_load8(const void *row, int64_t i, int kv) {
    if (kv == LLMR_KV_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    if (kv == LLMR_KV_Q8_0) {
        const block_q8_0 *b = (const block_q8_0 *)row + i / QK8_0;
        const __m128i q8 = _mm_loadl_epi64((const __m128i *)(b->qs + i % QK8_0));
        const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
        return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)), q);
    }
    return _mm256_loadu_ps((const float *)row + i);
}

/* The same, only the first n (< 8 where m = lanes(n)) read, the other lanes 0: f32 by maskload,
 * f16 and q8_0 (which have no masked load here) whole where n >= 8, else through a copy of their
 * n elements (a q8_0 row's hd being a multiple of 32, n is then 0 or less). */
ALWAYS_INLINE __m256 kv_load_first(const void *row, int64_t i, __m256i m, int64_t n, int kv) {
    if (kv == LLMR_KV_F16) {
        if (n >= 8)
            return kv_load8(row, i, kv);
        uint16_t h[8] = {0};
        if (n > 0)
            memcpy(h, (const uint16_t *)row + i, (size_t)(n < 8 ? n : 8) * 2);
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    }
    if (kv == LLMR_KV_Q8_0)
        return n >= 8 ? kv_load8(row, i, kv) : _mm256_setzero_ps();
    return _mm256_maskload_ps((const float *)row + i, m);
}

/* Lane c of s[r] = dot(q_r, row[c]) over hd floats, for the R query rows q_r = q + r * hd (heads
 * of one token that share the kv head), as in attention_avx512.c: each K vector loaded (and
 * widened or multiplied out) once for the R rows, an FMA chain per row and position, then hsum8:
 * s[r] does not depend on R. Plain loads where whole vectors fit (maskload is slower: 8.1 -> 6.9
 * ms for SmolLM2's 512-token prefill), then a masked tail. */
ALWAYS_INLINE void dots_n(__m256 *s, const float *q, const int R, const void *const row[BLOCK], int64_t hd, int kv) {
    const int G = R == 1 ? 8 : R == 2 ? 4 : 2; /* positions at once: R * G chains (6 .. 8) in flight */
    __m256 acc[4][BLOCK];
    for (int c0 = 0; c0 < BLOCK; c0 += G) {
        __m256 a[8]; /* [g * R + r] */
        for (int j = 0; j < G * R; j++)
            a[j] = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= hd; i += 8) {
            __m256 qv[4];
            for (int r = 0; r < R; r++)
                qv[r] = _mm256_loadu_ps(q + r * hd + i);
            for (int g = 0; g < G; g++) {
                const __m256 x = kv_load8(row[c0 + g], i, kv);
                for (int r = 0; r < R; r++)
                    a[g * R + r] = _mm256_fmadd_ps(qv[r], x, a[g * R + r]);
            }
        }
        if (i < hd) {
            const __m256i m = lanes(hd - i);
            __m256 qv[4];
            for (int r = 0; r < R; r++)
                qv[r] = _mm256_maskload_ps(q + r * hd + i, m);
            for (int g = 0; g < G; g++) {
                const __m256 x = kv_load_first(row[c0 + g], i, m, hd - i, kv);
                for (int r = 0; r < R; r++)
                    a[g * R + r] = _mm256_fmadd_ps(qv[r], x, a[g * R + r]);
            }
        }
        for (int g = 0; g < G; g++)
            for (int r = 0; r < R; r++)
                acc[r][c0 + g] = a[g * R + r];
    }
    for (int r = 0; r < R; r++)
        s[r] = hsum8(acc[r]);
}

/* dots_n for the nh heads of one token (rows hd apart from q), in groups of at most 4 compiled
 * with their count fixed. */
ALWAYS_INLINE void dots(__m256 *s, const float *q, int64_t nh, const void *const row[BLOCK], int64_t hd, int kv) {
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
 * o_r = f_r * o_r + sum over c < n of p_r[c] * V row c, attention_avx512.c's add_rows_n with
 * two vectors of o per row in registers, as many as AVX2's 16 registers hold for four rows. */
ALWAYS_INLINE void add_rows_n(float *o, const __m256 *f, const float *p, int nr, const void *row, int64_t n,
                              int64_t stride, int64_t hd, int kv) {
    for (int64_t i0 = 0; i0 < hd; i0 += 16) {
        __m256i m[2];
        __m256 acc[4][2];
        for (int e = 0; e < 2; e++) {
            m[e] = lanes(hd - i0 - 8 * e);
            for (int r = 0; r < nr; r++)
                acc[r][e] = _mm256_mul_ps(_mm256_maskload_ps(o + r * hd + i0 + 8 * e, m[e]), f[r]);
        }
        for (int64_t c = 0; c < n; c++) {
            const void *vc = llmr_kv_skip(row, c * stride, kv); /* row c: whole q8_0 blocks from it */
            for (int e = 0; e < 2; e++) {
                const __m256 x = kv_load_first(vc, i0 + 8 * e, m[e], hd - i0 - 8 * e, kv);
                for (int r = 0; r < nr; r++)
                    acc[r][e] = _mm256_fmadd_ps(_mm256_set1_ps(p[r * BLOCK + c]), x, acc[r][e]);
            }
        }
        for (int e = 0; e < 2; e++)
            for (int r = 0; r < nr; r++)
                _mm256_maskstore_ps(o + r * hd + i0 + 8 * e, m[e], acc[r][e]);
    }
}

/* add_rows_n for any nr, in groups of at most 4 compiled with their count fixed. */
ALWAYS_INLINE void add_rows(float *o, const __m256 *f, const float *p, int64_t nr, const void *row, int64_t n,
                            int64_t stride, int64_t hd, int kv) {
    for (; nr >= 4; nr -= 4, o += 4 * hd, f += 4, p += 4 * BLOCK)
        add_rows_n(o, f, p, 4, row, n, stride, hd, kv);
    if (nr == 3)
        add_rows_n(o, f, p, 3, row, n, stride, hd, kv);
    else if (nr == 2)
        add_rows_n(o, f, p, 2, row, n, stride, hd, kv);
    else if (nr == 1)
        add_rows_n(o, f, p, 1, row, n, stride, hd, kv);
}

/* attention_avx512.c's attend: a tile of nt tokens x nh query heads of one kv head, each row
 * with the arithmetic of the row alone. */
ALWAYS_INLINE void attend(float *out, float *acc, const float *q, const void *k, const void *v, int64_t nt, int64_t nh,
                          int64_t q_stride, int64_t hd, int64_t kv_stride, int64_t n_kv, int64_t window, float scale,
                          int kv) {
    float max[TOKENS * HEADS];  /* per row, the largest score so far */
    __m256 sum[TOKENS * HEADS]; /* per row and lane, the weights so far, relative to e^max */
    for (int64_t r = 0; r < nt * nh; r++) {
        max[r] = -INFINITY;
        sum[r] = _mm256_setzero_ps();
    }
    memset(acc, 0, (size_t)(nt * nh * hd) * sizeof(float));
    const int64_t end = n_kv + nt - 1; /* the last token's positions */
    /* Token i sees [LO(i), n_kv + i): every position from 0, or the last `window` of them. The
     * blocks stay on the grid of multiples of BLOCK, and a token takes just the blocks its own
     * positions meet, lanes outside them masked: the same blocks whatever tile it is in. */
#define LO(i) (window > 0 && n_kv + (i) > window ? n_kv + (i) - window : 0)
    for (int64_t j0 = LO(0) / BLOCK * BLOCK; j0 < end; j0 += BLOCK) {
        const int64_t n = end - j0 < BLOCK ? end - j0 : BLOCK;
        /* A short last block repeats its last row in the spare lanes, so that the dot loop
         * below always has 8 accumulators (kept in registers); those lanes are masked out. */
        const void *kr[BLOCK];
        for (int c = 0; c < BLOCK; c++)
            kr[c] = llmr_kv_skip(k, (j0 + (c < n ? c : n - 1)) * kv_stride, kv);
        for (int64_t i = j0 < n_kv ? 0 : j0 - n_kv + 1; i < nt && LO(i) < j0 + n; i++) { /* the tokens that see the block */
            const int64_t ni = n_kv + i - j0 < BLOCK ? n_kv + i - j0 : BLOCK;
            __m256 f[HEADS], d[HEADS];
            float pc[HEADS * BLOCK];
            dots(d, q + i * q_stride, nh, kr, hd, kv);
            for (int64_t h = 0; h < nh; h++) {
                const int64_t r = i * nh + h;
                const __m256 s = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_mul_ps(d[h], _mm256_set1_ps(scale)),
                                                  _mm256_castsi256_ps(_mm256_andnot_si256(lanes(LO(i) - j0), lanes(ni))));
                const float block_max = hmax(s);
                const float new_max = block_max > max[r] ? block_max : max[r];
                /* what was summed, rescaled to the new max (first block: by 0) */
                f[h] = exp_nonpos8(_mm256_set1_ps(max[r] - new_max));
                max[r] = new_max;
                const __m256 p = exp_nonpos8(_mm256_sub_ps(s, _mm256_set1_ps(new_max)));
                sum[r] = _mm256_add_ps(_mm256_mul_ps(sum[r], f[h]), p);
                _mm256_storeu_ps(pc + h * BLOCK, p);
            }
            /* V rows from the row's first position in the block: a window's earlier rows are not read */
            const int64_t c0 = LO(i) > j0 ? LO(i) - j0 : 0;
            add_rows(acc + i * nh * hd, f, pc + c0, nh, llmr_kv_skip(v, (j0 + c0) * kv_stride, kv), ni - c0, kv_stride,
                     hd, kv);
        }
    }
    for (int64_t i = 0; i < nt; i++)
        for (int64_t h = 0; h < nh; h++) {
            const float *o = acc + (i * nh + h) * hd;
            const __m256 inv = _mm256_set1_ps(1.0f / hsum(sum[i * nh + h]));
            for (int64_t e = 0; e < hd; e += 8)
                _mm256_maskstore_ps(out + i * q_stride + h * hd + e, lanes(hd - e),
                                    _mm256_mul_ps(_mm256_maskload_ps(o + e, lanes(hd - e)), inv));
        }
}

#undef LO

#define ATTENTION_ENTRY attention_avx2
#include "attention_tiles.h"
