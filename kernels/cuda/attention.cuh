// Causal grouped-query attention: a block of ATTENTION_WARPS warps per (head, token); token t
// (position n_past + t) sees cache positions 0 ..= n_past + t, or the last `window` of them in
// a sliding-window layer (window > 0: Mistral, Gemma 3). Each warp takes every
// ATTENTION_WARPS-th position with a running max and sum (online softmax), its lanes holding
// head dimensions lane, lane + 32, ...; the warps' partial results meet in shared memory. No
// scratch row per context, so any context length fits.
#pragma once

#include "common.cuh"

constexpr uint32_t ATTENTION_WARPS = 4;
constexpr uint32_t MAX_HEAD_DIM = 256;  // llmrun/cuda.py refuses models with wider heads
constexpr uint32_t DIMS_PER_LANE = MAX_HEAD_DIM / 32;

KERNEL(ATTENTION_WARPS * 32) attention(const Step *step, const float *q, const float *kc, const float *vc, float *out,
                          uint32_t heads, uint32_t kv_heads, uint32_t hd, float scale, uint32_t window) {
    const uint32_t h = blockIdx.x, t = blockIdx.y;
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (t >= step->tokens)
        return;  // the whole block: no barrier is skipped by part of it
    const uint32_t n = step->n_past + t + 1;  // positions this token sees: start .. n - 1
    const uint32_t start = window > 0 && n > window ? n - window : 0;
    const uint32_t kvh = h / (heads / kv_heads);
    const float *qv = q + ((size_t)t * heads + h) * hd;

    float qr[DIMS_PER_LANE], acc[DIMS_PER_LANE];
#pragma unroll
    for (uint32_t i = 0; i < DIMS_PER_LANE; i++) {
        const uint32_t d = lane + 32 * i;
        qr[i] = d < hd ? qv[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;  // running max of the scores, and sum of exp(score - m)
    for (uint32_t j = start + warp; j < n; j += ATTENTION_WARPS) {
        const float *kj = kc + ((size_t)j * kv_heads + kvh) * hd, *vj = vc + ((size_t)j * kv_heads + kvh) * hd;
        float s = 0.0f;
#pragma unroll
        for (uint32_t i = 0; i < DIMS_PER_LANE; i++)
            if (lane + 32 * i < hd)
                s += qr[i] * kj[lane + 32 * i];
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s), rescale = expf(m - m_new), p = expf(s - m_new);
        l = l * rescale + p;
#pragma unroll
        for (uint32_t i = 0; i < DIMS_PER_LANE; i++)
            if (lane + 32 * i < hd)
                acc[i] = acc[i] * rescale + p * vj[lane + 32 * i];
        m = m_new;
    }
    __shared__ float warp_m[ATTENTION_WARPS], warp_l[ATTENTION_WARPS], warp_acc[ATTENTION_WARPS][MAX_HEAD_DIM];
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (uint32_t i = 0; i < DIMS_PER_LANE; i++)
        if (lane + 32 * i < hd)
            warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float mx = -INFINITY, sum = 0.0f;
    for (uint32_t wi = 0; wi < ATTENTION_WARPS; wi++)
        mx = fmaxf(mx, warp_m[wi]);
    for (uint32_t wi = 0; wi < ATTENTION_WARPS; wi++)
        sum += warp_l[wi] * expf(warp_m[wi] - mx);  // a warp that saw no position adds 0 * 0
    for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (uint32_t wi = 0; wi < ATTENTION_WARPS; wi++)
            o += warp_acc[wi][d] * expf(warp_m[wi] - mx);
        out[((size_t)t * heads + h) * hd + d] = o / sum;
    }
}
