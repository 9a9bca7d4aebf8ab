/* AVX2 + FMA + F16C kernels for float weights (f32, f16, bf16) against f32 activations:
 * vec_dot and the rows layout's gemm. Compiled with -mavx2 -mfma -mf16c; dispatch.c calls them
 * only on a CPU that has all three.
 *
 * vec_dot_float_avx512.c's scheme on 8 lanes: every output, in vec_dot and in any tile of gemm,
 * has one 8-lane accumulator, acc = fma(w[i..i+8), a[i..i+8), acc) for i = 0, 8, ... (the last
 * k % 8 elements one zero-padded step), its lanes then summed by one fixed tree (reduce4); so no
 * result depends on the tile it lands in, the token count or the thread count. A gemm tile is
 * 4 rows x 3 tokens: 12 accumulators, a weight vector (an f16 or bf16 one converted once, then
 * met by 3 tokens) and the 3 tokens' activation vectors fill the 16 registers. Decode runs tiles
 * of 4 rows and one token: four independent chains, as the one-row kernel had before.
 *
 * Error: each product meets at most ceil(k / 8) additions in its lane and 3 in the tree: within
 * FLOAT_DOT_BOUND(k) = (k + 2) u sum|x w| of float64 (tests/test_isa.py). */
#include <immintrin.h>

#include "llmrun.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#include "vec_dot_float.h"

enum { TILE_TOKENS = 3 };
/* Rows prefetched this many tiles ahead, as one sequential stream (vec_dot_float_avx512.c). */
enum { PREFETCH_TILES = 2 };

/* Eight weights of format fmt as f32; w need not be aligned. */
ALWAYS_INLINE __m256 load8(enum float_format fmt, const uint8_t *w) {
    switch (fmt) {
    case FLOAT_F32:
        return _mm256_loadu_ps((const float *)w);
    case FLOAT_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
    default: /* bf16 */
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w)), 16));
    }
}

/* The sums of four accumulators' lanes, lane j of the result from v_j, each by the same tree:
 * lanes i + (i + 4), then i + (i + 2), i + (i + 1). */
ALWAYS_INLINE __m128 reduce4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    /* 128-bit halves: {v0 lo+hi, v1 lo+hi}, {v2 lo+hi, v3 lo+hi} */
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(v2, v3, 0x20), _mm256_permute2f128_ps(v2, v3, 0x31));
    /* {v0 l0+l2, v0 l1+l3, v2 .., v2 .. | v1 .., v1 .., v3 .., v3 ..} */
    const __m256 s = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(s01), _mm256_castps_pd(s23))),
                                   _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(s01), _mm256_castps_pd(s23))));
    const __m256 h = _mm256_hadd_ps(s, s); /* {v0, v2, v0, v2 | v1, v3, v1, v3} */
    return _mm256_castps256_ps128(_mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0)));
}

/* The first nr (1..4) lanes of s to out; plain stores, no masked ones past out's end
 * (vec_dot_float_avx512.c). */
ALWAYS_INLINE void store_rows(float *out, __m128 s, int nr) {
    if (nr == FLOAT_TILE_ROWS) {
        _mm_storeu_ps(out, s);
    } else {
        float v[FLOAT_TILE_ROWS];
        _mm_storeu_ps(v, s);
        memcpy(out, v, (size_t)nr * sizeof(float));
    }
}

/* A float_tile_fn (vec_dot_float.h). */
ALWAYS_INLINE void tile(enum float_format fmt, int64_t k, const uint8_t *const w[FLOAT_TILE_ROWS],
                        const float *const a[], int NT, float *out, size_t out_stride, int nr, int nt) {
    const int elem = FLOAT_ELEM(fmt);
    /* the rows PREFETCH_TILES tiles on, at 4x the pace of a row (vec_dot_float_avx512.c) */
    const char *ahead = (const char *)w[0] + PREFETCH_TILES * FLOAT_TILE_ROWS * k * elem;
    __m256 acc[FLOAT_TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < FLOAT_TILE_ROWS; r++)
        for (int j = 0; j < NT; j++)
            acc[r][j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        for (int p = 0; p < FLOAT_TILE_ROWS * 8 * elem; p += 64)
            _mm_prefetch(ahead + FLOAT_TILE_ROWS * i * elem + p, _MM_HINT_T0);
        __m256 av[TILE_TOKENS];
        for (int j = 0; j < NT; j++)
            av[j] = _mm256_loadu_ps(a[j] + i);
        for (int r = 0; r < FLOAT_TILE_ROWS; r++) {
            const __m256 wv = load8(fmt, w[r] + i * elem);
            for (int j = 0; j < NT; j++)
                acc[r][j] = _mm256_fmadd_ps(wv, av[j], acc[r][j]);
        }
    }
    if (i < k) { /* the last k % 8: the same step on zero-padded copies */
        float at[TILE_TOKENS][8] = {{0}};
        for (int j = 0; j < NT; j++)
            memcpy(at[j], a[j] + i, (size_t)(k - i) * sizeof(float));
        for (int r = 0; r < FLOAT_TILE_ROWS; r++) {
            uint8_t wt[32] = {0};
            memcpy(wt, w[r] + i * elem, (size_t)(k - i) * elem);
            const __m256 wv = load8(fmt, wt);
            for (int j = 0; j < NT; j++)
                acc[r][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(at[j]), acc[r][j]);
        }
    }
    for (int j = 0; j < NT; j++) /* NT, not nt: constant indices keep acc in registers */
        if (j < nt)
            store_rows(out + j * out_stride, reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]), nr);
}

/* A last 2 tokens run as a whole tile, 1 alone. */
LLMR_FLOAT_KERNELS(avx2, TILE_TOKENS, 2)
