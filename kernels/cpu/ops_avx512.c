/* AVX-512 (F) rmsnorm, silu_mul and gelu_mul. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma
 * -mf16c; dispatch.c calls them only on a CPU that has AVX-512 F, BW and VL. */
#include <immintrin.h>
#include <math.h>

#include "exp_x86.h"
#include "llmrun.h"

static inline __mmask16 first(int64_t n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

/* The squares summed in double as the scalar kernel does, in 8 lanes and four chains (x^2 is
 * exact in double; the order differs, so the sum may differ in its last double bits, which the
 * f32 scale almost never sees); then the scalar kernel's per-element f32 steps, exactly. */
void rmsnorm_avx512(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++, x += d, out += d) {
        __m512d acc[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
        for (int64_t i = 0; i < d; i += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(first(d - i), x + i);
            const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
            acc[0] = _mm512_fmadd_pd(lo, lo, acc[0]);
            acc[1] = _mm512_fmadd_pd(hi, hi, acc[1]);
        }
        const double ss = _mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[1]));
        const __m512 scale = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)d + (double)eps)));
        for (int64_t i = 0; i < d; i += 16) {
            const __mmask16 m = first(d - i);
            const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale);
            _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i)));
        }
    }
}

/* sigmoid(a) from z = e^-|a| <= 1 (no overflow for any a): 1 / (1 + z) for a >= 0, z / (1 + z)
 * for a < 0. */
static inline __m512 sigmoid16(__m512 a) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 z = exp_nonpos16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(a)));
    const __mmask16 negative = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_div_ps(_mm512_mask_blend_ps(negative, one, z), _mm512_add_ps(one, z));
}

/* silu(g) u = g sigmoid(g) u */
void silu_mul_avx512(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = first(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), u));
    }
}

/* gelu(g) u with GELU's tanh form: 0.5 g (1 + tanh(c (g + 0.044715 g^3))) = g sigmoid(2c (g +
 * 0.044715 g^3)), c = sqrt(2 / pi): silu's sigmoid at another point, no tanh needed. */
void gelu_mul_avx512(float *out, const float *gate, const float *up, int64_t n) {
    const __m512 k1 = _mm512_set1_ps(2.0f * 0.7978845608028654f), k3 = _mm512_set1_ps(2.0f * 0.7978845608028654f * 0.044715f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = first(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 a = _mm512_mul_ps(g, _mm512_fmadd_ps(k3, _mm512_mul_ps(g, g), k1)); /* g (k1 + k3 g^2) */
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(a)), u));
    }
}
