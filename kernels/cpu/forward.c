/* The forward pass in C: llmrun/model.py's forward(), op for op, so that a decode step is one
 * call instead of some 400 from Python. Every op is the same kernel on the same inputs in the
 * same order as there (residual and bias adds are the float adds numpy does), so the logits
 * equal the Python graph's bit for bit; model.py stays the readable reference the tests hold
 * this to. Shapes as there: T tokens, D width, H query heads, Hkv kv heads, hd head width,
 * F feed-forward width, V vocabulary, C context. */
#include <stdlib.h>

#include "llmrun.h"

static void add_(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* x [T, n] += b [n] on every row (Qwen2's q/k/v biases). */
static void add_bias_(float *x, const float *b, int64_t t, int64_t n) {
    if (b)
        for (int64_t i = 0; i < t; i++)
            add_(x + i * n, b, n);
}

static void matmul(const llmr_kernels *kern, const llmr_weight *w, float *out, const float *x, int64_t t,
                   void *scratch) {
    llmr_matmul(kern, w->type, w->layout, out, x, w->data, t, w->rows, w->cols, scratch);
}

/* Weights of the same input x in one job where their activations are of one kind (all
 * quantised, or all float), else one by one: the same outputs either way. */
static void matmul_same_input(const llmr_kernels *kern, int n, const llmr_weight *ws, float *const *outs,
                              const float *x, int64_t t, void *scratch) {
    int same = 1;
    for (int i = 1; i < n; i++)
        same &= llmr_type_traits_get(ws[i].type)->act == llmr_type_traits_get(ws[0].type)->act;
    if (same) {
        llmr_matmul_many(kern, n, ws, outs, x, t, scratch);
        return;
    }
    for (int i = 0; i < n; i++)
        matmul(kern, &ws[i], outs[i], x, t, scratch);
}

static size_t matmul_scratch(const llmr_weight *w, int64_t t) {
    return llmr_matmul_scratch(llmr_type_traits_get(w->type), t, w->cols);
}

int64_t llmr_forward(const llmr_kernels *kern, const llmr_model *m, const int32_t *tokens, int64_t t,
                     int64_t n_past, float *k_cache, float *v_cache, int64_t n_ctx, int64_t first, float *logits,
                     int32_t *bad_token) {
    const int64_t D = m->dim, H = m->n_heads, Hkv = m->n_kv_heads, hd = m->head_dim, F = m->ffn_dim;
    const int64_t q_dim = H * hd, kv_dim = Hkv * hd;

    /* One allocation for the run state: x, h [T, D]; q, a [T, H*hd]; g, u [T, F]; the RoPE
     * table [T, hd]; the attention and matmul scratch; positions. */
    size_t act = 0;
    for (int64_t l = 0; l < m->n_layers; l++) {
        const llmr_layer *L = &m->layers[l];
        const llmr_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            const size_t s = matmul_scratch(ws[i], t);
            act = s > act ? s : act;
        }
    }
    const size_t head_scratch = matmul_scratch(&m->output, t - first);
    act = head_scratch > act ? head_scratch : act;
    const int64_t slots = llmr_attention_slots(t, H, hd, n_past);
    const size_t att = (size_t)slots * (size_t)llmr_attention_scratch(t, H, hd, n_past);
    const size_t floats = (size_t)t * (2 * D + 2 * q_dim + 2 * F + hd) + att;
    float *x = malloc(floats * sizeof(float) + act + (size_t)t * sizeof(int32_t) + 64);
    if (!x)
        return -2;
    float *h = x + t * D, *q = h + t * D, *a = q + t * q_dim, *g = a + t * q_dim, *u = g + t * F;
    float *cos_t = u + t * F, *sin_t = cos_t + t * hd / 2, *att_scratch = cos_t + t * hd;
    int32_t *pos = (int32_t *)(att_scratch + att);
    void *act_scratch = (void *)(((uintptr_t)(pos + t) + 63) & ~(uintptr_t)63);
    for (int64_t i = 0; i < t; i++)
        pos[i] = (int32_t)(n_past + i);
    llmr_rope_table(cos_t, sin_t, pos, m->inv_freq, t, hd / 2);

    const int64_t bad = llmr_get_rows(m->tok_embeddings.type, m->tok_embeddings.layout, x, m->tok_embeddings.data,
                                      m->tok_embeddings.rows, tokens, t, D, bad_token); /* x [T, D] */
    if (bad >= 0) {
        free(x);
        return bad;
    }
    for (int64_t l = 0; l < m->n_layers; l++) {
        const llmr_layer *L = &m->layers[l];
        float *kc = k_cache + l * n_ctx * kv_dim, *vc = v_cache + l * n_ctx * kv_dim; /* [C, Hkv, hd] */
        float *k = kc + n_past * kv_dim, *v = vc + n_past * kv_dim; /* this call's rows, [T, Hkv, hd] */

        /* attention: x + Wo . attn(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x) */
        kern->rmsnorm(h, x, L->attn_norm, t, D, m->norm_eps);
        matmul_same_input(kern, 3, (llmr_weight[]){L->wq, L->wk, L->wv}, (float *[]){q, k, v}, h, t, act_scratch);
        add_bias_(q, L->bq, t, q_dim);
        add_bias_(k, L->bk, t, kv_dim);
        add_bias_(v, L->bv, t, kv_dim);
        kern->rope(q, cos_t, sin_t, t, H, hd);
        kern->rope(k, cos_t, sin_t, t, Hkv, hd);
        llmr_attention(kern, a, q, kc, vc, t, H, Hkv, hd, n_past, att_scratch, slots);
        matmul(kern, &L->wo, h, a, t, act_scratch);
        add_(x, h, t * D);

        /* feed-forward: x + W_down . (silu(W_gate h) * W_up h),  h = RMSNorm(x) */
        kern->rmsnorm(h, x, L->ffn_norm, t, D, m->norm_eps);
        matmul_same_input(kern, 2, (llmr_weight[]){L->w_gate, L->w_up}, (float *[]){g, u}, h, t, act_scratch);
        kern->silu_mul(g, g, u, t * F);
        matmul(kern, &L->w_down, h, g, t, act_scratch);
        add_(x, h, t * D);
    }
    const int64_t rows = t - first;
    kern->rmsnorm(h, x + first * D, m->norm, rows, D, m->norm_eps);
    matmul(kern, &m->output, logits, h, rows, act_scratch); /* [rows, V] */
    free(x);
    return -1;
}
