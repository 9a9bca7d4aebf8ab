/* What the vec_dot_float_<isa>.c files share: the weight formats, the walk of a gemm over its
 * register tiles, and their six exported kernels. Each file provides
 *     tile(fmt, k, w, a, NT, out, out_stride, nr, nt)
 * (rows w[0..FLOAT_TILE_ROWS) against tokens a[0..NT), one accumulator per output: the ISA's
 * part) and, at its end, LLMR_FLOAT_KERNELS(isa, tile tokens, whole-tile minimum). */
#ifndef LLMRUN_VEC_DOT_FLOAT_H
#define LLMRUN_VEC_DOT_FLOAT_H

enum float_format { FLOAT_F32, FLOAT_F16, FLOAT_BF16 };
/* Bytes per weight. */
#define FLOAT_ELEM(fmt) ((fmt) == FLOAT_F32 ? 4 : 2)

enum { FLOAT_TILE_ROWS = 4, FLOAT_MAX_TILE_TOKENS = 6 };

/* Rows w[0..FLOAT_TILE_ROWS) against tokens a[0..NT): out[j * out_stride + r] for j < nt,
 * r < nr (the rest of the tile repeats a row or a token, and is not stored). NT is a constant
 * where inlined, so the accumulators stay in registers. */
typedef void (*float_tile_fn)(enum float_format fmt, int64_t k, const uint8_t *const w[FLOAT_TILE_ROWS],
                              const float *const a[], int NT, float *out, size_t out_stride, int nr, int nt);

/* n rows (k * elem bytes apart) x t tokens (a_stride bytes apart) in tiles of FLOAT_TILE_ROWS
 * rows x tile_tokens tokens. Token tiles outside, so a tile's activations stay in L1 while the
 * rows pass. A last group of whole_from or more tokens runs as a whole tile (its last token
 * repeated), fewer one token at a time; a last group of rows repeats its last row. Every output
 * has its own accumulator, so none depends on the tile it lands in. Always inlined, with tile a
 * constant: tile is inlined too. */
static inline __attribute__((always_inline)) void float_gemm(float_tile_fn tile, int tile_tokens, int whole_from,
                                                             enum float_format fmt, int64_t k, int64_t n, int64_t t,
                                                             float *out, size_t out_stride, const uint8_t *w,
                                                             const uint8_t *a, size_t a_stride) {
    const size_t w_row = (size_t)k * FLOAT_ELEM(fmt);
    for (int64_t j0 = 0; j0 < t; j0 += tile_tokens) {
        const int nt = t - j0 < tile_tokens ? (int)(t - j0) : tile_tokens;
        const float *at[FLOAT_MAX_TILE_TOKENS];
        for (int j = 0; j < tile_tokens; j++)
            at[j] = (const float *)(a + (size_t)(j0 + (j < nt ? j : nt - 1)) * a_stride);
        for (int64_t r0 = 0; r0 < n; r0 += FLOAT_TILE_ROWS) {
            const int nr = n - r0 < FLOAT_TILE_ROWS ? (int)(n - r0) : FLOAT_TILE_ROWS;
            const uint8_t *wr[FLOAT_TILE_ROWS];
            for (int r = 0; r < FLOAT_TILE_ROWS; r++)
                wr[r] = w + (size_t)(r0 + (r < nr ? r : nr - 1)) * w_row;
            float *o = out + j0 * out_stride + r0;
            if (nt >= whole_from)
                tile(fmt, k, wr, at, tile_tokens, o, out_stride, nr, nt);
            else
                for (int j = 0; j < nt; j++)
                    tile(fmt, k, wr, &at[j], 1, o + j * out_stride, out_stride, nr, 1);
        }
    }
}

#define LLMR_FLOAT_GEMM(type, fmt, isa, tile_tokens, whole_from)                                     \
    void gemm_##type##_f32_##isa(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w, \
                                 const void *a, size_t a_stride) {                                  \
        float_gemm(tile, tile_tokens, whole_from, fmt, k, n, t, out, out_stride, w, a, a_stride);    \
    }                                                                                                \
    /* One row, one token: gemm's arithmetic (a tile with the row repeated). */                      \
    void vec_dot_##type##_f32_##isa(int64_t k, float *s, const void *w, const void *a) {            \
        gemm_##type##_f32_##isa(k, 1, 1, s, 1, w, a, 0);                                             \
    }
/* The file's gemm and vec_dot for f32, f16 and bf16 weights. */
#define LLMR_FLOAT_KERNELS(isa, tile_tokens, whole_from)                                             \
    LLMR_FLOAT_GEMM(f32, FLOAT_F32, isa, tile_tokens, whole_from)                                    \
    LLMR_FLOAT_GEMM(f16, FLOAT_F16, isa, tile_tokens, whole_from)                                    \
    LLMR_FLOAT_GEMM(bf16, FLOAT_BF16, isa, tile_tokens, whole_from)

#endif
