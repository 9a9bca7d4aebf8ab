/* AVX-512 (F) rmsnorm and silu_mul. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma
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

/* silu(g) u = g sigmoid(g) u, with sigmoid from z = e^-|g| <= 1 (no overflow for any g):
 * 1 / (1 + z) for g >= 0, z / (1 + z) for g < 0. */
void silu_mul_avx512(float *out, const float *gate, const float *up, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = first(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 z = exp_nonpos16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
        const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
        const __m512 sigmoid = _mm512_div_ps(_mm512_mask_blend_ps(negative, one, z), _mm512_add_ps(one, z));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), u));
    }
}
