// Causal grouped-query attention: a block of ATTENTION_WARPS warps per (head, token); token t
// (position n_past + t) sees cache positions 0 ..= n_past + t, or the last `window` of them in
// a sliding-window layer (window > 0: Mistral, Gemma 3). Each warp takes ATTENTION_BATCH
// positions at a time, every ATTENTION_WARPS-th batch, its lanes holding head dimensions lane,
// lane + 32, ...: the batch's keys and values are loaded before any is used (one round trip to
// memory per batch, not two per position), its scores join a running max and sum (online
// softmax), and the warps' partial results meet in shared memory. No scratch row per context,
// so any context length fits.
#pragma once

#include "common.cuh"

constexpr uint32_t ATTENTION_WARPS = 8;
constexpr uint32_t ATTENTION_BATCH = 4;  // positions a warp loads at once
constexpr uint32_t MAX_HEAD_DIM = 256;  // llmrun/cuda.py refuses models with wider heads
constexpr uint32_t DIMS_PER_LANE = MAX_HEAD_DIM / 32;

template <uint32_t DIMS>
__device__ void attention_head(const float *qv, const float *kc, const float *vc, float *o, uint32_t start,
                               uint32_t n, uint32_t kv_heads, uint32_t kvh, uint32_t hd, float scale,
                               float *warp_m, float *warp_l, float (*warp_acc)[MAX_HEAD_DIM]) {
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float qr[DIMS], acc[DIMS];
#pragma unroll
    for (uint32_t i = 0; i < DIMS; i++) {
        const uint32_t d = lane + 32 * i;
        qr[i] = d < hd ? qv[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;  // running max of the scores, and sum of exp(score - m)
    for (uint32_t j0 = start + warp * ATTENTION_BATCH; j0 < n; j0 += ATTENTION_WARPS * ATTENTION_BATCH) {
        float kr[ATTENTION_BATCH][DIMS], vr[ATTENTION_BATCH][DIMS];
#pragma unroll
        for (uint32_t p = 0; p < ATTENTION_BATCH; p++) {
            const uint32_t j = j0 + p;
            const float *kj = kc + ((size_t)j * kv_heads + kvh) * hd, *vj = vc + ((size_t)j * kv_heads + kvh) * hd;
#pragma unroll
            for (uint32_t i = 0; i < DIMS; i++) {
                const bool in = j < n && lane + 32 * i < hd;
                kr[p][i] = in ? kj[lane + 32 * i] : 0.0f;
                vr[p][i] = in ? vj[lane + 32 * i] : 0.0f;
            }
        }
        float s[ATTENTION_BATCH], m_new = m;
#pragma unroll
        for (uint32_t p = 0; p < ATTENTION_BATCH; p++) {
            float dot = 0.0f;
#pragma unroll
            for (uint32_t i = 0; i < DIMS; i++)
                dot += qr[i] * kr[p][i];
            s[p] = warp_sum(dot) * scale;
            if (j0 + p < n)
                m_new = fmaxf(m_new, s[p]);
        }
        const float rescale = expf(m - m_new);
        l *= rescale;
#pragma unroll
        for (uint32_t i = 0; i < DIMS; i++)
            acc[i] *= rescale;
#pragma unroll
        for (uint32_t p = 0; p < ATTENTION_BATCH; p++) {
            const float e = j0 + p < n ? expf(s[p] - m_new) : 0.0f;
            l += e;
#pragma unroll
            for (uint32_t i = 0; i < DIMS; i++)
                acc[i] += e * vr[p][i];
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (uint32_t i = 0; i < DIMS; i++)
        if (lane + 32 * i < hd)
            warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float mx = -INFINITY, sum = 0.0f;
    for (uint32_t wi = 0; wi < ATTENTION_WARPS; wi++)
        mx = fmaxf(mx, warp_m[wi]);
    float wscale[ATTENTION_WARPS];
    for (uint32_t wi = 0; wi < ATTENTION_WARPS; wi++) {
        wscale[wi] = warp_m[wi] == -INFINITY ? 0.0f : expf(warp_m[wi] - mx);  // a warp that saw no position: 0
        sum += warp_l[wi] * wscale[wi];
    }
    for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float od = 0.0f;
        for (uint32_t wi = 0; wi < ATTENTION_WARPS; wi++)
            od += warp_acc[wi][d] * wscale[wi];
        o[d] = od / sum;
    }
}

KERNEL(ATTENTION_WARPS * 32) attention(const Step *step, const float *q, const float *kc, const float *vc, float *out,
                          uint32_t heads, uint32_t kv_heads, uint32_t hd, float scale, uint32_t window) {
    const uint32_t h = blockIdx.x, t = blockIdx.y;
    if (t >= step->tokens)
        return;  // the whole block: no barrier is skipped by part of it
    const uint32_t n = step->n_past + t + 1;  // positions this token sees: start .. n - 1
    const uint32_t start = window > 0 && n > window ? n - window : 0;
    const uint32_t kvh = h / (heads / kv_heads);
    const float *qv = q + ((size_t)t * heads + h) * hd;
    float *o = out + ((size_t)t * heads + h) * hd;
    __shared__ float warp_m[ATTENTION_WARPS], warp_l[ATTENTION_WARPS], warp_acc[ATTENTION_WARPS][MAX_HEAD_DIM];
    // registers for the head width at hand: 64 and 128 wide heads hold 2 or 4 dimensions a lane
    if (hd <= 64)
        attention_head<2>(qv, kc, vc, o, start, n, kv_heads, kvh, hd, scale, warp_m, warp_l, warp_acc);
    else if (hd <= 128)
        attention_head<4>(qv, kc, vc, o, start, n, kv_heads, kvh, hd, scale, warp_m, warp_l, warp_acc);
    else
        attention_head<DIMS_PER_LANE>(qv, kc, vc, o, start, n, kv_heads, kvh, hd, scale, warp_m, warp_l, warp_acc);
}
