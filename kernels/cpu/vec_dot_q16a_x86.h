/* The row loop of the x86 quantised dot products against q16_a activations, one template
 * compiled once per ISA (as llamafile's tinyBLAS is). The including file first provides, for its
 * ISA:
 *   ISA_FN(name)                      the kernel names' suffix, e.g. name##_avx2
 *   wblock, WBLOCK_ZERO               one block's 32 weights widened to int16, and a zero one
 *   widen_q8(const int8_t *q), widen_q4(const uint8_t *qs) -> wblock
 *   widen_q5(const uint8_t *qh, const uint8_t *qs, int offset) -> wblock of q - offset (16 for
 *       q5_0's signed weights, 0 for q5_1's)
 *   widen_iq4_nl(const uint8_t *qs) -> wblock of the iq4_nl levels of q4's nibbles (a pshufb of
 *       the 16-level table: signed bytes, widened exactly; the products then go as q8_0's)
 *   lanes(wblock, const block_q16_a *) -> __m256i, eight int32 lanes of the block's products
 *   (and q4_K's and q6_K's helpers, described at their sections below)
 * and this file defines the vec_dots and 4-token tiles below.
 *
 * From the lanes on, the arithmetic is the same on every ISA: no horizontal reduction per
 * block; four blocks' lanes are paired by two rounds of phaddd (integer adds: exact) into one
 * vector whose lanes j and j + 4 hold the halves of block j's sum, converted to float and
 * multiplied-added (FMA) with the block's dw*da into one float accumulator; the offsets
 * (-8 dw sa for q4_0, mw sa for q4_1 and q5_1; q5_0's weights, q - 16, and iq4_nl's levels are
 * signed as q8_0's and have none) go by FMA into a four-lane accumulator; the row is reduced once, at the end. Not bit-identical to vec_dot_*_ref (another summation order).
 * Error: every term is c_b * P (P a half-block integer sum, c_b = fl(dw*da)) or an offset o_b;
 * sum |terms| <= M = sum_b (|dw| da sum|qw qa| + |off| |sa|), the scalar kernel's magnitude.
 * c_b: 1 rounding; int -> float of P: 1 (|P| may pass 2^24 for q8_0 and iq4_nl, never for q4 or q5); -8 sa:
 * exact; then each term meets at most G = ceil(nb/4) FMAs in its lane, one fold of the 8 lanes
 * to 4, one add of the offset lanes and two adds of the final 4-lane tree: relative error
 * <= (G + 6) u <= (nb + 6) u per term, so |err| <= (nb + 6) u M (+ O(u^2)):
 * QUANT_DOT_SIMD_BOUND(nb) = (nb + 7) u in tests/test_kernels.py, one u of slack.
 *
 * The 4-token tile kernels do the same operations, on the same lanes, in the same order, per
 * token: each output equals the single-token kernel's bit for bit. */

#ifdef _MSC_VER
#define ALWAYS_INLINE static __forceinline
#else
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#endif

/* Two blocks' lanes (p, q) -> {p0+p1, p2+p3, q0+q1, q2+q3 | p4+p5, p6+p7, q4+q5, q6+q7}. */
ALWAYS_INLINE __m256i pair(__m256i p, __m256i q) { return _mm256_hadd_epi32(p, q); }

/* Four blocks' sums as floats: lanes j and j + 4 hold the halves of block j (exact integers;
 * converted with one rounding at most). */
ALWAYS_INLINE __m256 quad(__m256i h01, __m256i h23) { return _mm256_cvtepi32_ps(_mm256_hadd_epi32(h01, h23)); }

/* {v, v}: a block's scale for both lanes that hold its halves. */
ALWAYS_INLINE __m256 twice(__m128 v) { return _mm256_set_m128(v, v); }

/* The end of a row: the 8 lanes folded to 4, the offsets added, a fixed tree. */
ALWAYS_INLINE float finish(__m256 acc, __m128 off) {
    __m128 v = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)), off);
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));            /* {v0 + v2, v1 + v3, ..} */
    v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));        /* (v0 + v2) + (v1 + v3) */
    return _mm_cvtss_f32(v);
}

/* f16 scales of blocks x[0..n) (field at byte offset `at`, blocks `size` bytes apart), 0 past n. */
ALWAYS_INLINE __m128 f16x4(const void *x, size_t size, size_t at, int n) {
    const uint8_t *p = (const uint8_t *)x + at;
    uint16_t h[4] = {0, 0, 0, 0};
    for (int j = 0; j < n; j++)
        memcpy(&h[j], p + j * size, 2);
    return _mm_cvtph_ps(_mm_setr_epi16((short)h[0], (short)h[1], (short)h[2], (short)h[3], 0, 0, 0, 0));
}

/* da (s = 0) or sa (s = 1) of activation blocks y[0..n), 0 past n. */
ALWAYS_INLINE __m128 act4(const block_q16_a *y, int s, int n) {
    float v[4];
    for (int j = 0; j < 4; j++)
        v[j] = j < n ? (s ? y[j].s : y[j].d) : 0.0f;
    return _mm_setr_ps(v[0], v[1], v[2], v[3]);
}

enum { F_Q8_0, F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_IQ4_NL };
#define HAS_M(fmt) ((fmt) == F_Q4_1 || (fmt) == F_Q5_1) /* an f16 minimum at byte 2: offset m sa */

/* A block's 32 weights widened, from its block pointer. */
ALWAYS_INLINE wblock widen_b_q8_0(const block_q8_0 *b) { return widen_q8(b->qs); }
ALWAYS_INLINE wblock widen_b_q4_0(const block_q4_0 *b) { return widen_q4(b->qs); }
ALWAYS_INLINE wblock widen_b_q4_1(const block_q4_1 *b) { return widen_q4(b->qs); }
ALWAYS_INLINE wblock widen_b_q5_0(const block_q5_0 *b) { return widen_q5(b->qh, b->qs, 16); }
ALWAYS_INLINE wblock widen_b_q5_1(const block_q5_1 *b) { return widen_q5(b->qh, b->qs, 0); }
ALWAYS_INLINE wblock widen_b_iq4_nl(const block_iq4_nl *b) { return widen_iq4_nl(b->qs); }

/* One group of n <= 4 blocks, x[0..n) against T tokens' activation blocks y[t][0..n). */
#define GROUP(fmt, block_t, WIDEN, T, x, y, n, acc, off)                                        \
    do {                                                                                         \
        __m256i h_[2][T];                                                                        \
        for (int g_ = 0; g_ < 2; g_++) {                                                         \
            wblock wa_ = WBLOCK_ZERO, wb_ = WBLOCK_ZERO;                                         \
            const int ja_ = 2 * g_, jb_ = 2 * g_ + 1;                                            \
            if (ja_ < (n)) wa_ = WIDEN(&(x)[ja_]);                                               \
            if (jb_ < (n)) wb_ = WIDEN(&(x)[jb_]);                                               \
            for (int t_ = 0; t_ < T; t_++) {                                                     \
                const __m256i pa_ = ja_ < (n) ? lanes(wa_, &(y)[t_][ja_]) : _mm256_setzero_si256(); \
                const __m256i pb_ = jb_ < (n) ? lanes(wb_, &(y)[t_][jb_]) : _mm256_setzero_si256(); \
                h_[g_][t_] = pair(pa_, pb_);                                                     \
            }                                                                                    \
        }                                                                                        \
        const __m128 dw_ = f16x4((x), sizeof(block_t), 0, (n));                                  \
        const __m128 mw_ = HAS_M(fmt) ? f16x4((x), sizeof(block_t), 2, (n)) : _mm_setzero_ps(); \
        for (int t_ = 0; t_ < T; t_++) {                                                         \
            const __m128 c_ = _mm_mul_ps(dw_, act4((y)[t_], 0, (n)));                            \
            (acc)[t_] = _mm256_fmadd_ps(twice(c_), quad(h_[0][t_], h_[1][t_]), (acc)[t_]);       \
            if ((fmt) == F_Q4_0)                                                                 \
                (off)[t_] = _mm_fmadd_ps(dw_, _mm_mul_ps(_mm_set1_ps(-8.0f), act4((y)[t_], 1, (n))), (off)[t_]); \
            else if (HAS_M(fmt))                                                                 \
                (off)[t_] = _mm_fmadd_ps(mw_, act4((y)[t_], 1, (n)), (off)[t_]);                 \
        }                                                                                        \
    } while (0)

/* A row against T tokens (T = 1 or LLMR_TILE): ys[t] is token t's activation row. */
#define ROW(fmt, block_t, WIDEN, T)                                                             \
    const block_t *x = w;                                                                        \
    const int64_t nb = k / QK_Q16_A; /* blocks: these types' are q16_a's (llmrun.h) */                                                                   \
    __m256 acc[T];                                                                               \
    __m128 off[T];                                                                               \
    for (int t = 0; t < T; t++) {                                                                \
        acc[t] = _mm256_setzero_ps();                                                            \
        off[t] = _mm_setzero_ps();                                                               \
    }                                                                                            \
    int64_t i = 0;                                                                               \
    for (; i + 4 <= nb; i += 4) {                                                                \
        const block_q16_a *yi[T];                                                                \
        for (int t = 0; t < T; t++) yi[t] = ys[t] + i;                                           \
        GROUP(fmt, block_t, WIDEN, T, x + i, yi, 4, acc, off);                                   \
    }                                                                                            \
    if (i < nb) {                                                                                \
        const int n = (int)(nb - i);                                                             \
        const block_q16_a *yi[T];                                                                \
        for (int t = 0; t < T; t++) yi[t] = ys[t] + i;                                           \
        GROUP(fmt, block_t, WIDEN, T, x + i, yi, n, acc, off);                                   \
    }

#define VEC_DOT(type, fmt)                                                                       \
    void ISA_FN(vec_dot_##type##_q16_a)(int64_t k, float *s, const void *w, const void *a) {     \
        const block_q16_a *ys[1] = {a};                                                          \
        ROW(fmt, block_##type, widen_b_##type, 1)                                                \
        *s = finish(acc[0], off[0]);                                                             \
    }

VEC_DOT(q8_0, F_Q8_0)
VEC_DOT(q4_0, F_Q4_0)
VEC_DOT(q4_1, F_Q4_1)
VEC_DOT(q5_0, F_Q5_0)
VEC_DOT(q5_1, F_Q5_1)
VEC_DOT(iq4_nl, F_IQ4_NL)

/* ---- LLMR_TILE (4) tokens per weight row: each weight block is unpacked once and meets the
 * four tokens' activations; per token, the same lanes, operations and order as above. */

#define TILE_ACTS                                                                                \
    const block_q16_a *ys[4];                                                                    \
    for (int t = 0; t < 4; t++) ys[t] = (const block_q16_a *)((const uint8_t *)a + t * a_stride);
#define TILE_OUT                                                                                 \
    for (int t = 0; t < 4; t++) s[t * s_stride] = finish(acc[t], off[t]);

#define VEC_DOT_TILE(type, fmt)                                                                  \
    void ISA_FN(vec_dot_tile_##type##_q16_a)(int64_t k, float *s, size_t s_stride, const void *w, \
                                             const void *a, size_t a_stride) {                   \
        TILE_ACTS                                                                                \
        ROW(fmt, block_##type, widen_b_##type, 4)                                                \
        TILE_OUT                                                                                 \
    }

VEC_DOT_TILE(q8_0, F_Q8_0)
VEC_DOT_TILE(q4_0, F_Q4_0)
VEC_DOT_TILE(q4_1, F_Q4_1)
VEC_DOT_TILE(q5_0, F_Q5_0)
VEC_DOT_TILE(q5_1, F_Q5_1)
VEC_DOT_TILE(iq4_nl, F_IQ4_NL)

/* ---- q4_K: a super-block of 256 is 8 sub-blocks of 32, each lined up with one q16_a block:
 * sum_j c_j sum(q qa) - dmin m_j sa_j with c_j = fl(fl(d sc_j) da_j) (d sc_j is exact: 11 x 6
 * bits). The file includes q4k_pair(qs, y, c_lo, c_hi, acc): sub-blocks 2p (low nibbles of the
 * 32 bytes qs) and 2p + 1 (high) against y[0], y[1], their int32 lanes (exact) converted and
 * FMA'd with c_lo, c_hi into the ISA's float accumulator (no horizontal sums per block); the
 * offsets go by one 8-lane FMA per super-block into `off`. Each term meets at most k / 64 FMAs in
 * its lane and the final reduction: inside the (nb + 6) u M bound above. */

/* The 12 packed bytes -> bytes 0..7 the 6-bit scales, bytes 8..15 the mins (get_scale_min_k4). */
ALWAYS_INLINE void q4k_scales(const uint8_t *scales, uint32_t u[4]) {
    memcpy(u, scales, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    u[3] = ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4);
    const uint32_t mins_lo = u[1] & m1;
    u[1] = (u[2] & m2) | (((u[0] >> 6) & m3) << 4);
    u[2] = mins_lo;
    u[0] &= m1;
}

/* The d and s of 8 consecutive q16_a blocks (each block's first 8 bytes): 8 loads, 2 shuffles. */
ALWAYS_INLINE void q16a_d_s8(const block_q16_a *y, __m256 *da, __m256 *sa) {
    __m128 v[4]; /* v[j] = {d, s} of blocks 2j and 2j + 1 */
    for (int j = 0; j < 4; j++)
        v[j] = _mm_loadh_pi(_mm_loadl_pi(_mm_setzero_ps(), (const __m64 *)&y[2 * j].d), (const __m64 *)&y[2 * j + 1].d);
    const __m256 lo = _mm256_set_m128(v[2], v[0]), hi = _mm256_set_m128(v[3], v[1]); /* {0 1 | 4 5}, {2 3 | 6 7} */
    *da = _mm256_shuffle_ps(lo, hi, 0x88);
    *sa = _mm256_shuffle_ps(lo, hi, 0xDD);
}

void ISA_FN(vec_dot_q4_K_q16_a)(int64_t k, float *s, const void *w, const void *a) {
    const block_q4_K *x = w;
    const block_q16_a *y = a;
    q4k_acc acc = Q4K_ACC_ZERO;
    __m256 off = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / QK_K; i++, y += QK_K / QK_Q16_A) {
        uint32_t dd, u[4];
        memcpy(&dd, &x[i].d, 4); /* d, dmin */
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dd));
        q4k_scales(x[i].scales, u);
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&u[0])));
        const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&u[2])));
        __m256 da, sa;
        q16a_d_s8(y, &da, &sa);
        float c[8];
        _mm256_storeu_ps(c, _mm256_mul_ps(_mm256_mul_ps(_mm256_broadcastss_ps(dm), sc), da));
        off = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), mn), sa, off);
        for (int j = 0; j < 4; j++)
            q4k_pair(x[i].qs + 32 * j, &y[2 * j], c[2 * j], c[2 * j + 1], &acc);
    }
    *s = q4k_finish(acc, off);
}

/* ---- q6_K: a super-block of 256 is 8 q16_a blocks of 32, block j spanning sub-blocks 2j and
 * 2j + 1 (16 values each, with an int8 scale). Per super-block the 16 factors d sc are made once
 * (exact: 11 x 8 bits), and per token the coefficients c = fl(d sc da_j) of its 16 sub-blocks;
 * each half super-block is unpacked once into its four blocks' int16 q - 32 (q6k_unpack: the
 * low nibbles from the 64 bytes ql, k % 2 picking the 32 bytes of block k and k / 2 the nibble,
 * the top two bits from the 32 bytes qh, bits 2k) and met by each token's activations
 * (q6k_block): multiply-adds into int32 lanes of two products each (|.| <= 2 * 32 * 32767 <
 * 2^24: exact as floats), no
 * horizontal sums, converted and FMA'd with the lanes' sub-block coefficient into one of two
 * float accumulators, which are added and reduced once at the end (q6k_finish). So a term
 * d sc (q - 32) qa da takes c's one rounding and at most nb / 2 + 5 (AVX-512) or nb + 4 (AVX2)
 * accumulations: inside the (nb + 6) u M bound above, M = sum_b |d| da sum |sc (q - 32) qa|.
 * AVX2 and AVX-512 sum in different lanes (not bit-identical to each other); VNNI's multiply-add
 * gives AVX-512's integers, so those two agree. The file includes q6k_acc and Q6K_ACC_ZERO,
 * q6k_factors / q6k_factors_of(x), q6k_coeffs / q6k_coeffs_of(factors, da of the 8 blocks),
 * q6k_unpack(ql, qh, wblock[4]), q6k_block(w, y, &coeffs, j, &acc) and q6k_finish(acc). */

/* A row of q6_K super-blocks against T tokens' activation rows ys[t] (T = 1, or LLMR_TILE for
 * the tile) into acc[t]. The weights are unpacked once for the T tokens; per token the
 * operations and their order do not depend on T. */
ALWAYS_INLINE void q6k_row(int64_t k, const block_q6_K *x, const block_q16_a *const *ys, int T, q6k_acc *acc) {
    for (int t = 0; t < T; t++)
        acc[t] = Q6K_ACC_ZERO;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const q6k_factors f = q6k_factors_of(&x[i]);
        q6k_coeffs c[LLMR_TILE];
        for (int t = 0; t < T; t++) {
            __m256 da, sa;
            q16a_d_s8(ys[t] + QK_K / QK_Q16_A * i, &da, &sa);
            c[t] = q6k_coeffs_of(f, da);
        }
        for (int h = 0; h < 2; h++) {
            wblock w[4];
            q6k_unpack(x[i].ql + 64 * h, x[i].qh + 32 * h, w);
            for (int b = 0; b < 4; b++)
                for (int t = 0; t < T; t++)
                    q6k_block(w[b], ys[t] + QK_K / QK_Q16_A * i + 4 * h + b, &c[t], 4 * h + b, &acc[t]);
        }
    }
}

void ISA_FN(vec_dot_q6_K_q16_a)(int64_t k, float *s, const void *w, const void *a) {
    const block_q16_a *ys[1] = {a};
    q6k_acc acc[1];
    q6k_row(k, w, ys, 1, acc);
    *s = q6k_finish(acc[0]);
}

void ISA_FN(vec_dot_tile_q6_K_q16_a)(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                     size_t a_stride) {
    TILE_ACTS
    q6k_acc acc[4];
    q6k_row(k, w, ys, 4, acc);
    for (int t = 0; t < 4; t++)
        s[t * s_stride] = q6k_finish(acc[t]);
}
