/* AVX2 (+FMA, F16C) q6_k X16 kernel: gemm_x16_q6_k_avx512.c's arithmetic on quarter-width
 * vectors, one token at a time. Each super-block's integer weights sc (q - 32) are unpacked once
 * (q6k_unpack, the layout of x16_q6k_quants: 8 KiB of int16, in L1) for up to X16_Q6K_TOKENS
 * tokens, whose running sums wait in memory between super-blocks. A 256-bit load of word column
 * c of rows 4q .. 4q + 3 is 8 lanes (r, p) of int16 pairs; pmaddwd with a broadcast of activation
 * elements 4c .. 4c + 3 sums 16 products per lane over a q16_a block's eight columns, exact in
 * int32 (gemm_x16_q6_k.h states the bound). Per activation block and quarter, one conversion and
 * one FMA with the rows' d (to their two lanes) times da; the lane pairs are added at the end.
 * Sixteen ymm registers hold one token's four int32 sums and four accumulators beside the
 * weights and broadcasts, so tokens go one by one. A token's operations do not depend on t.
 *
 * Error against float64: as there, (nb + 3) u M + O(u^2) (a term c P: c = fl(d da) and P's
 * conversion, 1 rounding each; at most nb FMAs in its lane; the pair add), inside
 * X16_DOT_BOUND(nb) = (2 nb + 4) u (tests/test_kernels.py). */
#include "gemm_x16_avx2.h"
#include "gemm_x16_q6_k.h"

/* x16_q6k_unpack (gemm_x16_q6_k.h) in AVX2: per word column and half of the rows, the ql word's
 * nibble and the qh word's bit pair as bytes, less 32, widened to int16 (four rows at a time) and
 * multiplied by their sub-block's scales, which a pshufb spreads from each row's widened scales
 * word to the row's four lanes (q6k_scales: sc[s][q], sub-block s, rows 4q .. 4q + 3). */
ALWAYS_INLINE void q6k_scales(const uint8_t *g, __m256i sc[QK_K / 16][4]) {
    for (int w = 0; w < 4; w++)
        for (int q = 0; q < 4; q++) {
            const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(g + X16_Q6K_SCALES + 64 * w + 16 * q)));
            for (int i = 0; i < 4; i++) {
                const char lo = (char)(2 * i), hi = (char)(2 * i + 1), lo1 = (char)(8 + 2 * i), hi1 = (char)(9 + 2 * i);
                const __m256i four = _mm256_setr_epi8(lo, hi, lo, hi, lo, hi, lo, hi, lo1, hi1, lo1, hi1, lo1, hi1, lo1, hi1,
                                                      lo, hi, lo, hi, lo, hi, lo, hi, lo1, hi1, lo1, hi1, lo1, hi1, lo1, hi1);
                sc[4 * w + i][q] = _mm256_shuffle_epi8(s16, four);
            }
        }
}

/* Word column c of q16_a blocks 4h .. 4h + 3, rows 8v .. 8v + 7: wv[k][e] = w[4h + k][c], rows
 * 8v + 4e .. 8v + 4e + 3. */
ALWAYS_INLINE void q6k_column(const uint8_t *g, const __m256i sc[QK_K / 16][4], int h, int c, int v, __m256i wv[4][2]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30), bias = _mm256_set1_epi8(32);
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(g + X16_Q6K_QH + (8 * h + c) * 64 + 32 * v));
    const __m256i ql[2] = {_mm256_loadu_si256((const __m256i *)(g + X16_Q6K_QL + (16 * h + c) * 64 + 32 * v)),
                           _mm256_loadu_si256((const __m256i *)(g + X16_Q6K_QL + (16 * h + 8 + c) * 64 + 32 * v))};
    const __m256i top[4] = {_mm256_and_si256(_mm256_slli_epi16(qh, 4), m2), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2),
                            _mm256_and_si256(qh, m2), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)};
    for (int k = 0; k < 4; k++) {
        const __m256i low = _mm256_and_si256(k < 2 ? ql[k % 2] : _mm256_srli_epi16(ql[k % 2], 4), m4);
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(low, top[k]), bias);
        const __m256i *s = sc[2 * (4 * h + k) + c / 4];
        wv[k][0] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)), s[2 * v]);
        wv[k][1] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)), s[2 * v + 1]);
    }
}

static void q6k_unpack(const uint8_t *g, const __m256i sc[QK_K / 16][4], x16_q6k_quants *u) {
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < 8; c++)
            for (int v = 0; v < 2; v++) {
                __m256i wv[4][2];
                q6k_column(g, sc, h, c, v, wv);
                for (int k = 0; k < 4; k++)
                    for (int e = 0; e < 2; e++)
                        _mm256_storeu_si256((__m256i *)(u->w[4 * h + k][c] + 32 * v + 16 * e), wv[k][e]);
            }
}

/* One token's running sums: lanes (r, p) of rows 0-3, 4-7, 8-11, 12-15. */
typedef struct {
    __m256 acc[4];
} q6k_sums;

/* One token's sums += the unpacked super-block (d: the rows' d to their two lanes, by quarter)
 * against its activation blocks y[0 .. 8). */
ALWAYS_INLINE void q6k_token(const x16_q6k_quants *u, const __m256 *d, const block_q16_a *y, q6k_sums *sums) {
    __m256 acc[4];
    for (int q = 0; q < 4; q++)
        acc[q] = sums->acc[q];
    for (int j = 0; j < QK_K / QK_Q16_A; j++) {
        __m256i isum[4];
        for (int q = 0; q < 4; q++)
            isum[q] = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            const __m256i a = act4(y + j, c);
            for (int q = 0; q < 4; q++)
                isum[q] = _mm256_add_epi32(isum[q], _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(u->w[j][c] + 16 * q)), a));
        }
        const __m256 da = _mm256_set1_ps(y[j].d);
        for (int q = 0; q < 4; q++)
            acc[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[q]), _mm256_mul_ps(d[q], da), acc[q]);
    }
    for (int q = 0; q < 4; q++)
        sums->acc[q] = acc[q];
}

/* One token alone (decode): q6k_token's operations on the weights as they are unpacked, without
 * storing them (the same bits: the same exact int32 sums, the same FMAs in the same order). */
ALWAYS_INLINE void q6k_one(const uint8_t *g, const __m256i sc[QK_K / 16][4], const __m256 *d, const block_q16_a *y,
                           q6k_sums *sums) {
    for (int h = 0; h < 2; h++)
        for (int v = 0; v < 2; v++) { /* rows 8v .. 8v + 7: quarters 2v, 2v + 1 */
            __m256i isum[4][2];
            for (int k = 0; k < 4; k++)
                isum[k][0] = isum[k][1] = _mm256_setzero_si256();
            for (int c = 0; c < 8; c++) {
                __m256i wv[4][2];
                q6k_column(g, sc, h, c, v, wv);
                for (int k = 0; k < 4; k++) {
                    const __m256i a = act4(y + 4 * h + k, c);
                    isum[k][0] = _mm256_add_epi32(isum[k][0], _mm256_madd_epi16(wv[k][0], a));
                    isum[k][1] = _mm256_add_epi32(isum[k][1], _mm256_madd_epi16(wv[k][1], a));
                }
            }
            for (int k = 0; k < 4; k++) {
                const __m256 da = _mm256_set1_ps(y[4 * h + k].d);
                for (int e = 0; e < 2; e++)
                    sums->acc[2 * v + e] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k][e]), _mm256_mul_ps(d[2 * v + e], da),
                                                           sums->acc[2 * v + e]);
            }
        }
}

/* Up to X16_Q6K_TOKENS tokens: every super-block against every token. */
static void gemm_tokens(int64_t nsb, int64_t t, float *out, size_t out_stride, const uint8_t *w, const uint8_t *a,
                        size_t a_stride) {
    q6k_sums sums[X16_Q6K_TOKENS];
    x16_q6k_quants u;
    for (int64_t i = 0; i < t; i++)
        for (int q = 0; q < 4; q++)
            sums[i].acc[q] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *g = w + b * X16_Q6K_BLOCK;
        for (size_t line = 0; line < X16_Q6K_BLOCK; line += 64)
            _mm_prefetch((const char *)g + PREFETCH_AHEAD + line, _MM_HINT_T0);
        __m256i sc[QK_K / 16][4];
        q6k_scales(g, sc);
        __m256 d[4];
        for (int q = 0; q < 4; q++) /* rows 4q .. 4q + 3, each to its two lanes */
            d[q] = pairs(_mm256_cvtph_ps(load16(g + 16 * (q / 2))), q);
        if (t == 1) {
            q6k_one(g, sc, d, (const block_q16_a *)a + b * (QK_K / QK_Q16_A), sums);
            continue;
        }
        q6k_unpack(g, sc, &u);
        for (int64_t i = 0; i < t; i++)
            q6k_token(&u, d, (const block_q16_a *)(a + i * a_stride) + b * (QK_K / QK_Q16_A), &sums[i]);
    }
    for (int64_t i = 0; i < t; i++)
        for (int h = 0; h < 2; h++) { /* lanes (r, 0), (r, 1) of two quarters, added, in row order */
            const __m256 s = _mm256_hadd_ps(sums[i].acc[2 * h], sums[i].acc[2 * h + 1]);
            _mm256_storeu_ps(out + i * out_stride + 8 * h, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8)));
        }
}

void gemm_x16_q6_K_q16_a_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride) {
    for (int64_t t0 = 0; t0 < t; t0 += X16_Q6K_TOKENS)
        gemm_tokens(k / QK_K, t - t0 < X16_Q6K_TOKENS ? t - t0 : X16_Q6K_TOKENS, out + t0 * out_stride, out_stride, w,
                    (const uint8_t *)a + t0 * a_stride, a_stride);
}
