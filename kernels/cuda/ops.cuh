// The small ops of the graph, each as its WGSL twin in kernels/wgsl/ (same arguments, same
// grids): embedding rows, RMSNorm, RoPE, the SiLU and GELU gates, scales, adds, and the KV
// cache's new rows.
#pragma once

#include "common.cuh"

// out[t] = row ids[t] of the table, dequantised: d * q + m (the scale of each 4 values: q6_k's
// changes within a block). One block per token; a table in several parts runs once per part,
// each writing the tokens whose row it holds.
template <class W>
__device__ void embed(const Step *step, const uint32_t *w, const uint32_t *ids, float *out, uint32_t k,
                      uint32_t rows, uint32_t row0) {
    const uint32_t t = blockIdx.x;
    if (t >= step->tokens || ids[t] < row0 || ids[t] >= row0 + rows)
        return;
    const uint32_t row = ids[t] - row0, nb = k / 32;
    float4 *o = reinterpret_cast<float4 *>(out + (size_t)t * k);
    for (uint32_t b = threadIdx.x; b < nb; b += WORKGROUP) {
        for (uint32_t i = 0; i < 8; i++) {
            const float2 dm = scale_of<W>(w, row, b, nb, i);
            const float4 q = W::quants(w, row, b, nb, i);
            o[b * 8 + i] = make_float4(dm.x * q.x + dm.y, dm.x * q.y + dm.y, dm.x * q.z + dm.y, dm.x * q.w + dm.y);
        }
    }
}

// out[r] = x[skip + r] / sqrt(mean(x[skip + r]^2) + eps) * weight, skip = step.first when
// from_first (the final norm). One block of 64 threads per output row; a token has per_token
// rows (1, or the heads of q or of k for the per-head q/k norms), and the rows past 65,535
// blocks go on in y. Rows of a multiple of 4 go as float4s, 8 loads a thread in flight: a
// row of 2048 is one round trip to memory, not 32 (17 us a norm on an H200 before).
KERNEL(WORKGROUP) rmsnorm(const Step *step, const float *x, const float *weight, float *out, uint32_t d, float eps,
                        uint32_t from_first, uint32_t per_token) {
    const uint32_t t = blockIdx.x + blockIdx.y * MAX_GROUPS, skip = from_first * step->first * per_token;
    if (t + skip >= step->tokens * per_token)
        return;
    const float *xr = x + (size_t)(t + skip) * d;
    const bool vec = d % 4 == 0;
    float s = 0.0f;
    if (vec) {
        const float4 *x4 = reinterpret_cast<const float4 *>(xr);
#pragma unroll 8
        for (uint32_t i = threadIdx.x; i < d / 4; i += WORKGROUP) {
            const float4 v = x4[i];
            s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (uint32_t i = threadIdx.x; i < d; i += WORKGROUP)
            s += xr[i] * xr[i];
    }
    __shared__ float part[WORKGROUP / 32];
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0)
        part[threadIdx.x / 32] = s;
    __syncthreads();
    const float scale = 1.0f / sqrtf((part[0] + part[1]) / float(d) + eps);
    if (vec) {
        const float4 *x4 = reinterpret_cast<const float4 *>(xr), *w4 = reinterpret_cast<const float4 *>(weight);
        float4 *o4 = reinterpret_cast<float4 *>(out + (size_t)t * d);
#pragma unroll 8
        for (uint32_t i = threadIdx.x; i < d / 4; i += WORKGROUP) {
            const float4 v = x4[i], g = w4[i];
            o4[i] = make_float4(v.x * scale * g.x, v.y * scale * g.y, v.z * scale * g.z, v.w * scale * g.w);
        }
    } else {
        for (uint32_t i = threadIdx.x; i < d; i += WORKGROUP)
            out[(size_t)t * d + i] = xr[i] * scale * weight[i];
    }
}

// gate = silu(gate) * up = gate / (1 + exp(-gate)) * up, in place; row: elements per token.
KERNEL(WORKGROUP) silu_mul(const Step *step, float *gate, const float *up, uint32_t row) {
    const uint32_t i = element_index();
    if (i < step->tokens * row) {
        gate[i] = silu_gate(gate[i], up[i]);
    }
}

// gate = gelu(gate) * up, in place, GELU in its tanh form (Gemma's GeGLU), as the CPU computes
// it (common.cuh: gelu_gate).
KERNEL(WORKGROUP) gelu_mul(const Step *step, float *gate, const float *up, uint32_t row) {
    const uint32_t i = element_index();
    if (i < step->tokens * row) {
        gate[i] = gelu_gate(gate[i], up[i]);
    }
}

// x[i] *= s, in place: the embeddings (Gemma 3, Granite), a sublayer's output before its
// residual add and the logits (Granite), each its own f32 product as on the CPU; from_first:
// x holds only the tokens from step.first on (the logits).
KERNEL(WORKGROUP) scale(const Step *step, float *x, uint32_t row, uint32_t from_first, float s) {
    const uint32_t i = element_index();
    if (i < (step->tokens - from_first * step->first) * row)
        x[i] *= s;
}

// x[i] += y[i % n]: the residual add (n = the size of x) and a bias on every token's row.
KERNEL(WORKGROUP) add(const Step *step, float *x, const float *y, uint32_t row, uint32_t n) {
    const uint32_t i = element_index();
    if (i < step->tokens * row)
        x[i] += y[i % n];
}

// RoPE and the KV cache's new rows in one launch: q [tokens, heads, hd] turned in place by each
// token's position (rotate-half over the first rd elements of each head: element i pairs with
// i + rd/2; the rest pass, as Phi-3's partial rotary has it; cos and sin from the table of
// every position [ctx, rd/2, 2] made on the host); k [tokens, kv_heads,
// hd] turned into the key cache at position n_past (k itself is left as it was: nothing reads
// it after); v copied into the value cache. rd = 0: no RoPE (a layer without it), stores only.
// One thread per turned pair of q, then per element of k, then of v.
KERNEL(WORKGROUP) rope_store(const Step *step, float *q, const float *k, const float *v, const float *table,
                             float *kc, float *vc, uint32_t heads, uint32_t kv_heads, uint32_t hd, uint32_t rd) {
    const uint32_t half = rd / 2, kv = kv_heads * hd, T = step->tokens;
    uint32_t i = element_index();
    const float2 *cs = reinterpret_cast<const float2 *>(table);
    if (i < T * heads * half) {
        const uint32_t j = i % half, row = i / half, t = row / heads;  // row: token * heads + head
        const float2 c = cs[(size_t)(step->n_past + t) * half + j];
        float *xr = q + (size_t)row * hd;
        const float a = xr[j], b = xr[j + half];
        xr[j] = a * c.x - b * c.y;
        xr[j + half] = b * c.x + a * c.y;
        return;
    }
    i -= T * heads * half;
    if (i < T * kv) {
        const uint32_t t = i / kv, j = i % hd;
        const float *kr = k + (i - j);  // the element's head
        float value = kr[j];
        if (j < rd) {
            const uint32_t p = j < half ? j : j - half;
            const float2 c = cs[(size_t)(step->n_past + t) * half + p];
            const float a = kr[p], b = kr[p + half];
            value = j < half ? a * c.x - b * c.y : b * c.x + a * c.y;
        }
        kc[(size_t)step->n_past * kv + i] = value;
        return;
    }
    i -= T * kv;
    if (i < T * kv)
        vc[(size_t)step->n_past * kv + i] = v[i];
}
