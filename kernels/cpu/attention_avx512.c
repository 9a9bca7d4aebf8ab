/* Attention on AVX-512 (F, BW, VL) + FMA. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx2
 * -mfma -mf16c; dispatch.c calls it only on a CPU that has AVX-512 F, BW and VL.
 *
 * Flash attention's online softmax over blocks of 16 cache positions, one position per lane:
 * a block's scores never leave a register, and each block of K and V rows is loaded once for a
 * tile of query rows (up to 4 tokens x the query heads that share the kv head) and reused from
 * L1 by the rest; each V vector feeds the FMAs of all of a token's heads. Prefill thus reads the
 * cache a quarter as often, and the tile's independent rows keep the FMA units busy. Not the
 * scalar kernel's arithmetic (another sum order, a polynomial exp, a running max);
 * tests/test_kernels.py bounds the difference. A row's arithmetic does not depend on which
 * other tokens and heads share its tile, so any split between threads, or of a prompt into
 * calls, gives the same bits.
 *
 * An f16 cache (--kv-type f16) is widened as it is loaded (vcvtph2ps, exact), a q8_0 one
 * multiplied out (d * q, exact): the same arithmetic on the same values as an f32 cache holding
 * them, so the same bits, from half (0.53x) the bytes. The element type is a constant in each
 * compiled copy of the loops. */
#include <immintrin.h>
#include <math.h>

#include "exp_x86.h"
#include "llmrun.h"

#define BLOCK 16 /* cache positions per step */
#define HEADS 8  /* at most this many query heads and */
#define TOKENS LLMR_ATTENTION_TOKENS /* this many tokens share a pass over K and V */

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

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Elements i .. i + 15 of a cache row of type kv as the floats they stand for, the first lanes
 * of m (the others 0): f16 widened, q8_0's d * q (i a multiple of 16: one block's half). */
ALWAYS_INLINE __m512 kv_load(const void *row, int64_t i, __mmask16 m, int kv) {
    if (kv == LLMR_KV_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i));
    if (kv == LLMR_KV_Q8_0) {
        if (!m) /* past the row: not even its scale is read */
            return _mm512_setzero_ps();
        const block_q8_0 *b = (const block_q8_0 *)row + i / QK8_0;
        const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, b->qs + i % QK8_0)));
        return _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(b->d)), q);
    }
    return _mm512_maskz_loadu_ps(m, (const float *)row + i);
}

/* The same, all 16 lanes. */
ALWAYS_INLINE __m512 kv_load16(const void *row, int64_t i, int kv) {
    if (kv == LLMR_KV_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
    if (kv == LLMR_KV_Q8_0)
        return kv_load(row, i, 0xFFFF, kv);
    return _mm512_loadu_ps((const float *)row + i);
}

/* Lane c of s[r] = dot(q_r, row[c]) over hd floats, for the R query rows q_r = q + r * hd (heads
 * of one token that share the kv head): each K vector is loaded, and widened or multiplied out,
 * once for the R rows. An FMA chain per row and position from 0 over hd in order, then hsum16
 * over the positions: s[r] does not depend on R or on the rows beside it. Unmasked loads where
 * whole vectors fit (masked ones cost 5% of the prefill here), then a masked tail. (Loading K
 * for each head apart made decode over the 1B shape's 4 heads a kv head 20.2 / 22.2 / 34.8 ns
 * a position and kv head, f32 / f16 / q8_0, from L2.) */
ALWAYS_INLINE void dots_n(__m512 *s, const float *q, const int R, const void *const row[BLOCK], int64_t hd, int kv) {
    const int G = R == 1 ? 16 : R == 2 ? 8 : 4; /* positions at once: R * G chains (12 .. 16) in flight */
    __m512 acc[4][BLOCK];
    for (int c0 = 0; c0 < BLOCK; c0 += G) {
        __m512 a[16]; /* [g * R + r] */
        for (int j = 0; j < G * R; j++)
            a[j] = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= hd; i += 16) {
            __m512 qv[4];
            for (int r = 0; r < R; r++)
                qv[r] = _mm512_loadu_ps(q + r * hd + i);
            for (int g = 0; g < G; g++) {
                const __m512 x = kv_load16(row[c0 + g], i, kv);
                for (int r = 0; r < R; r++)
                    a[g * R + r] = _mm512_fmadd_ps(qv[r], x, a[g * R + r]);
            }
        }
        if (i < hd) {
            const __mmask16 m = lanes(hd - i);
            __m512 qv[4];
            for (int r = 0; r < R; r++)
                qv[r] = _mm512_maskz_loadu_ps(m, q + r * hd + i);
            for (int g = 0; g < G; g++) {
                const __m512 x = kv_load(row[c0 + g], i, m, kv);
                for (int r = 0; r < R; r++)
                    a[g * R + r] = _mm512_fmadd_ps(qv[r], x, a[g * R + r]);
            }
        }
        for (int g = 0; g < G; g++)
            for (int r = 0; r < R; r++)
                acc[r][c0 + g] = a[g * R + r];
    }
    for (int r = 0; r < R; r++)
        s[r] = hsum16(acc[r]);
}

/* dots_n for the nh heads of one token (rows hd apart from q), in groups of at most 4 compiled
 * with their count fixed. */
ALWAYS_INLINE void dots(__m512 *s, const float *q, int64_t nh, const void *const row[BLOCK], int64_t hd, int kv) {
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
 * o_r = f_r * o_r + sum over c < n of p_r[c] * V row c (rows stride floats apart), with the
 * online softmax's rescale (f_r = 1, exact, when the max stayed) folded in so that no branch
 * depends on the data. One FMA chain per vector of o, over c in order, whatever nr: each V
 * vector is loaded once for all the rows, and rows x 4 vectors of o stay in registers, enough
 * chains in flight to hide the FMA latency. */
ALWAYS_INLINE void add_rows_n(float *o, const __m512 *f, const float *p, int nr, const void *row, int64_t n,
                              int64_t stride, int64_t hd, int kv) {
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        __mmask16 m[4];
        __m512 acc[4][4];
        for (int e = 0; e < 4; e++) {
            m[e] = lanes(hd - i0 - 16 * e);
            for (int r = 0; r < nr; r++)
                acc[r][e] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[e], o + r * hd + i0 + 16 * e), f[r]);
        }
        for (int64_t c = 0; c < n; c++) {
            const void *vc = llmr_kv_skip(row, c * stride, kv); /* row c: whole q8_0 blocks from it */
            for (int e = 0; e < 4; e++) {
                const __m512 x = kv_load(vc, i0 + 16 * e, m[e], kv);
                for (int r = 0; r < nr; r++)
                    acc[r][e] = _mm512_fmadd_ps(_mm512_set1_ps(p[r * BLOCK + c]), x, acc[r][e]);
            }
        }
        for (int e = 0; e < 4; e++)
            for (int r = 0; r < nr; r++)
                _mm512_mask_storeu_ps(o + r * hd + i0 + 16 * e, m[e], acc[r][e]);
    }
}

/* add_rows_n for any nr, in groups of at most 4 compiled with their count fixed. */
ALWAYS_INLINE void add_rows(float *o, const __m512 *f, const float *p, int64_t nr, const void *row, int64_t n,
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

/* No software prefetch: since the cache became head-major, a kv head's rows are one run that the
 * hardware prefetchers follow, and fetching the block two ahead (which had taken SmolLM2's
 * decode attention at 600 positions, strided rows, 2.16 -> 1.74 ms) cost time instead: the 1B
 * shape at 8k positions, 16 layers, cold, one thread, 45.8 -> 40.5 ns a position and kv head
 * (f32) and 31.6 -> 22.4 (f16) without it; SmolLM2 at 600, 2.30 -> 1.86 ms (one thread),
 * 1.78 -> 2.06 (two). */

/* A tile of query rows: nt consecutive tokens x nh query heads of one kv head, row (i, h) at
 * q + i * q_stride + h * hd, token i seeing positions [0, n_kv + i) of the kv head's rows
 * (kv_stride floats apart at k, v). Each block of K and V rows is loaded once for the tile and
 * reused from L1 by its rows, and the rows' independent chains overlap. A row's arithmetic is
 * that of the row alone (the lanes past its own positions are masked, the rows it adds are its
 * own), so no result depends on which tokens or heads share its tile. The running sums live
 * in acc (nt * nh * hd floats, this thread's own), not in out, which neighbouring heads on
 * other threads may share cache lines with. */
ALWAYS_INLINE void attend(float *out, float *acc, const float *q, const void *k, const void *v, int64_t nt, int64_t nh,
                          int64_t q_stride, int64_t hd, int64_t kv_stride, int64_t n_kv, int64_t window, float scale,
                          int kv) {
    float max[TOKENS * HEADS];  /* per row, the largest score so far */
    __m512 sum[TOKENS * HEADS]; /* per row and lane, the weights so far, relative to e^max */
    for (int64_t r = 0; r < nt * nh; r++) {
        max[r] = -INFINITY;
        sum[r] = _mm512_setzero_ps();
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
         * below always has 16 accumulators (kept in registers); those lanes are masked out. */
        const void *kr[BLOCK];
        for (int c = 0; c < BLOCK; c++)
            kr[c] = llmr_kv_skip(k, (j0 + (c < n ? c : n - 1)) * kv_stride, kv);
        for (int64_t i = j0 < n_kv ? 0 : j0 - n_kv + 1; i < nt && LO(i) < j0 + n; i++) { /* the tokens that see the block */
            const int64_t ni = n_kv + i - j0 < BLOCK ? n_kv + i - j0 : BLOCK;
            __m512 f[HEADS], d[HEADS];
            float pc[HEADS * BLOCK];
            dots(d, q + i * q_stride, nh, kr, hd, kv);
            for (int64_t h = 0; h < nh; h++) {
                const int64_t r = i * nh + h;
                const __m512 s = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), lanes(ni) & ~lanes(LO(i) - j0), d[h],
                                                    _mm512_set1_ps(scale));
                const float block_max = _mm512_reduce_max_ps(s);
                const float new_max = block_max > max[r] ? block_max : max[r];
                /* what was summed, rescaled to the new max (first block: by 0) */
                f[h] = exp_nonpos16(_mm512_set1_ps(max[r] - new_max));
                max[r] = new_max;
                const __m512 p = exp_nonpos16(_mm512_sub_ps(s, _mm512_set1_ps(new_max)));
                sum[r] = _mm512_add_ps(_mm512_mul_ps(sum[r], f[h]), p);
                _mm512_storeu_ps(pc + h * BLOCK, p);
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
            const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum[i * nh + h]));
            for (int64_t e = 0; e < hd; e += 16)
                _mm512_mask_storeu_ps(out + i * q_stride + h * hd + e, lanes(hd - e),
                                      _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(hd - e), o + e), inv));
        }
}

#undef LO

#define ATTENTION_ENTRY attention_avx512
#include "attention_tiles.h"
