/* The forward pass in C: llmrun/model.py's forward(), op for op, so that a decode step is one
 * call instead of some 400 from Python. Every op is the same kernel on the same inputs in the
 * same order as there (residual and bias adds are the float adds numpy does), so the logits
 * equal the Python graph's bit for bit; model.py stays the readable reference the tests hold
 * this to. Shapes as there: T tokens, D width, H query heads, Hkv kv heads, hd head width,
 * F feed-forward width, V vocabulary, C context.
 *
 * One call runs one or more segments, each a run of tokens of its own sequence (its own KV cache
 * and positions): a server decoding N requests runs them in one pass, and every weight is read
 * once per step for all of them (a small GEMM instead of N matrix-vector products). Only RoPE's
 * positions and attention are per segment; every other op works on each row alone, with the same
 * arithmetic whatever rows run beside it, so a segment's logits are those it gets on its own. */
#include <stdlib.h>
#include <string.h>

#include "llmrun.h"

static void add_(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void scale_(float *x, float s, int64_t n) {
    if (s != 1.0f)
        for (int64_t i = 0; i < n; i++)
            x[i] *= s;
}

/* x [T, n] += b [n] on every row (Qwen2's q/k/v biases). */
static void add_bias_(float *x, const float *b, int64_t t, int64_t n) {
    if (b)
        for (int64_t i = 0; i < t; i++)
            add_(x + i * n, b, n);
}

/* llmr_forward checks every weight with llmr_matmul_supported before it starts, so the matmuls
 * here cannot fail (and nothing is half-written when a weight has no kernel). */
static void matmul(const llmr_kernels *kern, const llmr_weight *w, float *out, const float *x, int64_t t,
                   void *scratch) {
    (void)llmr_matmul(kern, w->type, w->layout, out, x, w->data, t, w->rows, w->cols, scratch);
}

/* Weights of the same input x in one job where their activations are of one kind (all
 * quantised, or all float), else one by one: the same outputs either way. */
static void matmul_same_input(const llmr_kernels *kern, int n, const llmr_weight *ws, float *const *outs,
                              const float *x, int64_t t, void *scratch) {
    int same = 1;
    for (int i = 1; i < n; i++)
        same &= llmr_type_traits_get(ws[i].type)->act == llmr_type_traits_get(ws[0].type)->act;
    if (same) {
        (void)llmr_matmul_many(kern, n, ws, outs, x, t, scratch);
        return;
    }
    for (int i = 0; i < n; i++)
        matmul(kern, &ws[i], outs[i], x, t, scratch);
}

/* x [T, D] += the sublayer's output h [T, D]: normed first where the family has a post-norm
 * (Gemma 3), scaled where it has a residual multiplier (Granite). h is overwritten. */
static void add_sublayer_(const llmr_kernels *kern, const llmr_model *m, float *x, float *h, const float *post_norm,
                          int64_t t) {
    if (post_norm)
        kern->rmsnorm(h, h, post_norm, t, m->dim, m->norm_eps);
    scale_(h, m->residual_scale, t * m->dim);
    add_(x, h, t * m->dim);
}

/* t tokens' new keys or values x [t][hkv][hd] into a layer's cache [hkv][n_ctx][hd] of type kv
 * at positions n_past ..: copied (f32), rounded to nearest even (f16), or quantised (q8_0,
 * quantize_row_q8_0_ref; hd a multiple of its 32). */
static void store_kv(void *cache, const float *x, int64_t t, int64_t hkv, int64_t hd, int64_t n_ctx, int64_t n_past,
                     int kv) {
    for (int64_t g = 0; g < hkv; g++)
        for (int64_t i = 0; i < t; i++) {
            const float *row = x + (i * hkv + g) * hd;
            void *at = (void *)llmr_kv_skip(cache, (g * n_ctx + n_past + i) * hd, kv);
            if (kv == LLMR_KV_F16)
                for (int64_t e = 0; e < hd; e++)
                    ((uint16_t *)at)[e] = llmr_f32_to_f16(row[e]);
            else if (kv == LLMR_KV_Q8_0)
                quantize_row_q8_0_ref(row, at, hd);
            else
                memcpy(at, row, (size_t)hd * sizeof(float));
        }
}

static size_t matmul_scratch(const llmr_weight *w, int64_t t) {
    return llmr_matmul_scratch(llmr_type_traits_get(w->type), t, w->cols);
}

int64_t llmr_forward(const llmr_kernels *kern, const llmr_model *m, const llmr_segment *segs, int64_t n_segs,
                     float *logits, int32_t *bad_token) {
    const int64_t D = m->dim, H = m->n_heads, Hkv = m->n_kv_heads, hd = m->head_dim, F = m->ffn_dim;
    const int64_t q_dim = H * hd, kv_dim = Hkv * hd, half = m->rope_dims / 2;
    int64_t t = 0, rows = 0; /* T: the segments' tokens together; rows: those that want logits */
    for (int64_t s = 0; s < n_segs; s++) {
        t += segs[s].t;
        rows += segs[s].t - segs[s].first;
    }

    /* One allocation for the run state: x, h [T, D]; q, a [T, H*hd]; k, v [T, Hkv*hd]; g, u [T, F];
     * the RoPE tables [T, rope_dims] global and local; the attention and matmul scratch;
     * positions [T]. */
    size_t act = 0;
    if (llmr_matmul_supported(kern, m->output.type, m->output.layout))
        return -3;
    for (int64_t l = 0; l < m->n_layers; l++) {
        const llmr_layer *L = &m->layers[l];
        const llmr_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            if (llmr_matmul_supported(kern, ws[i]->type, ws[i]->layout))
                return -3;
            const size_t s = matmul_scratch(ws[i], t);
            act = s > act ? s : act;
        }
    }
    const size_t head_scratch = matmul_scratch(&m->output, rows);
    act = head_scratch > act ? head_scratch : act;
    /* each segment's attention, one job per layer: t and n_past now, the pointers per layer */
    llmr_attention_seq *att_seqs = malloc((size_t)n_segs * sizeof *att_seqs);
    if (!att_seqs)
        return -2;
    for (int64_t s = 0; s < n_segs; s++)
        att_seqs[s] = (llmr_attention_seq){.t = segs[s].t, .n_past = segs[s].n_past, .n_ctx = segs[s].n_ctx};
    const int64_t att_slots = llmr_attention_slots(att_seqs, n_segs, H, hd); /* read once: threads may change */
    const size_t att = (size_t)att_slots * (size_t)llmr_attention_scratch(att_seqs, n_segs, H, hd);
    const size_t floats = (size_t)t * (2 * D + 2 * q_dim + 2 * kv_dim + 2 * F + 4 * half) + att;
    float *x = malloc(floats * sizeof(float) + act + (size_t)t * sizeof(int32_t) + 64);
    if (!x) {
        free(att_seqs);
        return -2;
    }
    float *h = x + t * D, *q = h + t * D, *a = q + t * q_dim, *k = a + t * q_dim, *v = k + t * kv_dim;
    float *g = v + t * kv_dim, *u = g + t * F;
    float *cos_t = u + t * F, *sin_t = cos_t + t * half; /* [T, rope_dims / 2] each */
    float *cos_l = sin_t + t * half, *sin_l = cos_l + t * half, *att_scratch = sin_l + t * half;
    int32_t *pos = (int32_t *)(att_scratch + att);
    void *act_scratch = (void *)(((uintptr_t)(pos + t) + 63) & ~(uintptr_t)63);

    /* x [T, D]: every segment's embeddings, all ids checked before any cache is written */
    int64_t bad = -1;
    for (int64_t s = 0, off = 0; s < n_segs && bad < 0; off += segs[s++].t) {
        const int64_t at = llmr_get_rows(m->tok_embeddings.type, m->tok_embeddings.layout, x + off * D,
                                         m->tok_embeddings.data, m->tok_embeddings.rows, segs[s].tokens, segs[s].t,
                                         D, bad_token);
        bad = at >= 0 ? off + at : -1;
        for (int64_t i = 0; i < segs[s].t; i++)
            pos[off + i] = (int32_t)(segs[s].n_past + i);
    }
    if (bad >= 0) {
        free(x);
        free(att_seqs);
        return bad;
    }
    scale_(x, m->embed_scale, t * D);
    llmr_rope_table(cos_t, sin_t, pos, m->inv_freq, t, half, m->rope_mscale);
    if (m->inv_freq_local)
        llmr_rope_table(cos_l, sin_l, pos, m->inv_freq_local, t, half, 1.0f);

    for (int64_t l = 0; l < m->n_layers; l++) {
        const llmr_layer *L = &m->layers[l];

        /* attention: x + Wo . attn(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x) */
        kern->rmsnorm(h, x, L->attn_norm, t, D, m->norm_eps);
        matmul_same_input(kern, 3, (llmr_weight[]){L->wq, L->wk, L->wv}, (float *[]){q, k, v}, h, t, act_scratch);
        add_bias_(q, L->bq, t, q_dim);
        add_bias_(k, L->bk, t, kv_dim);
        add_bias_(v, L->bv, t, kv_dim);
        if (L->q_norm) { /* each head of q and of k normed on its own */
            kern->rmsnorm(q, q, L->q_norm, t * H, hd, m->norm_eps);
            kern->rmsnorm(k, k, L->k_norm, t * Hkv, hd, m->norm_eps);
        }
        if (L->rope != LLMR_ROPE_NONE) {
            const int local = L->rope == LLMR_ROPE_LOCAL;
            kern->rope(q, local ? cos_l : cos_t, local ? sin_l : sin_t, t, H, hd, m->rope_dims);
            kern->rope(k, local ? cos_l : cos_t, local ? sin_l : sin_t, t, Hkv, hd, m->rope_dims);
        }
        /* each segment's keys and values into its own cache, at its own positions, and its
         * queries over that cache alone */
        for (int64_t s = 0, off = 0; s < n_segs; off += segs[s++].t) {
            const llmr_segment *S = &segs[s];
            if (S->kv_type == LLMR_KV_Q8_0) { /* q8_0 rows are stored rotated (llmr_kv_rotate) */
                llmr_kv_rotate(q + off * q_dim, S->t * H, hd, 1);
                llmr_kv_rotate(k + off * kv_dim, S->t * Hkv, hd, 0);
                llmr_kv_rotate(v + off * kv_dim, S->t * Hkv, hd, 0);
            }
            void *kc = (void *)llmr_kv_skip(S->k_cache, l * S->n_ctx * kv_dim, S->kv_type); /* [Hkv, C, hd] */
            void *vc = (void *)llmr_kv_skip(S->v_cache, l * S->n_ctx * kv_dim, S->kv_type);
            store_kv(kc, k + off * kv_dim, S->t, Hkv, hd, S->n_ctx, S->n_past, S->kv_type);
            store_kv(vc, v + off * kv_dim, S->t, Hkv, hd, S->n_ctx, S->n_past, S->kv_type);
            att_seqs[s].out = a + off * q_dim, att_seqs[s].q = q + off * q_dim, att_seqs[s].k = kc, att_seqs[s].v = vc;
            att_seqs[s].kv_type = S->kv_type;
        }
        llmr_attention(kern, att_seqs, n_segs, H, Hkv, hd, L->window, m->attn_scale, att_scratch, att_slots);
        for (int64_t s = 0, off = 0; s < n_segs; off += segs[s++].t)
            if (segs[s].kv_type == LLMR_KV_Q8_0) /* back from the rotation */
                llmr_kv_rotate(a + off * q_dim, segs[s].t * H, hd, 1);
        matmul(kern, &L->wo, h, a, t, act_scratch);
        add_sublayer_(kern, m, x, h, L->attn_post_norm, t);

        /* feed-forward: x + W_down . (act(W_gate h) * W_up h),  h = RMSNorm(x) */
        kern->rmsnorm(h, x, L->ffn_norm, t, D, m->norm_eps);
        matmul_same_input(kern, 2, (llmr_weight[]){L->w_gate, L->w_up}, (float *[]){g, u}, h, t, act_scratch);
        (m->act == LLMR_ACT_GELU_TANH ? kern->gelu_mul : kern->silu_mul)(g, g, u, t * F);
        matmul(kern, &L->w_down, h, g, t, act_scratch);
        add_sublayer_(kern, m, x, h, L->ffn_post_norm, t);
    }
    /* h [rows, D]: the rows that want logits, normed out of x segment by segment; one head matmul */
    float *hr = h;
    for (int64_t s = 0, off = 0; s < n_segs; off += segs[s++].t) {
        const int64_t n = segs[s].t - segs[s].first;
        kern->rmsnorm(hr, x + (off + segs[s].first) * D, m->norm, n, D, m->norm_eps);
        hr += n * D;
    }
    matmul(kern, &m->output, logits, h, rows, act_scratch); /* [rows, V] */
    scale_(logits, m->logit_scale, rows * m->output.rows);
    free(x);
    free(att_seqs);
    return -1;
}
