/* Attention on AVX-512 (F, BW, VL) + FMA. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx2
 * -mfma -mf16c; dispatch.c calls it only on a CPU that has AVX-512 F, BW and VL.
 *
 * Flash attention's online softmax over blocks of 16 cache positions, one position per lane:
 * a block's scores never leave a register, and each block of K and V rows is loaded once for
 * all the query heads that share it (grouped-query attention) and reused from L1 by the rest.
 * Not the scalar kernel's arithmetic (another sum order, a polynomial exp, a running max);
 * tests/test_kernels.py bounds the difference. A head's arithmetic does not depend on which
 * other heads share its pass, so any split of heads between threads gives the same bits. */
#include <immintrin.h>
#include <math.h>

#include "exp_x86.h"
#include "llmrun.h"

#define BLOCK 16 /* cache positions per step */
#define HEADS 8  /* at most this many query heads share a pass over K and V */

/* The first r of 16 lanes (none for r <= 0). */
static inline __mmask16 lanes(int64_t r) { return r >= 16 ? 0xFFFF : r <= 0 ? 0 : (__mmask16)((1u << r) - 1); }


/* Lane c = the sum of a[c]'s lanes: a transpose folded into the adds, about 3 operations per
 * sum where 16 separate reductions would take 8. */
static inline __m512 hsum16(const __m512 a[16]) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3 */
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: the 4 sums of rows 4i .. 4i + 3 */
        const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++) /* 128-bit lanes: rows 8i .. 8i + 3 twice, then 8i + 4 .. 8i + 7 twice */
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Lane c = dot(q, row[c]) over hd floats: an FMA chain per row, then hsum16. Unmasked loads
 * where whole vectors fit (masked ones cost 5% of the prefill here), then a masked tail. */
static inline __m512 dots(const float *q, const float *const row[BLOCK], int64_t hd) {
    __m512 acc[BLOCK];
    for (int c = 0; c < BLOCK; c++)
        acc[c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= hd; i += 16) {
        const __m512 qv = _mm512_loadu_ps(q + i);
        for (int c = 0; c < BLOCK; c++)
            acc[c] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(row[c] + i), acc[c]);
    }
    if (i < hd) {
        const __mmask16 m = lanes(hd - i);
        const __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
        for (int c = 0; c < BLOCK; c++)
            acc[c] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, row[c] + i), acc[c]);
    }
    return hsum16(acc);
}

/* o[0 .. hd) += sum of p[c] * row c, for n rows stride floats apart. Four vectors of o at a
 * time stay in registers, each as two chains (even and odd rows), so that eight FMAs are in
 * flight and their latency is hidden. */
static inline void add_rows(float *o, const float *p, const float *row, int64_t n, int64_t stride, int64_t hd) {
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        __mmask16 m[4];
        __m512 even[4], odd[4];
        for (int r = 0; r < 4; r++) {
            m[r] = lanes(hd - i0 - 16 * r);
            even[r] = _mm512_maskz_loadu_ps(m[r], o + i0 + 16 * r);
            odd[r] = _mm512_setzero_ps();
        }
        int64_t c = 0;
        for (; c + 2 <= n; c += 2) {
            const float *a = row + c * stride + i0, *b = a + stride;
            for (int r = 0; r < 4; r++) {
                even[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[c]), _mm512_maskz_loadu_ps(m[r], a + 16 * r), even[r]);
                odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[c + 1]), _mm512_maskz_loadu_ps(m[r], b + 16 * r), odd[r]);
            }
        }
        for (int r = 0; r < 4; r++) {
            if (c < n) /* an odd row out */
                even[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[c]),
                                          _mm512_maskz_loadu_ps(m[r], row + c * stride + i0 + 16 * r), even[r]);
            _mm512_mask_storeu_ps(o + i0 + 16 * r, m[r], _mm512_add_ps(even[r], odd[r]));
        }
    }
}

/* nh query heads (rows of hd at q) of one token over positions [0, n_kv) of one kv head (rows
 * kv_stride floats apart at k, v). The running sums live in acc (nh * hd floats, this thread's
 * own), not in out, which neighbouring heads on other threads may share cache lines with. */
static void attend(float *out, float *acc, const float *q, const float *k, const float *v, int64_t nh, int64_t hd,
                   int64_t kv_stride, int64_t n_kv, float scale) {
    float max[HEADS];  /* the largest score so far */
    __m512 sum[HEADS]; /* per lane, the weights so far, relative to e^max */
    for (int64_t h = 0; h < nh; h++) {
        max[h] = -INFINITY;
        sum[h] = _mm512_setzero_ps();
    }
    memset(acc, 0, (size_t)(nh * hd) * sizeof(float));
    for (int64_t j0 = 0; j0 < n_kv; j0 += BLOCK) {
        const int64_t n = n_kv - j0 < BLOCK ? n_kv - j0 : BLOCK;
        /* A short last block repeats its last row in the spare lanes, so that the dot loop
         * below always has 16 accumulators (kept in registers); those lanes are masked out. */
        const float *kr[BLOCK];
        for (int c = 0; c < BLOCK; c++)
            kr[c] = k + (j0 + (c < n ? c : n - 1)) * kv_stride;
        for (int64_t h = 0; h < nh; h++) {
            const __m512 s = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), lanes(n), dots(q + h * hd, kr, hd),
                                                _mm512_set1_ps(scale));
            const float block_max = _mm512_reduce_max_ps(s);
            float *o = acc + h * hd;
            if (block_max > max[h]) { /* rescale what was summed to the new max (first block: by 0) */
                const __m512 f = exp_nonpos16(_mm512_set1_ps(max[h] - block_max));
                sum[h] = _mm512_mul_ps(sum[h], f);
                for (int64_t i = 0; i < hd; i += 16) {
                    const __mmask16 m = lanes(hd - i);
                    _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, o + i), f));
                }
                max[h] = block_max;
            }
            const __m512 p = exp_nonpos16(_mm512_sub_ps(s, _mm512_set1_ps(max[h])));
            sum[h] = _mm512_add_ps(sum[h], p);
            float pc[BLOCK];
            _mm512_storeu_ps(pc, p);
            add_rows(o, pc, v + j0 * kv_stride, n, kv_stride, hd);
        }
    }
    for (int64_t h = 0; h < nh; h++) {
        const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum[h]));
        for (int64_t i = 0; i < hd; i += 16)
            _mm512_mask_storeu_ps(out + h * hd + i, lanes(hd - i),
                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(hd - i), acc + h * hd + i), inv));
    }
}

void attention_avx512(float *out, const float *q, const float *k, const float *v, int64_t t, int64_t hq,
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
