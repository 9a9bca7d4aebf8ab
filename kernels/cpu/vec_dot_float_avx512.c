/* AVX-512 (F, BW, VL) kernels for float weights (f32, f16, bf16) against f32 activations:
 * vec_dot and the rows layout's gemm. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma
 * -mf16c; dispatch.c calls them only on a CPU that has AVX-512 F, BW and VL.
 *
 * Every output, in vec_dot and in any tile of gemm, is computed the same way: one 16-lane
 * accumulator, acc = fma(w[i..i+16), a[i..i+16), acc) for i = 0, 16, ... (the last k % 16
 * elements one masked step), then its lanes summed by one fixed tree (reduce4). So a result
 * does not depend on the tile it lands in, how many tokens came together or how many threads
 * ran. The FMA latency is hidden by many outputs at once rather than by several accumulators
 * per output: a gemm tile is 4 rows x 6 tokens (24 accumulators, 4 weight vectors and one
 * activation vector: 29 of the 32 registers), so each weight load (an f16 or bf16 one converted
 * once) meets 6 tokens and each activation load 4 rows. Decode (one token) runs tiles of 4 rows:
 * four independent chains, more than the memory feeds.
 *
 * Error: each product meets at most ceil(k / 16) additions in its lane and 4 in the tree, so
 * within FLOAT_DOT_BOUND(k) = (k + 2) u sum|x w| of float64 (tests/test_isa.py), as before. */
#include <immintrin.h>

#include "llmrun.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#include "vec_dot_float.h"

enum { TILE_TOKENS = 6 };
/* Decode reads each weight once, from memory: a tile's 4 row streams at once kept the hardware
 * prefetchers at 0.57x the old one-row kernel's bandwidth (SmolLM2's f16 head), and prefetching
 * the rows two tiles ahead, sequentially, took it to 1.1-1.3x (f32 0.95x; noisy shared machine).
 * The prefetch runs on past the call's last rows, into the next matmul item's: on one thread
 * that is mostly this thread's next item (stopping at the call's end made SmolLM2-shaped f16
 * decode matmuls 5% slower); on two, the rows read twice cost nothing measurable. */
enum { PREFETCH_TILES = 2 };

/* The weights of format fmt at w as f32, lane i from weight i where m has bit i, else zero; w
 * need not be aligned. */
ALWAYS_INLINE __m512 load16(enum float_format fmt, const uint8_t *w, __mmask16 m) {
    switch (fmt) {
    case FLOAT_F32:
        return _mm512_maskz_loadu_ps(m, w);
    case FLOAT_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w));
    default: /* bf16 */
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w)), 16));
    }
}

/* The sums of four accumulators' lanes, lane j of the result from v_j, each by the same tree:
 * lanes i + (i + 8), then i + (i + 4), i + (i + 2), i + (i + 1). */
ALWAYS_INLINE __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    /* 128-bit quarters: {v0 q0+q2, v0 q1+q3, v1 q0+q2, v1 q1+q3}, and the same for v2, v3 */
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xEE));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xEE));
    /* quarter j: v_j's four partial sums */
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E)); /* {l0 + l2, l1 + l3, ..} in each quarter */
    s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1)); /* lane 0 of each quarter: the sum */
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0,
                                                                          0, 0, 0, 0), s));
}

/* The first nr (1..4) lanes of s to out. Not a masked store: this CPU (Zen 5, under KVM) faults
 * on the masked-off lanes of a masked vextractf32x4 to memory, a form GCC picks for
 * _mm_mask_storeu_ps(cast(...)), and out's last row may end at an unmapped page. */
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
    /* the rows PREFETCH_TILES tiles on, as one sequential stream: where row 0 starts, past this
     * tile's 4 rows (k * elem bytes each), at 4x the pace of a row (prefetch never faults, so
     * past the matrix's end is harmless) */
    const char *ahead = (const char *)w[0] + PREFETCH_TILES * FLOAT_TILE_ROWS * k * elem;
    __m512 acc[FLOAT_TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < FLOAT_TILE_ROWS; r++)
        for (int j = 0; j < NT; j++)
            acc[r][j] = _mm512_setzero_ps();
    const __mmask16 all = 0xFFFF;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 wv[FLOAT_TILE_ROWS];
        for (int p = 0; p < FLOAT_TILE_ROWS * 16 * elem; p += 64)
            _mm_prefetch(ahead + FLOAT_TILE_ROWS * i * elem + p, _MM_HINT_T0);
        for (int r = 0; r < FLOAT_TILE_ROWS; r++)
            wv[r] = load16(fmt, w[r] + i * elem, all);
        for (int j = 0; j < NT; j++) {
            const __m512 av = _mm512_loadu_ps(a[j] + i);
            for (int r = 0; r < FLOAT_TILE_ROWS; r++)
                acc[r][j] = _mm512_fmadd_ps(wv[r], av, acc[r][j]);
        }
    }
    if (i < k) { /* the last k % 16: the same step with the lanes past k zero */
        const __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
        __m512 wv[FLOAT_TILE_ROWS];
        for (int r = 0; r < FLOAT_TILE_ROWS; r++)
            wv[r] = load16(fmt, w[r] + i * elem, m);
        for (int j = 0; j < NT; j++) {
            const __m512 av = _mm512_maskz_loadu_ps(m, a[j] + i);
            for (int r = 0; r < FLOAT_TILE_ROWS; r++)
                acc[r][j] = _mm512_fmadd_ps(wv[r], av, acc[r][j]);
        }
    }
    for (int j = 0; j < NT; j++) /* NT, not nt: constant indices keep acc in registers */
        if (j < nt)
            store_rows(out + j * out_stride, reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]), nr);
}

/* A last group of 3 to 5 tokens runs as a whole tile (tokens repeated), 1 or 2 one at a time. */
LLMR_FLOAT_KERNELS(avx512, TILE_TOKENS, 3)
