/* Attention on AVX2 + FMA. Compiled with -mavx2 -mfma -mf16c; dispatch.c calls it only on a CPU
 * that has all three.
 *
 * attention_avx512.c's method with 8 lanes: flash attention's online softmax over blocks of 8
 * cache positions, one position per lane, each block of K and V rows loaded once for all the
 * query heads that share it. Not the scalar kernel's arithmetic; tests/test_kernels.py bounds
 * the difference. A head's arithmetic does not depend on which other heads share its pass, so
 * any split of heads between threads gives the same bits. */
#include <immintrin.h>
#include <math.h>

#include "exp_x86.h"
#include "llmrun.h"

#define BLOCK 8 /* cache positions per step */
#define HEADS 8 /* at most this many query heads share a pass over K and V */

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

/* Lane c = dot(q, row[c]) over hd floats: an FMA chain per row, then hsum8. Plain loads where
 * whole vectors fit (maskload is slower: 8.1 -> 6.9 ms for SmolLM2's 512-token prefill), then a
 * masked tail. */
static inline __m256 dots(const float *q, const float *const row[BLOCK], int64_t hd) {
    __m256 acc[BLOCK];
    for (int c = 0; c < BLOCK; c++)
        acc[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int c = 0; c < BLOCK; c++)
            acc[c] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(row[c] + i), acc[c]);
    }
    if (i < hd) {
        const __m256i m = lanes(hd - i);
        const __m256 qv = _mm256_maskload_ps(q + i, m);
        for (int c = 0; c < BLOCK; c++)
            acc[c] = _mm256_fmadd_ps(qv, _mm256_maskload_ps(row[c] + i, m), acc[c]);
    }
    return hsum8(acc);
}

/* o[0 .. hd) += sum of p[c] * row c, for n rows stride floats apart. Four vectors of o at a
 * time stay in registers, each as two chains (even and odd rows), so that eight FMAs are in
 * flight and their latency is hidden. */
static inline void add_rows(float *o, const float *p, const float *row, int64_t n, int64_t stride, int64_t hd) {
    for (int64_t i0 = 0; i0 < hd; i0 += 32) {
        __m256i m[4];
        __m256 even[4], odd[4];
        for (int r = 0; r < 4; r++) {
            m[r] = lanes(hd - i0 - 8 * r);
            even[r] = _mm256_maskload_ps(o + i0 + 8 * r, m[r]);
            odd[r] = _mm256_setzero_ps();
        }
        int64_t c = 0;
        for (; c + 2 <= n; c += 2) {
            const float *a = row + c * stride + i0, *b = a + stride;
            for (int r = 0; r < 4; r++) {
                even[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[c]), _mm256_maskload_ps(a + 8 * r, m[r]), even[r]);
                odd[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[c + 1]), _mm256_maskload_ps(b + 8 * r, m[r]), odd[r]);
            }
        }
        for (int r = 0; r < 4; r++) {
            if (c < n) /* an odd row out */
                even[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[c]), _mm256_maskload_ps(row + c * stride + i0 + 8 * r, m[r]),
                                          even[r]);
            _mm256_maskstore_ps(o + i0 + 8 * r, m[r], _mm256_add_ps(even[r], odd[r]));
        }
    }
}

/* nh query heads (rows of hd at q) of one token over positions [0, n_kv) of one kv head (rows
 * kv_stride floats apart at k, v). The running sums live in acc (nh * hd floats, this thread's
 * own), not in out, which neighbouring heads on other threads may share cache lines with. */
static void attend(float *out, float *acc, const float *q, const float *k, const float *v, int64_t nh, int64_t hd,
                   int64_t kv_stride, int64_t n_kv, float scale) {
    float max[HEADS];  /* the largest score so far */
    __m256 sum[HEADS]; /* per lane, the weights so far, relative to e^max */
    for (int64_t h = 0; h < nh; h++) {
        max[h] = -INFINITY;
        sum[h] = _mm256_setzero_ps();
    }
    memset(acc, 0, (size_t)(nh * hd) * sizeof(float));
    for (int64_t j0 = 0; j0 < n_kv; j0 += BLOCK) {
        const int64_t n = n_kv - j0 < BLOCK ? n_kv - j0 : BLOCK;
        /* A short last block repeats its last row in the spare lanes, so that the dot loop
         * below always has 8 accumulators (kept in registers); those lanes are masked out. */
        const float *kr[BLOCK];
        for (int c = 0; c < BLOCK; c++)
            kr[c] = k + (j0 + (c < n ? c : n - 1)) * kv_stride;
        for (int64_t h = 0; h < nh; h++) {
            const __m256 s = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                              _mm256_mul_ps(dots(q + h * hd, kr, hd), _mm256_set1_ps(scale)),
                                              _mm256_castsi256_ps(lanes(n)));
            const float block_max = hmax(s);
            float *o = acc + h * hd;
            if (block_max > max[h]) { /* rescale what was summed to the new max (first block: by 0) */
                const __m256 f = exp_nonpos8(_mm256_set1_ps(max[h] - block_max));
                sum[h] = _mm256_mul_ps(sum[h], f);
                for (int64_t i = 0; i < hd; i += 8) {
                    const __m256i m = lanes(hd - i);
                    _mm256_maskstore_ps(o + i, m, _mm256_mul_ps(_mm256_maskload_ps(o + i, m), f));
                }
                max[h] = block_max;
            }
            const __m256 p = exp_nonpos8(_mm256_sub_ps(s, _mm256_set1_ps(max[h])));
            sum[h] = _mm256_add_ps(sum[h], p);
            float pc[BLOCK];
            _mm256_storeu_ps(pc, p);
            add_rows(o, pc, v + j0 * kv_stride, n, kv_stride, hd);
        }
    }
    for (int64_t h = 0; h < nh; h++) {
        const __m256 inv = _mm256_set1_ps(1.0f / hsum(sum[h]));
        for (int64_t i = 0; i < hd; i += 8)
            _mm256_maskstore_ps(out + h * hd + i, lanes(hd - i),
                                _mm256_mul_ps(_mm256_maskload_ps(acc + h * hd + i, lanes(hd - i)), inv));
    }
}

void attention_avx2(float *out, const float *q, const float *k, const float *v, int64_t t, int64_t hq,
                    int64_t hkv, int64_t hd, int64_t n_past, int64_t h0, int64_t h1, float *scratch) {
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t group = hq / hkv;
    for (int64_t ti = 0; ti < t; ti++)
        for (int64_t h = h0, nh; h < h1; h += nh) {
            /* h and the heads after it in [h, h1) that share its kv head, at most HEADS */
            const int64_t g = h / group, end = (g + 1) * group < h1 ? (g + 1) * group : h1;
            nh = end - h < HEADS ? end - h : HEADS;
            const int64_t off = (ti * hq + h) * hd;
            attend(out + off, scratch, q + off, k + g * hd, v + g * hd, nh, hd, hkv * hd, n_past + ti + 1, scale);
        }
}
