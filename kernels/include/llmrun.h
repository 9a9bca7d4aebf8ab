/* llmrun kernels: block formats, f16/bf16 conversions, kernel signatures and the dispatch table.
 *
 * Plain C11 so that the CUDA (and other) backends can include it. The block layouts are
 * GGUF's, byte for byte; quant/reference.py is the ground truth every kernel is tested against.
 */
#ifndef LLMRUN_H
#define LLMRUN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- tensor types ------------------------------------------------------------------------ */

/* GGML's ids, so a GGUF tensor keeps its type id when imported. A type's facts (name, block
 * geometry, activations) are in types.c's TRAITS, which tests/test_kernels.py holds to
 * quant/types.py's table, field by field; a type's kernels are in each ISA's table (dispatch.c),
 * checked complete at import. */
enum llmr_type {
    LLMR_TYPE_F32 = 0,
    LLMR_TYPE_F16 = 1,
    LLMR_TYPE_Q4_0 = 2,
    LLMR_TYPE_Q4_1 = 3,
    LLMR_TYPE_Q5_0 = 6,
    LLMR_TYPE_Q5_1 = 7,
    LLMR_TYPE_Q8_0 = 8,
    LLMR_TYPE_Q2_K = 10,
    LLMR_TYPE_Q3_K = 11,
    LLMR_TYPE_IQ4_NL = 20,
    LLMR_TYPE_Q4_K = 12,
    LLMR_TYPE_Q5_K = 13,
    LLMR_TYPE_Q6_K = 14,
    LLMR_TYPE_BF16 = 30,
    LLMR_TYPE_COUNT = 31, /* bound for tables indexed by id; most ids below it are unused */
};

/* Elements per block. A weight type's own is its traits' block_size; these name them for the
 * block structs and each type's kernels (GGML's names). */
#define QK8_0 32
#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK4_NL 32
#define QK_K 256 /* the k-quants' super-blocks */
/* The activations' q16_a blocks hold 32 elements whatever the weight type: that is the
 * activation format, not a weight fact. A quantised weight's block spans a whole number of them
 * (a QK_K super-block: 8), so an activation row's blocks line up with every weight type's
 * (llmr_types_check holds the traits table to it). */
#define QK_Q16_A 32
/* Bytes in the largest block of any type (q8_k's 292 fit): get_rows copies an X16 block out into
 * a buffer of this size (llmr_types_check holds every type to it). */
#define LLMR_MAX_BLOCK_BYTES 512

/* Packed so a block pointer may sit at any byte offset of a row (an mmap'd file, a bytes
 * object): the compiler then emits unaligned loads for the f16 fields. */
#pragma pack(push, 1)
typedef struct {
    uint16_t d; /* f16 scale */
    int8_t qs[QK8_0];
} block_q8_0; /* x = d * q */

typedef struct {
    uint16_t d;          /* f16 scale */
    uint8_t qs[QK4_0 / 2]; /* element j: low nibble of qs[j]; element j + 16: high nibble */
} block_q4_0; /* x = d * (q - 8) */

typedef struct {
    uint16_t d; /* f16 scale */
    uint16_t m; /* f16 minimum */
    uint8_t qs[QK4_1 / 2];
} block_q4_1; /* x = d * q + m */

/* 5-bit: q = the 4-bit nibble as q4's (element j low nibble of qs[j], j + 16 high nibble) with
 * bit j of the little-endian u32 qh as its fifth bit (value 16). qh sits right before qs. */
typedef struct {
    uint16_t d; /* f16 scale */
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0; /* x = d * (q - 16) */

typedef struct {
    uint16_t d; /* f16 scale */
    uint16_t m; /* f16 minimum */
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1; /* x = d * q + m */

/* Q2_K: a QK_K super-block of 16 sub-blocks of 16, each with a 4-bit scale sc (low nibble of
 * scales[s]) and a 4-bit min m (high nibble); 2-bit quants q, element 128h + 32k + l (h < 2,
 * k < 4, l < 32) at bits 2k of qs[32h + l] (llmr_q2_k_quant). So q16_a block j = 4h + k of a
 * super-block reads the 32 bytes qs[32h ..] and spans sub-blocks 2j and 2j + 1. The f16 d and
 * dmin come last. */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d;    /* f16 super-block scale of the sub-block scales */
    uint16_t dmin; /* f16 super-block scale of the sub-block mins */
} block_q2_K; /* x = d * sc * q - dmin * m, q 0..3 */

/* Element e's (0..255) quant: 0..3. */
static inline int llmr_q2_k_quant(const uint8_t *qs, int e) {
    return qs[32 * (e / 128) + e % 32] >> 2 * (e % 128 / 32) & 3;
}

/* Q3_K: a QK_K super-block of 16 sub-blocks of 16, each with a 6-bit scale (llmr_q3_k_scale:
 * its low four bits in scales[s % 8], nibble s / 8, its top two in scales[8 + s % 4], bits
 * 2 (s / 4)); 3-bit quants: the low two bits as Q2_K's, the third (set: +0, clear: -4) bit e / 32
 * of hmask[e % 32] (llmr_q3_k_quant). The f16 d comes last. */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    uint16_t d; /* f16 super-block scale of the sub-block scales */
} block_q3_K; /* x = d * (sc - 32) * q, q -4..3 */

/* Sub-block s's (0..15) scale less 32: -32..31. */
static inline int llmr_q3_k_scale(const uint8_t *scales, int s) {
    return ((scales[s % 8] >> 4 * (s / 8) & 0x0F) | (scales[8 + s % 4] >> 2 * (s / 4) & 3) << 4) - 32;
}

/* Element e's (0..255) quant: -4..3. */
static inline int llmr_q3_k_quant(const block_q3_K *b, int e) {
    return llmr_q2_k_quant(b->qs, e) - (b->hmask[e % 32] >> (e / 32) & 1 ? 0 : 4);
}
/* IQ4_NL: q4_0's layout, each nibble an index into GGML's 16 non-linear int8 levels
 * (llmr_iq4_nl_values): element j is the low nibble of qs[j], element j + 16 the high nibble. */
typedef struct {
    uint16_t d; /* f16 scale */
    uint8_t qs[QK4_NL / 2];
} block_iq4_nl; /* x = d * llmr_iq4_nl_values[q] */

/* GGML's kvalues_iq4nl: the levels an iq4_nl quant stands for, denser near zero, where most
 * weights are (quant/reference.py's IQ4_NL_VALUES: tests/test_kernels.py compares the two). */
static const int8_t llmr_iq4_nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                              1,    13,   25,  38,  53,  69,  89,  113};

/* Q4_K: a QK_K super-block of 8 sub-blocks of 32, each with a 6-bit scale sc and a 6-bit min m
 * packed in `scales` as llama.cpp's get_scale_min_k4 reads them (llmr_q4_k_scale_min). Sub-block
 * s's 32 quants are the low (s even) or high (s odd) nibbles of qs[32 (s / 2) .. + 32]. */
typedef struct {
    uint16_t d;    /* f16 super-block scale of the sub-block scales */
    uint16_t dmin; /* f16 super-block scale of the sub-block mins */
    uint8_t scales[12];
    uint8_t qs[QK_K / 2];
} block_q4_K; /* x = d * sc * q - dmin * m */

/* Sub-block j's (0..7) 6-bit scale and min (llama.cpp's get_scale_min_k4). */
static inline void llmr_q4_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q5_K: Q4_K plus a fifth bit per quant: element 32s + l (sub-block s) has its low four bits as
 * Q4_K's and its fifth as bit s of qh[l] (llmr_q5_k_quant). */
typedef struct {
    uint16_t d;    /* f16 super-block scale of the sub-block scales */
    uint16_t dmin; /* f16 super-block scale of the sub-block mins */
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K; /* x = d * sc * q - dmin * m, q 0..31 */

/* Element e's (0..255) quant: 0..31. */
static inline int llmr_q5_k_quant(const block_q5_K *b, int e) {
    const int s = e / 32, l = e % 32;
    return (b->qs[32 * (s / 2) + l] >> 4 * (s % 2) & 0x0F) | (b->qh[l] >> s & 1) << 4;
}

/* Q6_K: a QK_K super-block of 16 sub-blocks of 16, each with an int8 scale sc; 6-bit quants q,
 * x = d * sc * (q - 32). Element 128h + 32k + l (h < 2, k < 4, l < 32) keeps its low four bits
 * in ql[64h + 32 (k % 2) + l] (the low nibble for k < 2, the high one for k >= 2) and its top
 * two in qh[32h + l] (bits 2k and 2k + 1) (llmr_q6_k_quant). So q16_a block j = 4h + k of a
 * super-block reads 32 bytes of ql and 32 of qh, and spans sub-blocks 2j and 2j + 1. The f16 d
 * comes last: the block has no leading scale fields. */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d; /* f16 super-block scale of the sub-block scales */
} block_q6_K; /* x = d * sc * (q - 32) */

/* Element e's (0..255) quant minus 32: -32..31. */
static inline int llmr_q6_k_quant(const block_q6_K *b, int e) {
    const int h = e / 128, k = e % 128 / 32, l = e % 32;
    const int lo = b->ql[64 * h + 32 * (k % 2) + l] >> 4 * (k / 2) & 0x0F;
    const int hi = b->qh[32 * h + l] >> 2 * k & 3;
    return (lo | hi << 4) - 32;
}
#pragma pack(pop)

/* Activations quantised on the fly for the integer dot products. 16 bits, not 8: activations
 * carry outliers that set a block's scale, and at 8 bits the rest of the block loses enough to
 * move SmolLM2's logits by KL 2.6e-3 against exact weights (at 16 bits: below 1e-6). Never
 * stored in a file, so the scales stay f32; s = d * sum(qs) lets q4_0 / q4_1 apply their
 * offset once per block. Integer sums fit int32: 32 * 128 * 32767 < 2^31. */
typedef struct {
    float d;
    float s;
    int16_t qs[QK_Q16_A];
} block_q16_a;

/* q16_b: a q16_a block's integers as two byte planes, for the u8 x s8 multiply-adds of AVX-512
 * VNNI (vpdpbusd, 64 products an instruction where vpdpwssd's int16 ones make 32): qs[i] =
 * lo[i] + 256 hi[i], lo the low byte (unsigned), hi the high one (signed), so a weight quant q
 * of 8 bits or fewer meets qs as q lo + 256 q hi, two byte products, exact. d and s are q16_a's;
 * s16[h] = d * sum(qs[16h .. 16h + 15]) (q6_k's offsets, per 16-element sub-block). Made from
 * the q16_a blocks (llmr_kernels.q16_b_from_a), so the integers are the same on every ISA. */
typedef struct {
    float d;
    float s;
    float s16[2];
    uint8_t lo[QK_Q16_A];
    int8_t hi[QK_Q16_A];
} block_q16_b;

/* 1 / d for a q16_a block of scale d, or 0 where that is not a finite number (d = 0, tiny or
 * infinite: the activations of a model gone to overflow or of a corrupt file). Every q16_a
 * quantiser also leaves NaN out of a block's max and turns a NaN x * id into q = 0, so q
 * always fits int16 and the sums int32 (no undefined float-to-int conversion), the same on
 * every ISA; inf still reaches the result through d and s. */
static inline float llmr_q16_a_inverse(float d) {
    return d >= 0x1p-126f && d <= 0x1.fffffep127f ? 1.0f / d : 0.0f;
}

/* C11's _Static_assert is static_assert in C++ (the CUDA kernels include this header). */
#ifdef __cplusplus
#define LLMR_STATIC_ASSERT static_assert
#else
#define LLMR_STATIC_ASSERT _Static_assert
#endif
LLMR_STATIC_ASSERT(sizeof(block_q8_0) == 34, "block_q8_0 must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q4_0) == 18, "block_q4_0 must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q4_1) == 20, "block_q4_1 must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q5_0) == 22, "block_q5_0 must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q5_1) == 24, "block_q5_1 must be packed");
LLMR_STATIC_ASSERT(sizeof(block_iq4_nl) == 18, "block_iq4_nl must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q4_K) == 144, "block_q4_K must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q5_K) == 176, "block_q5_K must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q6_K) == 210, "block_q6_K must be packed");
LLMR_STATIC_ASSERT(sizeof(block_q16_a) == 72, "block_q16_a has no padding");
LLMR_STATIC_ASSERT(sizeof(block_q16_b) == 80, "block_q16_b has no padding");
LLMR_STATIC_ASSERT(QK8_0 == QK_Q16_A && QK4_0 == QK_Q16_A && QK4_1 == QK_Q16_A && QK5_0 == QK_Q16_A &&
                       QK5_1 == QK_Q16_A && QK4_NL == QK_Q16_A,
                   "the 32-element types' kernels pair weight block i with activation block i");

/* ---- f16 / bf16 <-> f32 --------------------------------------------------------------------
 * Bit manipulation only, so results do not depend on the CPU having F16C or on the compiler
 * supporting _Float16. */

static inline float llmr_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t llmr_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Exact for every f16 value, subnormals included (Maratyszcza's FP16 method): the f16
 * exponent and mantissa are moved into an f32 whose exponent is off by 112, which one
 * multiply by 2^-112 fixes; subnormals are built as (1.m * 2^-1) - 0.5 scaled alike. */
static inline float llmr_f16_to_f32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normal = llmr_f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float subnormal = llmr_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    /* A mask rather than ?: so that loops over this convert with vector selects. */
    const uint32_t is_sub = 0u - (uint32_t)(two_w < (1u << 27));
    const uint32_t bits = (llmr_f32_to_bits(subnormal) & is_sub) | (llmr_f32_to_bits(normal) & ~is_sub);
    return llmr_f32_from_bits(sign | bits);
}

/* Round to nearest even, overflow to inf, NaN stays a quiet NaN: what numpy's astype(float16)
 * (and F16C's vcvtps2ph) produce, so quantised scales match quant/reference.py bit for bit. */
static inline uint16_t llmr_f32_to_f16(float f) {
    const uint32_t x = llmr_f32_to_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t exp = (x >> 23) & 0xFFu;
    uint32_t mant = x & 0x007FFFFFu;
    if (exp == 0xFF) /* inf, or NaN with its top payload bits kept and quiet bit set */
        return (uint16_t)(sign | 0x7C00u | (mant ? 0x0200u | (mant >> 13) : 0u));
    if (exp > 142) /* >= 2^16 before rounding: beyond the largest finite f16 (65504) */
        return (uint16_t)(sign | 0x7C00u);
    if (exp < 113) { /* f16 subnormal or zero: the value in units of 2^-24, rounded */
        if (exp < 102) /* below 2^-25: rounds to zero */
            return sign;
        mant |= 0x00800000u;
        const uint32_t shift = 126 - exp; /* 14 .. 24 */
        const uint32_t half = 1u << (shift - 1);
        const uint32_t rest = mant & ((1u << shift) - 1);
        uint32_t q = mant >> shift;
        q += rest > half || (rest == half && (q & 1));
        return (uint16_t)(sign | q); /* a carry into bit 10 is the smallest normal: correct */
    }
    uint32_t h = ((exp - 112) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1FFFu;
    h += rest > 0x1000u || (rest == 0x1000u && (h & 1)); /* a carry may reach inf: correct */
    return (uint16_t)(sign | h);
}

static inline float llmr_bf16_to_f32(uint16_t h) { return llmr_f32_from_bits((uint32_t)h << 16); }

/* Round to nearest even; NaN stays a quiet NaN (as quant.reference.f32_to_bf16). */
static inline uint16_t llmr_f32_to_bf16(float f) {
    const uint32_t x = llmr_f32_to_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* ---- kernel signatures ---------------------------------------------------------------------- */

/* Row converters; k is the row length in elements (a multiple of the block size). */
typedef void (*llmr_quantize_fn)(const float *x, void *y, int64_t k);
typedef void (*llmr_dequantize_fn)(const void *x, float *y, int64_t k);
/* *s = dot(weight row w, activation row a), both of k elements. */
typedef void (*llmr_vec_dot_fn)(int64_t k, float *s, const void *w, const void *a);
/* LLMR_TILE tokens at once: s[i * s_stride] = dot(w, a + i * a_stride bytes) for i < LLMR_TILE.
 * Each weight block is unpacked once for the tile; every output is computed with exactly the
 * arithmetic of the same table's vec_dot (same exact int32 block sums, same float steps in the
 * same block order), so it equals vec_dot's result bit for bit. */
#define LLMR_TILE 4
typedef void (*llmr_vec_dot_tile_fn)(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                     size_t a_stride);
/* n consecutive weight rows of the rows layout against t activation rows (a + i * a_stride
 * bytes): out[i * out_stride + r] = dot(row r, activation row i) for r < n, i < t. Tiles of
 * several rows x several tokens, so each weight load meets several tokens and each activation
 * load several rows; every output is computed with exactly the arithmetic of the same table's
 * vec_dot, so it equals vec_dot's result bit for bit wherever it falls in the tiles. */
typedef void (*llmr_gemm_fn)(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
/* One X16 group of 16 weight rows against t activation rows (a + i * a_stride bytes):
 * out[i * out_stride + r] = dot(row r, activation row i) for r < 16, i < t. */
typedef void (*llmr_gemm_x16_fn)(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                 const void *a, size_t a_stride);

/* How a weight matrix's blocks lie in memory (recorded per tensor in a .llmr file).
 *
 * LLMR_LAYOUT_ROWS: GGUF's; each row its blocks in order.
 * LLMR_LAYOUT_X16 (types whose traits say x16: q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k .. q6_k;
 * rows a multiple of 16): groups of 16 consecutive rows, each group its blocks in order, each
 * block of the group as the 16 rows' first f16 scale field (d), then (q4_1, q5_1, q2_k, q4_k,
 * q5_k: n_scales = 2) their second (m; the k-quants' dmin), then the rows' other bytes, in order, in
 * 4-byte words, word c of row r at (c * 16 + r) * 4. Same bytes as 16 row blocks, moved (q5's
 * word 0 is its qh, words 1-4 its qs; q4_k's words 0-2 its packed scales, words 3-34 its qs;
 * q5_k's 0-2 the same, 3-10 its qh, 11-42 its qs; q6_k's d is its last field (scales_at 208), its
 * words 0-31 ql, 32-47 qh, 48-51 scales): one SIMD load then holds a word of 16 rows, and 16 dot
 * products advance in lanes, with no horizontal sums per block. */
enum llmr_layout { LLMR_LAYOUT_ROWS = 0, LLMR_LAYOUT_X16 = 1 };
#define LLMR_X16 16


/* What a weight type's vec_dot multiplies against. */
enum llmr_act { LLMR_ACT_F32, LLMR_ACT_Q16_A };

/* Facts about a weight type that do not depend on the ISA: one entry per type llmrun stores and
 * runs, the same facts as quant/types.py's table (tests/test_kernels.py compares the two). */
typedef struct {
    const char *name;
    int block_size;   /* elements per block */
    int type_size;    /* bytes per block */
    int n_scales;     /* f16 scale fields of a block (d; d and m), from byte scales_at */
    enum llmr_act act;
    int x16;          /* has the X16 layout: every ISA table then has its gemm_x16 */
    llmr_quantize_fn quantize;     /* reference quantiser, byte-exact with quant/reference.py */
    llmr_dequantize_fn dequantize;
    int scales_at;    /* the byte at which the scale fields start: 0 (they lead), q6_k's 208 (last) */
} llmr_type_traits;

/* NULL for an id that is not a supported type. */
const llmr_type_traits *llmr_type_traits_get(int type);
/* 0 if the traits table keeps the rules the type-agnostic code relies on (converters present,
 * blocks of whole q16_a blocks and at most LLMR_MAX_BLOCK_BYTES, X16 quants in 4-byte words);
 * else -1 and a message naming the type in err. */
int llmr_types_check(char *err, size_t err_size);
/* Bytes in a row of k elements; -1 if k is negative or not a multiple of the block. */
int64_t llmr_row_bytes(const llmr_type_traits *t, int64_t k);

/* Block b of row r (r < 16) of an X16 group, copied out in the rows layout (type_size bytes). */
void llmr_x16_get_block(const llmr_type_traits *t, const void *group, int r, int64_t b, void *out);

/* One ISA's kernels. Every entry is filled -- vec_dot for every type the traits table lists,
 * gemm_x16 for exactly those with the X16 layout, every op -- except vec_dot_tile and gemm, which
 * are optional; llmr_kernels_check holds each table to that at import. An ISA file that speeds up
 * only some kernels points the others at the scalar ones. */
/* Query tokens whose running sums an attention kernel may hold at once (its scratch). */
#define LLMR_ATTENTION_TOKENS 4

typedef struct {
    const char *isa;
    llmr_vec_dot_fn vec_dot[LLMR_TYPE_COUNT]; /* by weight type id */
    /* by weight type id; NULL (the default): matmul calls vec_dot once per token */
    llmr_vec_dot_tile_fn vec_dot_tile[LLMR_TYPE_COUNT];
    /* by weight type id, for the rows layout; where set, matmul calls it for every token count
     * instead of vec_dot_tile and vec_dot (the float types) */
    llmr_gemm_fn gemm[LLMR_TYPE_COUNT];
    llmr_gemm_x16_fn gemm_x16[LLMR_TYPE_COUNT]; /* by weight type id, for the X16 layout */
    /* by weight type id: 1 where gemm_x16 reads q16_b activation blocks, not q16_a (0, the default) */
    uint8_t x16_q16_b[LLMR_TYPE_COUNT];
    void (*quantize_q16_a)(const float *x, block_q16_a *y, int64_t k);
    /* nb q16_a blocks as q16_b; needed where x16_q16_b is set */
    void (*q16_b_from_a)(const block_q16_a *a, block_q16_b *b, int64_t nb);
    /* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for rows r of d elements */
    void (*rmsnorm)(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps);
    /* in place on x [t][h][hd], rotate-half convention over the first rd (even, <= hd) of each
     * head's hd elements (the rest kept: a partial rotary, Phi-4-mini), by the angles of
     * llmr_rope_table [t][rd / 2] */
    void (*rope)(float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t h, int64_t hd, int64_t rd);
    /* out [t][hq][hd]: causal grouped-query attention of q over k, v [hkv][n_ctx][hd] (each kv
     * head's rows one after another, so that a head's pass over the cache reads one contiguous
     * run; of kv_type LLMR_KV_*: an element becomes the f32 it stands for exactly as it is loaded,
     * so the result is the f32 kernel's on a cache of those values, bit for bit), scores
     * q.k * scale; token i sees positions 0 .. n_past + i, or with window > 0 only the last
     * `window` of them (a sliding window: n_past + i - window + 1 .. n_past + i). Only query
     * heads [h0, h1) are computed, each with the same arithmetic whatever the range, so ranges
     * can go to different threads.
     * scratch: n_past + t + LLMR_ATTENTION_TOKENS * hq * hd floats of this call's own (a row of
     * scores, and running sums kept out of out, whose cache lines neighbouring heads on other
     * threads may share). */
    void (*attention)(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t,
                      int64_t hq, int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window,
                      float scale, int64_t h0, int64_t h1, float *scratch);
    /* out = silu(gate) * up */
    void (*silu_mul)(float *out, const float *gate, const float *up, int64_t n);
    /* out = gelu(gate) * up, GELU's tanh approximation (Gemma) */
    void (*gelu_mul)(float *out, const float *gate, const float *up, int64_t n);
} llmr_kernels;

/* The scalar reference, always available; x86-64 adds avx2, avx512, avx512vnni, arm64 neon
 * (dispatch.c). */
extern const llmr_kernels llmr_kernels_scalar;

/* ---- scalar reference kernels (*_ref.c) ---------------------------------------------------- */

void quantize_row_f32_ref(const float *x, void *y, int64_t k);
void quantize_row_f16_ref(const float *x, void *y, int64_t k);
void quantize_row_bf16_ref(const float *x, void *y, int64_t k);
void quantize_row_q8_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_1_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_1_ref(const float *x, void *y, int64_t k);
void quantize_row_q2_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q3_K_ref(const float *x, void *y, int64_t k);
void quantize_row_iq4_nl_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q5_K_ref(const float *x, void *y, int64_t k);
/* The k-quant and iq4_nl fits' knobs: llama.cpp's (llmr_q2_k_fit, llmr_q4_k_fit, llmr_q5_k_fit,
 * llmr_q6_k_fit, and zeros for q3_k and iq4_nl), or the calibrated quantiser's variations of them (quant/calibrate.py's
 * _K_VARIANTS): the search q2_k's, q4_k's and q5_k's make_qkx2_quants runs (rmin + rdelta * i for
 * i in 0 .. nstep); the largest 6-bit scale and min put at 63 + grid (q3_k: its largest scale at
 * -(32 + grid); q6_k: its largest int8 scale at -(128 + grid), its search fixed); q3_k's `search`
 * (quant/reference.py's _quantize_q3_k); iq4_nl's `square` (each value weighs its square times its
 * importance, else its importance alone). */
typedef struct {
    float rmin, rdelta;
    int nstep;
    double grid;
    int search, square;
} llmr_k_fit;
extern const llmr_k_fit llmr_q2_k_fit, llmr_q4_k_fit, llmr_q5_k_fit, llmr_q6_k_fit;
/* The types' quantisers (quantize_row_q4_K_ref ...) with fit, and the importance of each value (k
 * values, the row's columns; NULL: none) in their fits, as quant/reference.py's with
 * `importance`. */
void quantize_row_q2_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
void quantize_row_q3_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
void quantize_row_q4_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
void quantize_row_q5_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
void quantize_row_q6_K_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
void quantize_row_iq4_nl_fit(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
typedef void (*llmr_k_fit_fn)(const float *x, void *y, int64_t k, const llmr_k_fit *fit, const float *importance);
/* The fit above of a type (q2_k .. q6_k, iq4_nl), or NULL. */
llmr_k_fit_fn llmr_k_fit_for(int type);
/* The calibrated k-quant (and iq4_nl) quantiser (quant/calibrate.py's quantize_k_weighted): per
 * block, of the type's own quantiser's block and the n_fits fits' (importance: the row's k values, or NULL),
 * the one with the least weighted squared error sum w_i (dequantised_i - x_i)^2 (w: k doubles; in
 * double, in order), the first of equals. -1 for a type without fits. */
int quantize_row_k_best(int type, const float *x, void *y, int64_t k, const llmr_k_fit *fits, int n_fits,
                        const float *importance, const double *w);
/* The calibrated q4_0 / q5_0 / q4_1 / q5_1 quantiser (quant/calibrate.py's _weighted_symmetric and
 * _weighted_affine, the same bytes): per block, the best of 19 grids by the weighted squared error,
 * w the columns' weights (k doubles). -1 for another type. */
int quantize_row_weighted(int type, const float *x, void *y, int64_t k, const double *w);
void quantize_row_q6_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q16_a_ref(const float *x, block_q16_a *y, int64_t k);
void q16_b_from_a_ref(const block_q16_a *a, block_q16_b *b, int64_t nb);

void dequantize_row_f32_ref(const void *x, float *y, int64_t k);
void dequantize_row_f16_ref(const void *x, float *y, int64_t k);
void dequantize_row_bf16_ref(const void *x, float *y, int64_t k);
void dequantize_row_q8_0_ref(const void *x, float *y, int64_t k);
void dequantize_row_q4_0_ref(const void *x, float *y, int64_t k);
void dequantize_row_q4_1_ref(const void *x, float *y, int64_t k);
void dequantize_row_q5_0_ref(const void *x, float *y, int64_t k);
void dequantize_row_q5_1_ref(const void *x, float *y, int64_t k);
void dequantize_row_q2_K_ref(const void *x, float *y, int64_t k);
void dequantize_row_q3_K_ref(const void *x, float *y, int64_t k);
void dequantize_row_iq4_nl_ref(const void *x, float *y, int64_t k);
void dequantize_row_q4_K_ref(const void *x, float *y, int64_t k);
void dequantize_row_q5_K_ref(const void *x, float *y, int64_t k);
void dequantize_row_q6_K_ref(const void *x, float *y, int64_t k);

void vec_dot_f32_f32_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_f16_f32_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_bf16_f32_ref(int64_t k, float *s, const void *w, const void *a);
/* The float weights' gemm (llmr_gemm_fn) of one ISA: gemm_<f32|f16|bf16>_f32_<isa>. */
#define LLMR_DECLARE_GEMM_FLOAT(isa)                                                                        \
    void gemm_f32_f32_##isa(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w,  \
                            const void *a, size_t a_stride);                                              \
    void gemm_f16_f32_##isa(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w,  \
                            const void *a, size_t a_stride);                                              \
    void gemm_bf16_f32_##isa(int64_t k, int64_t n, int64_t t, float *out, size_t out_stride, const void *w, \
                             const void *a, size_t a_stride);
LLMR_DECLARE_GEMM_FLOAT(ref)
void vec_dot_q8_0_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_0_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_1_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_0_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_1_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_iq4_nl_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_K_q16_a_ref(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q6_K_q16_a_ref(int64_t k, float *s, const void *w, const void *a);

void gemm_x16_q8_0_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_q4_0_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_q4_1_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_q5_0_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_q5_1_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_iq4_nl_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                               const void *a, size_t a_stride);
void gemm_x16_q4_K_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_q6_K_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);

/* q5_K's kernels, every ISA (each in its own file: vec_dot_q5_k_<isa>.c, gemm_x16_q5_k_<isa>.c;
 * only those of the ISAs built are defined; avx2's and avx512vnni's gemm_x16 read q16_b, below) */
#define LLMR_DECLARE_Q5_K(isa)                                                                       \
    void vec_dot_q5_K_q16_a_##isa(int64_t k, float *s, const void *w, const void *a);              \
    void gemm_x16_q5_K_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);
LLMR_DECLARE_Q5_K(ref)
void vec_dot_q5_K_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
LLMR_DECLARE_Q5_K(avx512)
void vec_dot_q5_K_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
LLMR_DECLARE_Q5_K(neon)

/* q3_K's and q2_K's rows-layout dot products, every ISA (each in its own file: vec_dot_q3_k_<isa>.c,
 * vec_dot_q2_k_<isa>.c; only those of the ISAs built are defined). Their X16 kernels are q6_k's
 * (gemm_x16_q6_k_<isa>.c; avx2's and avx512vnni's read q16_b, below). */
#define LLMR_DECLARE_Q23_K(isa)                                                                        \
    void vec_dot_q3_K_q16_a_##isa(int64_t k, float *s, const void *w, const void *a);                \
    void vec_dot_q2_K_q16_a_##isa(int64_t k, float *s, const void *w, const void *a);
void gemm_x16_q3_K_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
void gemm_x16_q2_K_q16_a_ref(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                             const void *a, size_t a_stride);
LLMR_DECLARE_Q23_K(ref)
LLMR_DECLARE_Q23_K(avx2)
LLMR_DECLARE_Q23_K(avx512)
LLMR_DECLARE_Q23_K(avx512vnni)
LLMR_DECLARE_Q23_K(neon)

void rmsnorm_ref(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps);
void rope_ref(float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t h, int64_t hd, int64_t rd);
/* cos_t, sin_t [t][half] of the angles pos[t] * inv_freq[i], times mscale (LongRoPE's attention
 * factor; 1 otherwise), for rope: once per forward call, not once per layer and head. */
void llmr_rope_table(float *cos_t, float *sin_t, const int32_t *pos, const float *inv_freq, int64_t t,
                     int64_t half, float mscale);
void attention_ref(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t,
                   int64_t hq, int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window, float scale,
                   int64_t h0, int64_t h1, float *scratch);
/* The rotation a q8_0 KV cache's rows are stored in (llama.cpp's for its quantised caches): each
 * head's hd values in runs of n, the largest power of two dividing hd, times the Walsh-Hadamard
 * matrix H_n (Sylvester's order, entries +-1; H_n H_n = n I), in place for `rows` rows, then
 * divided by n where `divide` (a power of two: exact). K and V rows go in as H k, H v, a query as
 * H q / n, so q.k is unchanged, and the attention output comes back by H / n. A q8_0 block of
 * 32 then holds mixtures of n values, which spreads a head's few large ones (SmolLM2's mean KLD
 * over Pride and Prejudice against an f32 cache: 4.4e-4 unrotated, 1.8e-4 rotated). */
void llmr_kv_rotate(float *x, int64_t rows, int64_t hd, int divide);
void silu_mul_ref(float *out, const float *gate, const float *up, int64_t n);
void gelu_mul_ref(float *out, const float *gate, const float *up, int64_t n);

/* ---- x86-64 SIMD kernels (*_avx2.c, *_avx512.c; built and called only on x86-64) ---------- */

/* AVX2 + FMA + F16C */
void attention_avx2(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t, int64_t hq,
                    int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window, float scale, int64_t h0,
                    int64_t h1, float *scratch);
void quantize_row_q16_a_avx2(const float *x, block_q16_a *y, int64_t k);
void vec_dot_f32_f32_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_f16_f32_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_bf16_f32_avx2(int64_t k, float *s, const void *w, const void *a);
LLMR_DECLARE_GEMM_FLOAT(avx2)
void vec_dot_q8_0_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_0_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_1_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_0_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_1_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_iq4_nl_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_K_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q6_K_q16_a_avx2(int64_t k, float *s, const void *w, const void *a);

/* AVX-512 F + BW + VL; the _avx512vnni dots are the same source built with VNNI */
void attention_avx512(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t, int64_t hq,
                      int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window, float scale, int64_t h0,
                      int64_t h1, float *scratch);
void quantize_row_q16_a_avx512(const float *x, block_q16_a *y, int64_t k);
void vec_dot_f32_f32_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_f16_f32_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_bf16_f32_avx512(int64_t k, float *s, const void *w, const void *a);
LLMR_DECLARE_GEMM_FLOAT(avx512)
void vec_dot_q8_0_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_0_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_1_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_0_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_1_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_iq4_nl_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_K_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q6_K_q16_a_avx512(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q8_0_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_0_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_1_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_0_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_1_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_iq4_nl_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_K_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q6_K_q16_a_avx512vnni(int64_t k, float *s, const void *w, const void *a);
/* LLMR_TILE-token tiles of the quantised dots above (llmr_vec_dot_tile_fn) */
void vec_dot_tile_q8_0_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q4_0_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q4_1_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q5_0_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q5_1_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_iq4_nl_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q6_K_q16_a_avx2(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q8_0_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q4_0_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q4_1_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q5_0_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q5_1_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_iq4_nl_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q6_K_q16_a_avx512(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q8_0_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q4_0_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q4_1_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q5_0_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q5_1_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_iq4_nl_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);
void vec_dot_tile_q6_K_q16_a_avx512vnni(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                size_t a_stride);

#define LLMR_DECLARE_GEMM_X16(isa)                                                                 \
    void gemm_x16_q8_0_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);                                 \
    void gemm_x16_q4_0_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);                                 \
    void gemm_x16_q4_1_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);                                 \
    void gemm_x16_q5_0_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);                                 \
    void gemm_x16_q5_1_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);                                 \
    void gemm_x16_iq4_nl_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                     const void *a, size_t a_stride);
#define LLMR_DECLARE_GEMM_X16_Q4_K(isa)                                                            \
    void gemm_x16_q4_K_q16_a_##isa(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, \
                                   const void *a, size_t a_stride);
LLMR_DECLARE_GEMM_X16(avx2)
void rmsnorm_avx2(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps);
void rmsnorm_avx512(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps);
void silu_mul_avx2(float *out, const float *gate, const float *up, int64_t n);
void silu_mul_avx512(float *out, const float *gate, const float *up, int64_t n);
void gelu_mul_avx2(float *out, const float *gate, const float *up, int64_t n);
void gelu_mul_avx512(float *out, const float *gate, const float *up, int64_t n);
LLMR_DECLARE_GEMM_X16(avx512)
LLMR_DECLARE_GEMM_X16_Q4_K(avx512)
LLMR_DECLARE_GEMM_X16(avx512vnni)
void gemm_x16_q6_K_q16_a_avx512(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                                size_t a_stride);
void gemm_x16_q3_K_q16_a_avx512(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                                size_t a_stride);
/* AVX2 and AVX-512 VNNI kernels reading q16_b activations (u8 x s8 multiply-adds) */
void gemm_x16_q4_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void gemm_x16_q5_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void gemm_x16_q6_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void gemm_x16_q3_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void gemm_x16_q2_K_q16_b_avx2(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void q16_b_from_a_avx2(const block_q16_a *a, block_q16_b *b, int64_t nb);
void q16_b_from_a_avx512(const block_q16_a *a, block_q16_b *b, int64_t nb);
void gemm_x16_q4_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride);
void gemm_x16_q5_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride);
void gemm_x16_q6_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride);
void gemm_x16_q3_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride);
void gemm_x16_q2_K_q16_b_avx512vnni(int64_t k, int64_t t, float *out, size_t out_stride, const void *w,
                                    const void *a, size_t a_stride);

/* ---- arm64 NEON kernels (*_neon.c; built and called only on arm64, where NEON is baseline) -- */

void attention_neon(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t, int64_t hq,
                    int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window, float scale, int64_t h0,
                    int64_t h1, float *scratch);
void quantize_row_q16_a_neon(const float *x, block_q16_a *y, int64_t k);
void vec_dot_f32_f32_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_f16_f32_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_bf16_f32_neon(int64_t k, float *s, const void *w, const void *a);
LLMR_DECLARE_GEMM_FLOAT(neon)
void vec_dot_q8_0_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_0_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_1_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_0_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q5_1_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_iq4_nl_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q4_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_q6_K_q16_a_neon(int64_t k, float *s, const void *w, const void *a);
void vec_dot_tile_q6_K_q16_a_neon(int64_t k, float *s, size_t s_stride, const void *w, const void *a,
                                  size_t a_stride);
LLMR_DECLARE_GEMM_X16(neon)
LLMR_DECLARE_GEMM_X16_Q4_K(neon)
void gemm_x16_q6_K_q16_a_neon(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void gemm_x16_q3_K_q16_a_neon(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);
void gemm_x16_q2_K_q16_a_neon(int64_t k, int64_t t, float *out, size_t out_stride, const void *w, const void *a,
                              size_t a_stride);

/* ---- dispatch (dispatch.c) ------------------------------------------------------------------ */

/* Pick the kernels once. `forced` (LLMRUN_ISA) names an ISA or is NULL/empty for the best
 * one this CPU runs. Returns NULL and a message in err if the forced ISA is unknown or this
 * CPU cannot run it. */
const llmr_kernels *llmr_dispatch(const char *forced, char *err, size_t err_size);
/* 0 if the table is complete for the traits table (see llmr_kernels), else -1 and a message
 * naming the ISA and the type or op in err. llmr_dispatch checks every table this build has,
 * whatever the CPU, so a kernel left out fails the import instead of being called through NULL. */
int llmr_kernels_check(const llmr_kernels *k, char *err, size_t err_size);
/* The ISAs this CPU can run, best first; returns how many (at most cap) names it wrote. */
int llmr_isas(const char **names, int cap);

/* How the x86 kernels prefetch the weights they stream (kernels/cpu/prefetch_x86.h): NTA, the
 * block about to be read, non-temporal; L2, blocks ahead, into L2. Set once, at import. */
typedef enum { LLMR_PREFETCH_NTA, LLMR_PREFETCH_L2 } llmr_prefetch_mode;
extern llmr_prefetch_mode llmr_prefetch;
/* Choose it: `forced` (LLMRUN_PREFETCH) "nta" or "l2", or NULL/empty for this CPU's (AMD: nta;
 * other x86: l2; arm64, whose kernels do not prefetch: nta). Returns the mode's name, or NULL and a
 * message in err for an unknown name. */
const char *llmr_prefetch_choose(const char *forced, char *err, size_t err_size);

/* ---- type-agnostic loops (matmul.c) ------------------------------------------------------- */

/* Bytes of q16_a scratch llmr_matmul needs for t rows of k (0 for float weight types). */
size_t llmr_matmul_scratch(const llmr_type_traits *t, int64_t rows, int64_t k);
typedef struct {
    const void *data;
    int type, layout;
    int64_t rows, cols;
} llmr_weight;

/* 0 if kern multiplies weights of `type` in `layout`; -1 for an unknown type id or a layout the
 * type does not have. A table from llmr_dispatch has every kernel the traits ask for, so this
 * turns an unchecked id into an error instead of a call through NULL. */
int llmr_matmul_supported(const llmr_kernels *kern, int type, int layout);
/* out[t][n] = dot(W[n], x[t]) for W: n rows of `type` in `layout`, x: t rows of k floats.
 * Returns 0, or -1 (nothing computed) where llmr_matmul_supported says no. */
int llmr_matmul(const llmr_kernels *kern, int type, int layout, float *out, const float *x, const void *w,
                int64_t t, int64_t n, int64_t k, void *scratch);
/* llmr_matmul for up to LLMR_MAX_MATMUL_PARTS weights of the same input x [t][k] (all with
 * cols k, all quantised or all float), outs[i] [t][ws[i].rows], in one job: x is quantised
 * once and the threads meet once. Each output equals llmr_matmul's bit for bit. Scratch: the
 * first weight's llmr_matmul_scratch. Returns as llmr_matmul: -1 if any weight is unsupported. */
#define LLMR_MAX_MATMUL_PARTS 3
int llmr_matmul_many(const llmr_kernels *kern, int n_weights, const llmr_weight *ws, float *const *outs,
                     const float *x, int64_t t, void *scratch);
/* out[i] = dequantised row ids[i] of W [rows][k]. Each id is read once and checked here, not
 * by the caller, as another thread may change ids while the GIL is released. Returns -1, or
 * the position of the first id outside [0, rows) (*bad = its value) and stops there. */
int64_t llmr_get_rows(int type, int layout, float *out, const void *w, int64_t rows, const int32_t *ids,
                      int64_t n, int64_t k, int32_t *bad);

/* ---- threaded attention (attention.c) ------------------------------------------------------ */

/* One sequence's attention in a layer: its t new tokens' queries q [t][hq*hd] over its own cache
 * k, v [hkv][n_ctx][hd] (positions 0 .. n_past + t - 1 filled; of kv_type LLMR_KV_*),
 * into out [t][hq*hd]. */
typedef struct {
    float *out;
    const float *q;
    const void *k, *v;
    int kv_type;
    int64_t t, n_past, n_ctx;
} llmr_attention_seq;

/* A KV cache's element types (--kv-type; llmrun.backends.KV_DTYPES, in this order): f32; f16,
 * rounded to nearest even as stored; q8_0, each row's blocks of 32 made by quantize_row_q8_0_ref
 * from the rotated row (llmr_kv_rotate). Every attention kernel turns an element into the f32 it
 * stands for exactly as it loads it (f16 widened; a q8_0 d * q, an 11-bit by 8-bit product), so
 * that its result is its f32 result on the cache those values would fill, bit for bit. */
enum { LLMR_KV_F32 = 0, LLMR_KV_F16 = 1, LLMR_KV_Q8_0 = 2 };

/* Bytes of n elements of a KV cache of type kv (for q8_0, n is a multiple of its 32). */
static inline int64_t llmr_kv_row_bytes(int kv, int64_t n) {
    return kv == LLMR_KV_Q8_0 ? n / QK8_0 * (int64_t)sizeof(block_q8_0) : n * (kv == LLMR_KV_F16 ? 2 : 4);
}

/* n elements on from p in a KV cache of type kv. */
static inline const void *llmr_kv_skip(const void *p, int64_t n, int kv) {
    return (const uint8_t *)p + llmr_kv_row_bytes(kv, n);
}

/* The table's attention kernel on the pool for n sequences in one job, in units of tokens and a
 * range of query heads. scratch: slots * llmr_attention_scratch(...) floats, with slots =
 * llmr_attention_slots(...) read when the scratch was sized (the thread count may change in
 * between); both read only t and n_past of the sequences. */
int64_t llmr_attention_slots(const llmr_attention_seq *seqs, int64_t n, int64_t hq, int64_t hd);
int64_t llmr_attention_scratch(const llmr_attention_seq *seqs, int64_t n, int64_t hq, int64_t hd); /* per slot */
void llmr_attention(const llmr_kernels *kern, const llmr_attention_seq *seqs, int64_t n, int64_t hq, int64_t hkv,
                    int64_t hd, int64_t window, float scale, float *scratch, int64_t slots);

/* ---- sampling (top_k.c) --------------------------------------------------------------------- */

/* ids[0 .. returned) = the indices of the k largest of x[0 .. n), largest first, a tie to the
 * lower index; NaN is left out, so fewer than k come back only from a row with fewer than k
 * other values. n < 2^31. */
int64_t llmr_top_k(const double *x, int64_t n, int64_t k, int32_t *ids);

/* ---- the forward pass (forward.c) ----------------------------------------------------------- */

/* A layer's weights and switches (llmrun/model.py's LayerWeights and ModelConfig). A pointer
 * left NULL is a tensor the family does not have. */
typedef struct {
    const float *attn_norm, *ffn_norm;            /* [D] */
    const float *bq, *bk, *bv;                    /* q/k/v biases (Qwen2) */
    const float *q_norm, *k_norm;                 /* [hd]: RMSNorm of each head of q and k before RoPE (Qwen3, Gemma 3) */
    const float *attn_post_norm, *ffn_post_norm;  /* [D]: a sublayer's output normed before the residual add (Gemma 3) */
    llmr_weight wq, wk, wv, wo, w_gate, w_up, w_down;
    int rope;       /* LLMR_ROPE_NONE (SmolLM3's every fourth layer), _GLOBAL or _LOCAL (Gemma 3's windowed layers) */
    int64_t window; /* attention sees the last `window` positions; 0: all */
} llmr_layer;

enum { LLMR_ROPE_NONE = 0, LLMR_ROPE_GLOBAL = 1, LLMR_ROPE_LOCAL = 2 };
enum { LLMR_ACT_SILU = 0, LLMR_ACT_GELU_TANH = 1 };

typedef struct {
    int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim;
    int64_t rope_dims;     /* the first rope_dims of each head rotate (<= head_dim) */
    int act;               /* the feed-forward gate's activation, LLMR_ACT_* */
    float norm_eps;
    float embed_scale;     /* the embeddings times this on the way in (Gemma 3: sqrt(D); Granite) */
    float residual_scale;  /* each sublayer's output times this before the add (Granite) */
    float attn_scale;      /* q.k times this (head_dim^-0.5 unless the family says otherwise) */
    float logit_scale;     /* the logits times this (Granite: 1 / logits_scaling) */
    float rope_mscale;     /* cos and sin times this (LongRoPE's attention factor; 1 otherwise) */
    const float *inv_freq;       /* [rope_dims / 2] */
    const float *inv_freq_local; /* [rope_dims / 2], LLMR_ROPE_LOCAL layers' (NULL if none) */
    const float *norm;     /* [D] */
    llmr_weight tok_embeddings, output;
    const llmr_layer *layers;
} llmr_model;

/* One sequence's part of a forward pass: tokens[0 .. t) at positions n_past .. of its own caches
 * k_cache, v_cache [n_layers][n_kv_heads][n_ctx][head_dim] of kv_type LLMR_KV_* (f16: new rows
 * rounded to nearest even, as numpy's astype(float16); q8_0: quantize_row_q8_0_ref of the rotated
 * rows), with logits wanted from its token `first` on (0 <= first < t). */
typedef struct {
    const int32_t *tokens;
    int64_t t, n_past, n_ctx, first;
    void *k_cache, *v_cache;
    int kv_type;
} llmr_segment;

/* llmrun/model.py's forward() for n_segs >= 1 segments at once (one segment: a plain prefill or
 * decode step): writes each segment's keys and values into its caches at its positions, and the
 * logits of each segment's tokens from its `first` on into logits [sum(t - first)][vocab],
 * segment after segment. A segment's results are those it gets alone. The caller has checked
 * the shapes, and that no two segments' caches overlap.
 * Returns -1 when done, -2 if out of memory, -3 if a weight has no kernel in kern
 * (llmr_matmul_supported; nothing is written then), or the position of the first token id outside
 * the vocabulary, counted over all segments' tokens in order (*bad_token = its value; nothing is
 * written then, into any cache). */
int64_t llmr_forward(const llmr_kernels *kern, const llmr_model *m, const llmr_segment *segs, int64_t n_segs,
                     float *logits, int32_t *bad_token);

/* ---- thread pool (threads.c) ---------------------------------------------------------------- */

#define LLMR_MAX_THREADS 512
/* Work item `item` of a job; each output element must be written by exactly one item. */
typedef void (*llmr_task_fn)(void *ctx, int64_t item);
/* Run fn(ctx, i) for i in [0, n_items) on the pool (the caller takes part); returns when all
 * are done. Jobs from two threads at once: the second runs on its caller alone. */
void llmr_parallel_for(int64_t n_items, llmr_task_fn fn, void *ctx);
/* Physical cores this process may use (affinity, cgroup quota), at least 1. */
int llmr_threads_default(void);
/* Set the thread count (at import, and from set_threads); -1 if n is outside [1, LLMR_MAX_THREADS].
 * The pool is (re)made lazily by the next job. */
int llmr_threads_init(int n);
int llmr_threads_set(int n);
int llmr_threads_get(void);

#ifdef __cplusplus
}
#endif
#endif
