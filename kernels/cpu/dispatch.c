/* Which kernels run: every ISA's table, best first, each with a test of whether this CPU can
 * run it. Chosen once at import, so one wheel runs on any x86-64 or arm64 and the hot loops
 * never branch on the CPU (but for the x86 prefetch mode, also chosen here: one branch a
 * super-block, prefetch_x86.h). */
#include <stdio.h>
#include <string.h>

#include "llmrun.h"

const llmr_kernels llmr_kernels_scalar = {
    .isa = "scalar",
    .vec_dot = {
        [LLMR_TYPE_F32] = vec_dot_f32_f32_ref,
        [LLMR_TYPE_F16] = vec_dot_f16_f32_ref,
        [LLMR_TYPE_BF16] = vec_dot_bf16_f32_ref,
        [LLMR_TYPE_Q8_0] = vec_dot_q8_0_q16_a_ref,
        [LLMR_TYPE_Q4_0] = vec_dot_q4_0_q16_a_ref,
        [LLMR_TYPE_Q4_1] = vec_dot_q4_1_q16_a_ref,
        [LLMR_TYPE_Q5_0] = vec_dot_q5_0_q16_a_ref,
        [LLMR_TYPE_Q5_1] = vec_dot_q5_1_q16_a_ref,
        [LLMR_TYPE_Q2_K] = vec_dot_q2_K_q16_a_ref,
        [LLMR_TYPE_Q3_K] = vec_dot_q3_K_q16_a_ref,
        [LLMR_TYPE_IQ4_NL] = vec_dot_iq4_nl_q16_a_ref,
        [LLMR_TYPE_Q4_K] = vec_dot_q4_K_q16_a_ref,
        [LLMR_TYPE_Q5_K] = vec_dot_q5_K_q16_a_ref,
        [LLMR_TYPE_Q6_K] = vec_dot_q6_K_q16_a_ref,
    },
    .gemm = {
        [LLMR_TYPE_F32] = gemm_f32_f32_ref,
        [LLMR_TYPE_F16] = gemm_f16_f32_ref,
        [LLMR_TYPE_BF16] = gemm_bf16_f32_ref,
    },
    .gemm_x16 = {
        [LLMR_TYPE_Q8_0] = gemm_x16_q8_0_q16_a_ref,
        [LLMR_TYPE_Q4_0] = gemm_x16_q4_0_q16_a_ref,
        [LLMR_TYPE_Q4_1] = gemm_x16_q4_1_q16_a_ref,
        [LLMR_TYPE_Q5_0] = gemm_x16_q5_0_q16_a_ref,
        [LLMR_TYPE_Q5_1] = gemm_x16_q5_1_q16_a_ref,
        [LLMR_TYPE_IQ4_NL] = gemm_x16_iq4_nl_q16_a_ref,
        [LLMR_TYPE_Q4_K] = gemm_x16_q4_K_q16_a_ref,
        [LLMR_TYPE_Q5_K] = gemm_x16_q5_K_q16_a_ref,
        [LLMR_TYPE_Q6_K] = gemm_x16_q6_K_q16_a_ref,
        [LLMR_TYPE_Q3_K] = gemm_x16_q3_K_q16_a_ref,
        [LLMR_TYPE_Q2_K] = gemm_x16_q2_K_q16_a_ref,
    },
    .quantize_q16_a = quantize_row_q16_a_ref,
    .rmsnorm = rmsnorm_ref,
    .rope = rope_ref,
    .attention = attention_ref,
    .silu_mul = silu_mul_ref,
    .gelu_mul = gelu_mul_ref,
};

static int always(void) { return 1; }

/* x86-64: CMakeLists.txt builds the *_avx2.c / *_avx512.c files for exactly these targets. The
 * ops that are a small share of the time (rope) stay scalar. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define LLMR_X86 1

static const llmr_kernels llmr_kernels_avx2 = {
    .isa = "avx2",
    .vec_dot = {
        [LLMR_TYPE_F32] = vec_dot_f32_f32_avx2,
        [LLMR_TYPE_F16] = vec_dot_f16_f32_avx2,
        [LLMR_TYPE_BF16] = vec_dot_bf16_f32_avx2,
        [LLMR_TYPE_Q8_0] = vec_dot_q8_0_q16_a_avx2,
        [LLMR_TYPE_Q4_0] = vec_dot_q4_0_q16_a_avx2,
        [LLMR_TYPE_Q4_1] = vec_dot_q4_1_q16_a_avx2,
        [LLMR_TYPE_Q5_0] = vec_dot_q5_0_q16_a_avx2,
        [LLMR_TYPE_Q5_1] = vec_dot_q5_1_q16_a_avx2,
        [LLMR_TYPE_Q2_K] = vec_dot_q2_K_q16_a_avx2,
        [LLMR_TYPE_Q3_K] = vec_dot_q3_K_q16_a_avx2,
        [LLMR_TYPE_IQ4_NL] = vec_dot_iq4_nl_q16_a_avx2,
        [LLMR_TYPE_Q4_K] = vec_dot_q4_K_q16_a_avx2,
        [LLMR_TYPE_Q5_K] = vec_dot_q5_K_q16_a_avx2,
        [LLMR_TYPE_Q6_K] = vec_dot_q6_K_q16_a_avx2,
    },
    .vec_dot_tile = {
        [LLMR_TYPE_Q8_0] = vec_dot_tile_q8_0_q16_a_avx2,
        [LLMR_TYPE_Q4_0] = vec_dot_tile_q4_0_q16_a_avx2,
        [LLMR_TYPE_Q4_1] = vec_dot_tile_q4_1_q16_a_avx2,
        [LLMR_TYPE_Q5_0] = vec_dot_tile_q5_0_q16_a_avx2,
        [LLMR_TYPE_Q5_1] = vec_dot_tile_q5_1_q16_a_avx2,
        [LLMR_TYPE_IQ4_NL] = vec_dot_tile_iq4_nl_q16_a_avx2,
        [LLMR_TYPE_Q6_K] = vec_dot_tile_q6_K_q16_a_avx2,
    },
    .gemm = {
        [LLMR_TYPE_F32] = gemm_f32_f32_avx2,
        [LLMR_TYPE_F16] = gemm_f16_f32_avx2,
        [LLMR_TYPE_BF16] = gemm_bf16_f32_avx2,
    },
    .gemm_x16 = {
        [LLMR_TYPE_Q8_0] = gemm_x16_q8_0_q16_a_avx2,
        [LLMR_TYPE_Q4_0] = gemm_x16_q4_0_q16_a_avx2,
        [LLMR_TYPE_Q4_1] = gemm_x16_q4_1_q16_a_avx2,
        [LLMR_TYPE_Q5_0] = gemm_x16_q5_0_q16_a_avx2,
        [LLMR_TYPE_Q5_1] = gemm_x16_q5_1_q16_a_avx2,
        [LLMR_TYPE_IQ4_NL] = gemm_x16_iq4_nl_q16_a_avx2,
        [LLMR_TYPE_Q4_K] = gemm_x16_q4_K_q16_b_avx2,
        [LLMR_TYPE_Q5_K] = gemm_x16_q5_K_q16_b_avx2,
        [LLMR_TYPE_Q6_K] = gemm_x16_q6_K_q16_b_avx2,
        [LLMR_TYPE_Q3_K] = gemm_x16_q3_K_q16_b_avx2,
        [LLMR_TYPE_Q2_K] = gemm_x16_q2_K_q16_b_avx2,
    },
    /* u8 x s8 products (vpmaddubsw), with int16 sums (gemm_x16_q4_k_avx2.c) */
    .x16_q16_b = {[LLMR_TYPE_Q2_K] = 1, [LLMR_TYPE_Q3_K] = 1, [LLMR_TYPE_Q4_K] = 1, [LLMR_TYPE_Q5_K] = 1,
                   [LLMR_TYPE_Q6_K] = 1},
    .quantize_q16_a = quantize_row_q16_a_avx2,
    .q16_b_from_a = q16_b_from_a_avx2,
    .rmsnorm = rmsnorm_avx2,
    .rope = rope_ref,
    .attention = attention_avx2,
    .silu_mul = silu_mul_avx2,
    .gelu_mul = gelu_mul_avx2,
};

static const llmr_kernels llmr_kernels_avx512 = {
    .isa = "avx512",
    .vec_dot = {
        [LLMR_TYPE_F32] = vec_dot_f32_f32_avx512,
        [LLMR_TYPE_F16] = vec_dot_f16_f32_avx512,
        [LLMR_TYPE_BF16] = vec_dot_bf16_f32_avx512,
        [LLMR_TYPE_Q8_0] = vec_dot_q8_0_q16_a_avx512,
        [LLMR_TYPE_Q4_0] = vec_dot_q4_0_q16_a_avx512,
        [LLMR_TYPE_Q4_1] = vec_dot_q4_1_q16_a_avx512,
        [LLMR_TYPE_Q5_0] = vec_dot_q5_0_q16_a_avx512,
        [LLMR_TYPE_Q5_1] = vec_dot_q5_1_q16_a_avx512,
        [LLMR_TYPE_Q2_K] = vec_dot_q2_K_q16_a_avx512,
        [LLMR_TYPE_Q3_K] = vec_dot_q3_K_q16_a_avx512,
        [LLMR_TYPE_IQ4_NL] = vec_dot_iq4_nl_q16_a_avx512,
        [LLMR_TYPE_Q4_K] = vec_dot_q4_K_q16_a_avx512,
        [LLMR_TYPE_Q5_K] = vec_dot_q5_K_q16_a_avx512,
        [LLMR_TYPE_Q6_K] = vec_dot_q6_K_q16_a_avx512,
    },
    .vec_dot_tile = {
        [LLMR_TYPE_Q8_0] = vec_dot_tile_q8_0_q16_a_avx512,
        [LLMR_TYPE_Q4_0] = vec_dot_tile_q4_0_q16_a_avx512,
        [LLMR_TYPE_Q4_1] = vec_dot_tile_q4_1_q16_a_avx512,
        [LLMR_TYPE_Q5_0] = vec_dot_tile_q5_0_q16_a_avx512,
        [LLMR_TYPE_Q5_1] = vec_dot_tile_q5_1_q16_a_avx512,
        [LLMR_TYPE_IQ4_NL] = vec_dot_tile_iq4_nl_q16_a_avx512,
        [LLMR_TYPE_Q6_K] = vec_dot_tile_q6_K_q16_a_avx512,
    },
    .gemm = {
        [LLMR_TYPE_F32] = gemm_f32_f32_avx512,
        [LLMR_TYPE_F16] = gemm_f16_f32_avx512,
        [LLMR_TYPE_BF16] = gemm_bf16_f32_avx512,
    },
    .gemm_x16 = {
        [LLMR_TYPE_Q8_0] = gemm_x16_q8_0_q16_a_avx512,
        [LLMR_TYPE_Q4_0] = gemm_x16_q4_0_q16_a_avx512,
        [LLMR_TYPE_Q4_1] = gemm_x16_q4_1_q16_a_avx512,
        [LLMR_TYPE_Q5_0] = gemm_x16_q5_0_q16_a_avx512,
        [LLMR_TYPE_Q5_1] = gemm_x16_q5_1_q16_a_avx512,
        [LLMR_TYPE_IQ4_NL] = gemm_x16_iq4_nl_q16_a_avx512,
        [LLMR_TYPE_Q4_K] = gemm_x16_q4_K_q16_a_avx512,
        [LLMR_TYPE_Q5_K] = gemm_x16_q5_K_q16_a_avx512,
        [LLMR_TYPE_Q6_K] = gemm_x16_q6_K_q16_a_avx512,
        [LLMR_TYPE_Q3_K] = gemm_x16_q3_K_q16_a_avx512,
        [LLMR_TYPE_Q2_K] = gemm_x16_q2_K_q16_b_avx2, /* avx2's, on q16_b: no int16 kernel for q2_k's mins */
    },
    /* q2_k's kernel is avx2's, which reads q16_b */
    .x16_q16_b = {[LLMR_TYPE_Q2_K] = 1},
    .quantize_q16_a = quantize_row_q16_a_avx512,
    .q16_b_from_a = q16_b_from_a_avx512,
    .rmsnorm = rmsnorm_avx512,
    .rope = rope_ref,
    .attention = attention_avx512,
    .silu_mul = silu_mul_avx512,
    .gelu_mul = gelu_mul_avx512,
};

/* avx512 with the integer dots built for VNNI (vpdpwssd); the rest is avx512's. */
static const llmr_kernels llmr_kernels_avx512vnni = {
    .isa = "avx512vnni",
    .vec_dot = {
        [LLMR_TYPE_F32] = vec_dot_f32_f32_avx512,
        [LLMR_TYPE_F16] = vec_dot_f16_f32_avx512,
        [LLMR_TYPE_BF16] = vec_dot_bf16_f32_avx512,
        [LLMR_TYPE_Q8_0] = vec_dot_q8_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_0] = vec_dot_q4_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_1] = vec_dot_q4_1_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_0] = vec_dot_q5_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_1] = vec_dot_q5_1_q16_a_avx512vnni,
        [LLMR_TYPE_Q2_K] = vec_dot_q2_K_q16_a_avx512vnni,
        [LLMR_TYPE_Q3_K] = vec_dot_q3_K_q16_a_avx512vnni,
        [LLMR_TYPE_IQ4_NL] = vec_dot_iq4_nl_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_K] = vec_dot_q4_K_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_K] = vec_dot_q5_K_q16_a_avx512vnni,
        [LLMR_TYPE_Q6_K] = vec_dot_q6_K_q16_a_avx512vnni,
    },
    .vec_dot_tile = {
        [LLMR_TYPE_Q8_0] = vec_dot_tile_q8_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_0] = vec_dot_tile_q4_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_1] = vec_dot_tile_q4_1_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_0] = vec_dot_tile_q5_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_1] = vec_dot_tile_q5_1_q16_a_avx512vnni,
        [LLMR_TYPE_IQ4_NL] = vec_dot_tile_iq4_nl_q16_a_avx512vnni,
        [LLMR_TYPE_Q6_K] = vec_dot_tile_q6_K_q16_a_avx512vnni,
    },
    .gemm = {
        [LLMR_TYPE_F32] = gemm_f32_f32_avx512,
        [LLMR_TYPE_F16] = gemm_f16_f32_avx512,
        [LLMR_TYPE_BF16] = gemm_bf16_f32_avx512,
    },
    .gemm_x16 = {
        [LLMR_TYPE_Q8_0] = gemm_x16_q8_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_0] = gemm_x16_q4_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_1] = gemm_x16_q4_1_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_0] = gemm_x16_q5_0_q16_a_avx512vnni,
        [LLMR_TYPE_Q5_1] = gemm_x16_q5_1_q16_a_avx512vnni,
        [LLMR_TYPE_IQ4_NL] = gemm_x16_iq4_nl_q16_a_avx512vnni,
        [LLMR_TYPE_Q4_K] = gemm_x16_q4_K_q16_b_avx512vnni,
        [LLMR_TYPE_Q5_K] = gemm_x16_q5_K_q16_b_avx512vnni,
        [LLMR_TYPE_Q6_K] = gemm_x16_q6_K_q16_b_avx512vnni,
        [LLMR_TYPE_Q3_K] = gemm_x16_q3_K_q16_b_avx512vnni,
        [LLMR_TYPE_Q2_K] = gemm_x16_q2_K_q16_b_avx512vnni,
    },
    /* u8 x s8 products, twice vpdpwssd's per instruction (gemm_x16_q16b_avx512vnni.h) */
    .x16_q16_b = {[LLMR_TYPE_Q2_K] = 1, [LLMR_TYPE_Q3_K] = 1, [LLMR_TYPE_Q4_K] = 1, [LLMR_TYPE_Q5_K] = 1,
                   [LLMR_TYPE_Q6_K] = 1},
    .quantize_q16_a = quantize_row_q16_a_avx512,
    .q16_b_from_a = q16_b_from_a_avx512,
    .rmsnorm = rmsnorm_avx512,
    .rope = rope_ref,
    .attention = attention_avx512,
    .silu_mul = silu_mul_avx512,
    .gelu_mul = gelu_mul_avx512,
};

/* __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 registers. */
static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

/* The avx512 files are also built with -mavx2 -mfma -mf16c, which every AVX-512 BW CPU has. */
static int has_avx512(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

static int has_avx512vnni(void) { return has_avx512() && __builtin_cpu_supports("avx512vnni"); }
#endif

/* arm64: CMakeLists.txt builds the *_neon.c files for exactly these targets. NEON (Advanced
 * SIMD) is part of the arm64 baseline, so the row needs no CPU test. */
#if defined(__aarch64__)
#define LLMR_ARM64 1

static const llmr_kernels llmr_kernels_neon = {
    .isa = "neon",
    .vec_dot = {
        [LLMR_TYPE_F32] = vec_dot_f32_f32_neon,
        [LLMR_TYPE_F16] = vec_dot_f16_f32_neon,
        [LLMR_TYPE_BF16] = vec_dot_bf16_f32_neon,
        [LLMR_TYPE_Q8_0] = vec_dot_q8_0_q16_a_neon,
        [LLMR_TYPE_Q4_0] = vec_dot_q4_0_q16_a_neon,
        [LLMR_TYPE_Q4_1] = vec_dot_q4_1_q16_a_neon,
        [LLMR_TYPE_Q5_0] = vec_dot_q5_0_q16_a_neon,
        [LLMR_TYPE_Q5_1] = vec_dot_q5_1_q16_a_neon,
        [LLMR_TYPE_Q2_K] = vec_dot_q2_K_q16_a_neon,
        [LLMR_TYPE_Q3_K] = vec_dot_q3_K_q16_a_neon,
        [LLMR_TYPE_IQ4_NL] = vec_dot_iq4_nl_q16_a_neon,
        [LLMR_TYPE_Q4_K] = vec_dot_q4_K_q16_a_neon,
        [LLMR_TYPE_Q5_K] = vec_dot_q5_K_q16_a_neon,
        [LLMR_TYPE_Q6_K] = vec_dot_q6_K_q16_a_neon,
    },
    .vec_dot_tile = {
        [LLMR_TYPE_Q6_K] = vec_dot_tile_q6_K_q16_a_neon,
    },
    .gemm = {
        [LLMR_TYPE_F32] = gemm_f32_f32_neon,
        [LLMR_TYPE_F16] = gemm_f16_f32_neon,
        [LLMR_TYPE_BF16] = gemm_bf16_f32_neon,
    },
    .gemm_x16 = {
        [LLMR_TYPE_Q8_0] = gemm_x16_q8_0_q16_a_neon,
        [LLMR_TYPE_Q4_0] = gemm_x16_q4_0_q16_a_neon,
        [LLMR_TYPE_Q4_1] = gemm_x16_q4_1_q16_a_neon,
        [LLMR_TYPE_Q5_0] = gemm_x16_q5_0_q16_a_neon,
        [LLMR_TYPE_Q5_1] = gemm_x16_q5_1_q16_a_neon,
        [LLMR_TYPE_IQ4_NL] = gemm_x16_iq4_nl_q16_a_neon,
        [LLMR_TYPE_Q4_K] = gemm_x16_q4_K_q16_a_neon,
        [LLMR_TYPE_Q5_K] = gemm_x16_q5_K_q16_a_neon,
        [LLMR_TYPE_Q6_K] = gemm_x16_q6_K_q16_a_neon,
        [LLMR_TYPE_Q3_K] = gemm_x16_q3_K_q16_a_neon,
        [LLMR_TYPE_Q2_K] = gemm_x16_q2_K_q16_a_neon,
    },
    .quantize_q16_a = quantize_row_q16_a_neon,
    .rmsnorm = rmsnorm_ref,
    .rope = rope_ref,
    .attention = attention_neon,
    .silu_mul = silu_mul_ref,
    .gelu_mul = gelu_mul_ref,
};
#endif

static const struct {
    const llmr_kernels *kernels;
    int (*supported)(void);
} ISAS[] = {
#ifdef LLMR_X86
    {&llmr_kernels_avx512vnni, has_avx512vnni},
    {&llmr_kernels_avx512, has_avx512},
    {&llmr_kernels_avx2, has_avx2},
#endif
#ifdef LLMR_ARM64
    {&llmr_kernels_neon, always},
#endif
    {&llmr_kernels_scalar, always},
};

enum { N_ISAS = sizeof ISAS / sizeof ISAS[0] };

int llmr_isas(const char **names, int cap) {
    int n = 0;
    for (int i = 0; i < N_ISAS && n < cap; i++)
        if (ISAS[i].supported())
            names[n++] = ISAS[i].kernels->isa;
    return n;
}

int llmr_kernels_check(const llmr_kernels *k, char *err, size_t err_size) {
    for (int id = 0; id < LLMR_TYPE_COUNT; id++) {
        const llmr_type_traits *t = llmr_type_traits_get(id);
        if (!t) { /* a kernel for a type the traits do not list: one half of a type left out */
            if (k->vec_dot[id] || k->vec_dot_tile[id] || k->gemm[id] || k->gemm_x16[id]) {
                snprintf(err, err_size, "kernel table %s has kernels for weight type id %d, which "
                         "kernels/cpu/types.c's TRAITS does not list", k->isa, id);
                return -1;
            }
            continue;
        }
        const char *missing = !k->vec_dot[id] ? "vec_dot" : t->x16 && !k->gemm_x16[id] ? "gemm_x16" : NULL;
        if (missing) {
            snprintf(err, err_size, "kernel table %s has no %s for %s weights (kernels/cpu/dispatch.c)", k->isa,
                     missing, t->name);
            return -1;
        }
        if (!t->x16 && k->gemm_x16[id]) {
            snprintf(err, err_size, "kernel table %s has a gemm_x16 for %s weights, whose traits have no X16 "
                     "layout (kernels/cpu/types.c)", k->isa, t->name);
            return -1;
        }
    }
    for (int id = 0; id < LLMR_TYPE_COUNT; id++)
        if (k->x16_q16_b[id] && !k->q16_b_from_a) {
            snprintf(err, err_size, "kernel table %s reads q16_b for type id %d but has no q16_b_from_a "
                     "(kernels/cpu/dispatch.c)", k->isa, id);
            return -1;
        }
    const char *op = !k->quantize_q16_a ? "quantize_q16_a" : !k->rmsnorm ? "rmsnorm" : !k->rope ? "rope"
                     : !k->attention ? "attention" : !k->silu_mul ? "silu_mul" : !k->gelu_mul ? "gelu_mul" : NULL;
    if (op) {
        snprintf(err, err_size, "kernel table %s has no %s (kernels/cpu/dispatch.c)", k->isa, op);
        return -1;
    }
    return 0;
}

/* Appends name to the comma-separated list in known (size bytes), for a refusal's "known: ...". */
static void append_known(char *known, size_t size, const char *name) {
    if (known[0])
        strncat(known, ", ", size - strlen(known) - 1);
    strncat(known, name, size - strlen(known) - 1);
}

const llmr_kernels *llmr_dispatch(const char *forced, char *err, size_t err_size) {
    /* Every table this build has, not only those this CPU runs: a gap shows on any machine. */
    if (llmr_types_check(err, err_size))
        return NULL;
    for (int i = 0; i < N_ISAS; i++)
        if (llmr_kernels_check(ISAS[i].kernels, err, err_size))
            return NULL;
    const int want = forced != NULL && forced[0] != '\0';
    for (int i = 0; i < N_ISAS; i++) {
        if (want && strcmp(forced, ISAS[i].kernels->isa) != 0)
            continue;
        if (ISAS[i].supported())
            return ISAS[i].kernels;
        snprintf(err, err_size, "LLMRUN_ISA=%s: this CPU cannot run it", forced);
        return NULL;
    }
    /* The scalar row always runs, so only an unknown name gets here. */
    char known[256] = "";
    for (int i = 0; i < N_ISAS; i++)
        append_known(known, sizeof known, ISAS[i].kernels->isa);
    snprintf(err, err_size, "LLMRUN_ISA=%s: unknown kernel path; known: %s", forced, known);
    return NULL;
}

llmr_prefetch_mode llmr_prefetch = LLMR_PREFETCH_NTA;

const char *llmr_prefetch_choose(const char *forced, char *err, size_t err_size) {
    static const char *const NAMES[] = {[LLMR_PREFETCH_NTA] = "nta", [LLMR_PREFETCH_L2] = "l2"};
    const int n_modes = (int)(sizeof NAMES / sizeof NAMES[0]);
    if (forced != NULL && forced[0] != '\0') {
        char known[64] = "";
        for (int m = 0; m < n_modes; m++) {
            if (strcmp(forced, NAMES[m]) == 0) {
                llmr_prefetch = (llmr_prefetch_mode)m;
                return NAMES[m];
            }
            append_known(known, sizeof known, NAMES[m]);
        }
        snprintf(err, err_size, "LLMRUN_PREFETCH=%s: unknown prefetch mode; known: %s", forced, known);
        return NULL;
    }
#ifdef LLMR_X86
    __builtin_cpu_init();
    llmr_prefetch = __builtin_cpu_is("amd") ? LLMR_PREFETCH_NTA : LLMR_PREFETCH_L2; /* prefetch_x86.h */
#endif
    return NAMES[llmr_prefetch];
}
