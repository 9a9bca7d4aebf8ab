/* AVX2 (+FMA) rmsnorm, silu_mul and gelu_mul: ops_avx512.c's arithmetic on 8 lanes (4 for the double
 * sum of squares), a scalar loop for the tail. */
#include <immintrin.h>
#include <math.h>

#include "exp_x86.h"
#include "llmrun.h"

void rmsnorm_avx2(float *out, const float *x, const float *w, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; r++, x += d, out += d) {
        __m256d acc[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
        int64_t i = 0;
        for (; i + 8 <= d; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
            acc[0] = _mm256_fmadd_pd(lo, lo, acc[0]);
            acc[1] = _mm256_fmadd_pd(hi, hi, acc[1]);
        }
        double lanes[4];
        _mm256_storeu_pd(lanes, _mm256_add_pd(acc[0], acc[1]));
        double ss = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
        for (; i < d; i++)
            ss += (double)x[i] * x[i];
        const float s = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        const __m256 scale = _mm256_set1_ps(s);
        for (i = 0; i + 8 <= d; i += 8)
            _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale), _mm256_loadu_ps(w + i)));
        for (; i < d; i++)
            out[i] = (x[i] * s) * w[i];
    }
}

/* sigmoid(a) from z = e^-|a|, as ops_avx512.c's */
static inline __m256 sigmoid8(__m256 a) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 z = exp_nonpos8(_mm256_or_ps(a, _mm256_set1_ps(-0.0f))); /* e^-|a| */
    const __m256 num = _mm256_blendv_ps(one, z, a); /* the sign bit picks z: a < 0 (and -0) */
    return _mm256_div_ps(num, _mm256_add_ps(one, z));
}

void silu_mul_avx2(float *out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(g)), u));
    }
    for (; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* gelu(g) u = g sigmoid(2c (g + 0.044715 g^3)) u, as ops_avx512.c's */
void gelu_mul_avx2(float *out, const float *gate, const float *up, int64_t n) {
    const __m256 k1 = _mm256_set1_ps(2.0f * 0.7978845608028654f), k3 = _mm256_set1_ps(2.0f * 0.7978845608028654f * 0.044715f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
        const __m256 a = _mm256_mul_ps(g, _mm256_fmadd_ps(k3, _mm256_mul_ps(g, g), k1));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(a)), u));
    }
    gelu_mul_ref(out + i, gate + i, up + i, n - i);
}
