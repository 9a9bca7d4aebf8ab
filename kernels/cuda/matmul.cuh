// out[t, row] = sum_k w[row, k] * x[t, k] for the few tokens of a decode step: weights read
// once, activations in f32, sums in f32.
//
// Decode is a stream of weights that must keep every SM's share of HBM bytes in flight, so a
// block of MATMUL_WARPS (8) warps takes 16 rows (one x16 group: ~1 block per SM on a 2048-row
// matrix, 4 on an 8192-row one) and splits k among its warps (split-K in the block): warp w
// takes every 8th step of MATMUL_STEP values, so each warp reads its own contiguous stretch of
// the group. Every lane loads 16 bytes at a time: word c of 4 consecutive rows of the x16
// layout (quant word c of row r at c * 16 + r), and for those 4 rows their f16 scales (8
// bytes, the same 32-byte sector for the 4 lanes of a word's quad of rows); a warp's quant
// load is 512 contiguous bytes. For one token the warp issues MATMUL_UNROLL steps of loads
// (weights and activations) before it multiplies, so ~16 KB a block are in flight.
//
// Lane l holds the partial sums of rows 4 (l % 4) .. + 3 over its values; lanes of one quad
// meet by three xor shuffles (4, 8, 16), the warps in shared memory. The weight format W gives
// the lane's step loads (mv_load) and its dot with x (mv_dot): the x16 types take word c of a
// block, values converted exactly by the 2^23 bit trick (kernels/cuda/x16.cuh); f16 (rows
// layout) takes 8 values of each of its 4 rows. The other kernels use scale() and quants().
#pragma once

#include "common.cuh"

constexpr uint32_t MATMUL_ROWS = 16;    // a block: one x16 group of rows
constexpr uint32_t MATMUL_TOKENS = 8;   // ... and up to 8 tokens (blockIdx.y: the next 8)
constexpr uint32_t MATMUL_WARPS = 8;    // k split among a block's warps
constexpr uint32_t MATMUL_UNROLL = 4;   // steps a warp loads before it multiplies (one token)

// RMSNorm's output for four activations: (x * scale) * g in f32, the CPU's order.
__device__ inline float4 normed(float4 x, float s, float4 g) {
    return make_float4(x.x * s * g.x, x.y * s * g.y, x.z * s * g.z, x.w * s * g.w);
}

// One warp's partial sums of group `group`'s 16 rows over its steps, for NT tokens (tokens <=
// NT): acc[t][j] is row 4 (lane % 4) + j, token t; U steps' loads in flight before their products.
template <class W, uint32_t NT, uint32_t U, bool Norm>
__device__ void matvec_warp(const uint32_t *w, const float *x, uint32_t k, uint32_t rows, uint32_t group,
                            uint32_t tokens, const float *norm, const float *scale, float (&acc)[NT][4]) {
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const uint32_t steps = (k + W::MV_STEP - 1) / W::MV_STEP;
    for (uint32_t s0 = warp; s0 < steps; s0 += MATMUL_WARPS * U) {
        typename W::Frag f[U];
#pragma unroll
        for (uint32_t u = 0; u < U; u++)
            f[u] = W::mv_load(w, group, k, rows, s0 + u * MATMUL_WARPS, steps, lane, x);
#pragma unroll
        for (uint32_t u = 0; u < U; u++) {
            if (!f[u].live)
                continue;
            float4 g0, g1;  // the norm's weights for the fragment's activations
            if (Norm) {
                const float4 *g = reinterpret_cast<const float4 *>(norm + f[u].kx);
                g0 = __ldg(g), g1 = __ldg(g + W::MV_X_SECOND);
                W::mv_dot(f[u], normed(f[u].x[0], scale[0], g0), normed(f[u].x[1], scale[0], g1), acc[0]);
            } else {
                W::mv_dot(f[u], f[u].x[0], f[u].x[1], acc[0]);  // token 0's activations came with the loads
            }
#pragma unroll
            for (uint32_t t = 1; t < NT; t++) {
                if (t < tokens) {
                    const float4 *xt = reinterpret_cast<const float4 *>(x + (size_t)t * k + f[u].kx);
                    if (Norm)
                        W::mv_dot(f[u], normed(__ldg(xt), scale[t], g0), normed(__ldg(xt + W::MV_X_SECOND), scale[t], g1),
                                  acc[t]);
                    else
                        W::mv_dot(f[u], __ldg(xt), __ldg(xt + W::MV_X_SECOND), acc[t]);
                }
            }
        }
    }
}

// The warps' sums of the block's rows into shared memory, part[warp][t][row].
template <uint32_t NT>
__device__ void matvec_reduce(float (&acc)[NT][4], float (*part)[MATMUL_TOKENS][MATMUL_ROWS]) {
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (uint32_t t = 0; t < NT; t++) {
#pragma unroll
        for (uint32_t j = 0; j < 4; j++) {
            float v = acc[t][j];
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            if (lane < 4)
                part[warp][t][4 * lane + j] = v;
        }
    }
}

using MatvecPart = float[MATMUL_WARPS][MATMUL_TOKENS][MATMUL_ROWS];

// The block's partial sums of group `group` of w (16 rows) for `tokens` tokens of x into part;
// they are whole after a __syncthreads(). norm: the product takes RMSNorm(x) * norm, each
// token's scale in scale[t] (norm_scales), applied as the activations are loaded; null: x.
template <class W, bool Norm>
__device__ void matvec_group_(const uint32_t *w, const float *x, uint32_t k, uint32_t rows, uint32_t group,
                              uint32_t tokens, const float *norm, const float *scale, MatvecPart &part) {
    if (tokens == 1) {  // decode: the most loads in flight
        float acc[1][4] = {};
        matvec_warp<W, 1, MATMUL_UNROLL, Norm>(w, x, k, rows, group, tokens, norm, scale, acc);
        matvec_reduce<1>(acc, part);
    } else {
        float acc[MATMUL_TOKENS][4] = {};
        matvec_warp<W, MATMUL_TOKENS, 1, Norm>(w, x, k, rows, group, tokens, norm, scale, acc);
        matvec_reduce<MATMUL_TOKENS>(acc, part);
    }
}

template <class W>
__device__ void matvec_group(const uint32_t *w, const float *x, uint32_t k, uint32_t rows, uint32_t group,
                             uint32_t tokens, MatvecPart &part, const float *norm = nullptr,
                             const float *scale = nullptr) {
    if (norm)
        matvec_group_<W, true>(w, x, k, rows, group, tokens, norm, scale, part);
    else
        matvec_group_<W, false>(w, x, k, rows, group, tokens, nullptr, nullptr, part);
}

// The RMSNorm folded into a matvec's prologue (the pre-norms of q/k/v and of gate/up): every
// block computes the scale of each of its tokens' rows of x [tokens, k] itself, as the CPU's
// rmsnorm does (llmr rmsnorm_ref): the squares summed in double, 1 / sqrt(ss / k + eps) in
// double rounded to f32, so h = (x * scale) * norm in f32 is the CPU's h (up to the order of
// the double sum). x is k floats a token (<= 8k, read from L2); k is a multiple of 4. The
// scales are in scale[] when this returns (it synchronises the block).
__device__ inline void norm_scales(const float *x, uint32_t k, uint32_t tokens, float eps, float *scale) {
    __shared__ double part[MATMUL_WARPS][MATMUL_TOKENS];
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (uint32_t t = 0; t < tokens; t++) {
        const float4 *x4 = reinterpret_cast<const float4 *>(x + (size_t)t * k);
        double s = 0.0;
#pragma unroll 4
        for (uint32_t i = threadIdx.x; i < k / 4; i += MATMUL_WARPS * 32) {
            const float4 v = __ldg(x4 + i);
            s += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
        for (int m = 16; m > 0; m >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, m);
        if (lane == 0)
            part[warp][t] = s;
    }
    __syncthreads();
    if (threadIdx.x < tokens) {
        double ss = 0.0;
        for (uint32_t wi = 0; wi < MATMUL_WARPS; wi++)
            ss += part[wi][threadIdx.x];
        scale[threadIdx.x] = (float)(1.0 / sqrt(ss / (double)k + (double)eps));
    }
    __syncthreads();
}

// Row r, token t of a block's product: the warps' partial sums, in warp order.
__device__ inline float matvec_sum(const MatvecPart &part, uint32_t t, uint32_t r) {
    float s = 0.0f;
#pragma unroll
    for (uint32_t wi = 0; wi < MATMUL_WARPS; wi++)
        s += part[wi][t][r];
    return s;
}

// Arguments as kernels/wgsl/matmul.wgsl's: k the row length (a multiple of 32); rows of w;
// row0 the first row's place in out, whose rows are out_rows long; from_first: x holds only
// the tokens from step.first on (the output head); accumulate: out += the product (the
// residual add of the o and down projections, x = x + W a in model.py's f32 order), not =.
template <class W>
__device__ void matmul(const Step *step, const uint32_t *w, const float *x, float *out, uint32_t k, uint32_t rows,
                       uint32_t row0, uint32_t out_rows, uint32_t from_first, uint32_t accumulate) {
    const uint32_t t0 = blockIdx.y * MATMUL_TOKENS;
    const uint32_t tokens = min(MATMUL_TOKENS, step->tokens - from_first * step->first - t0);
    __shared__ MatvecPart part;
    matvec_group<W>(w, x + (size_t)t0 * k, k, rows, blockIdx.x, tokens, part);
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < MATMUL_ROWS * tokens; e += blockDim.x) {
        const uint32_t r = e % MATMUL_ROWS, t = e / MATMUL_ROWS, row = blockIdx.x * MATMUL_ROWS + r;
        if (row < rows) {  // the last group of a rows-layout matrix may be partial
            const float s = matvec_sum(part, t, r);
            float *o = out + (size_t)(t0 + t) * out_rows + row0 + row;
            *o = accumulate ? *o + s : s;
        }
    }
}

// Three matrices of one input in one launch (q, k and v of a decode step), of RMSNorm(x) * norm
// where norm is not null (the attention's pre-norm folded in: norm_scales): blocks 0 .. g0 - 1
// take w0's groups of 16 rows, the next g1 w1's, the rest w2's (g = rows / 16, rounded up),
// each into its own out [tokens, rows_i]. w0 is of type WA, w1 and w2 of WB (a 4-bit model
// keeps k and v in q8_0: quant/policy.py). A block's work is the same as matmul's.
template <class WA, class WB>
__device__ void matmul3(const Step *step, const uint32_t *w0, const uint32_t *w1, const uint32_t *w2, const float *x,
                        const float *norm, float *out0, float *out1, float *out2, uint32_t k, uint32_t rows0,
                        uint32_t rows1, uint32_t rows2, float eps) {
    const uint32_t g0 = (rows0 + MATMUL_ROWS - 1) / MATMUL_ROWS, g1 = (rows1 + MATMUL_ROWS - 1) / MATMUL_ROWS;
    uint32_t group = blockIdx.x, rows = rows0;
    const uint32_t *w = w0;
    float *out = out0;
    if (group >= g0 + g1) {
        group -= g0 + g1, w = w2, out = out2, rows = rows2;
    } else if (group >= g0) {
        group -= g0, w = w1, out = out1, rows = rows1;
    }
    const uint32_t t0 = blockIdx.y * MATMUL_TOKENS, tokens = min(MATMUL_TOKENS, step->tokens - t0);
    __shared__ MatvecPart part;
    __shared__ float scale[MATMUL_TOKENS];
    if (norm)
        norm_scales(x + (size_t)t0 * k, k, tokens, eps, scale);
    if (blockIdx.x < g0)
        matvec_group<WA>(w, x + (size_t)t0 * k, k, rows, group, tokens, part, norm, scale);
    else
        matvec_group<WB>(w, x + (size_t)t0 * k, k, rows, group, tokens, part, norm, scale);
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < MATMUL_ROWS * tokens; e += blockDim.x) {
        const uint32_t r = e % MATMUL_ROWS, t = e / MATMUL_ROWS, row = group * MATMUL_ROWS + r;
        if (row < rows)
            out[(size_t)(t0 + t) * rows + row] = matvec_sum(part, t, r);
    }
}

// The feed-forward's gate and up matrices of one input in one launch, the gate applied as the
// sums are stored: out = act(W_gate x) * (W_up x), act 0: SiLU, 1: GELU (tanh), computed as
// silu_mul / gelu_mul compute them. A block takes the same 16 rows of both. norm: x is
// RMSNorm(x) * norm (the feed-forward's pre-norm folded in, as matmul3's).
template <class W>
__device__ void matmul_gate(const Step *step, const uint32_t *wg, const uint32_t *wu, const float *x,
                            const float *norm, float *out, uint32_t k, uint32_t rows, uint32_t act, float eps) {
    const uint32_t t0 = blockIdx.y * MATMUL_TOKENS, tokens = min(MATMUL_TOKENS, step->tokens - t0);
    __shared__ MatvecPart part[2];
    __shared__ float scale[MATMUL_TOKENS];
    if (norm)
        norm_scales(x + (size_t)t0 * k, k, tokens, eps, scale);
    matvec_group<W>(wg, x + (size_t)t0 * k, k, rows, blockIdx.x, tokens, part[0], norm, scale);
    matvec_group<W>(wu, x + (size_t)t0 * k, k, rows, blockIdx.x, tokens, part[1], norm, scale);
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < MATMUL_ROWS * tokens; e += blockDim.x) {
        const uint32_t r = e % MATMUL_ROWS, t = e / MATMUL_ROWS, row = blockIdx.x * MATMUL_ROWS + r;
        if (row < rows) {
            const float g = matvec_sum(part[0], t, r), u = matvec_sum(part[1], t, r);
            out[(size_t)(t0 + t) * rows + row] = act ? gelu_gate(g, u) : silu_gate(g, u);
        }
    }
}
