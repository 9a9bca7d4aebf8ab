/* The entry the SIMD attention kernels share (attention_avx2.c, attention_avx512.c,
 * attention_neon.c), included last by each with ATTENTION_ENTRY defined as its name: a call's
 * tokens in runs of TOKENS and its query heads in groups of at most HEADS that share a kv head,
 * each such tile one call of the including file's `attend` (static, always inlined: once here
 * for each element type of the cache, f32, f16 and q8_0, so that its loops are compiled for each
 * with the type a constant). */
void ATTENTION_ENTRY(float *out, const float *q, const void *k, const void *v, int kv_type, int64_t t, int64_t hq,
                     int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past, int64_t window, float scale, int64_t h0,
                     int64_t h1, float *scratch) {
    const int64_t group = hq / hkv;
    for (int64_t t0 = 0, nt; t0 < t; t0 += nt) {
        nt = t - t0 < TOKENS ? t - t0 : TOKENS;
        for (int64_t h = h0, nh; h < h1; h += nh) {
            /* h and the heads after it in [h, h1) that share its kv head, at most HEADS */
            const int64_t g = h / group, end = (g + 1) * group < h1 ? (g + 1) * group : h1;
            nh = end - h < HEADS ? end - h : HEADS;
            const int64_t off = (t0 * hq + h) * hd;
            /* kv head g's rows, hd elements apart */
            const void *kg = llmr_kv_skip(k, g * n_ctx * hd, kv_type), *vg = llmr_kv_skip(v, g * n_ctx * hd, kv_type);
            if (kv_type == LLMR_KV_F16)
                attend(out + off, scratch, q + off, kg, vg, nt, nh, hq * hd, hd, hd, n_past + t0 + 1, window,
                       scale, LLMR_KV_F16);
            else if (kv_type == LLMR_KV_Q8_0)
                attend(out + off, scratch, q + off, kg, vg, nt, nh, hq * hd, hd, hd, n_past + t0 + 1, window,
                       scale, LLMR_KV_Q8_0);
            else
                attend(out + off, scratch, q + off, kg, vg, nt, nh, hq * hd, hd, hd, n_past + t0 + 1, window,
                       scale, LLMR_KV_F32);
        }
    }
}
