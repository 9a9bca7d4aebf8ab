/* Threaded attention: the table's kernel on units of a run of tokens and a range of query heads.
 * The kernel computes each token's head with the same arithmetic whatever tokens and heads it is
 * given with, so a result never depends on how many threads ran or which ran what. */
#include "llmrun.h"

/* Below this many multiply-adds (q.k and p.v) waking the pool costs more than it saves. */
#define MIN_THREADED_MACS 32768

int64_t llmr_attention_slots(int64_t t, int64_t hq, int64_t hd, int64_t n_past) {
    const int64_t threads = llmr_threads_get();
    const int64_t macs = 2 * hq * hd * t * (n_past + (t + 1) / 2); /* token i sees n_past + i + 1 */
    if (threads <= 1 || macs < MIN_THREADED_MACS)
        return 1;
    return t * hq < threads ? t * hq : threads; /* never more slots than single-head units */
}

/* A kernel call's scratch, then a cache line, so that slots never share one. */
int64_t llmr_attention_scratch(int64_t t, int64_t hq, int64_t hd, int64_t n_past) {
    return n_past + t + LLMR_ATTENTION_TOKENS * hq * hd + 16;
}

typedef struct {
    const llmr_kernels *kern;
    float *out;
    const float *q, *k, *v;
    float *scratch;
    int64_t t, hq, hkv, hd, n_past;
    int64_t tokens, heads, units_per_run, slots;
} attention_job;

/* Units item, item + slots, ...: interleaved, as causal attention's cost grows with the token;
 * each with this slot's scratch. */
static void attention_item(void *ctx, int64_t item) {
    const attention_job *j = ctx;
    float *scratch = j->scratch + item * llmr_attention_scratch(j->t, j->hq, j->hd, j->n_past);
    const int64_t runs = (j->t + j->tokens - 1) / j->tokens;
    for (int64_t u = item; u < runs * j->units_per_run; u += j->slots) {
        const int64_t t0 = u / j->units_per_run * j->tokens, h0 = u % j->units_per_run * j->heads;
        const int64_t nt = j->t - t0 < j->tokens ? j->t - t0 : j->tokens, off = t0 * j->hq * j->hd;
        j->kern->attention(j->out + off, j->q + off, j->k, j->v, nt, j->hq, j->hkv, j->hd, j->n_past + t0, h0,
                           h0 + j->heads, scratch);
    }
}

void llmr_attention(const llmr_kernels *kern, float *out, const float *q, const float *k, const float *v,
                    int64_t t, int64_t hq, int64_t hkv, int64_t hd, int64_t n_past, float *scratch,
                    int64_t slots) {
    if (slots <= 1) {
        kern->attention(out, q, k, v, t, hq, hkv, hd, n_past, 0, hq, scratch);
        return;
    }
    /* A unit is a run of LLMR_ATTENTION_TOKENS tokens and the query heads of one kv head, which
     * share every K and V row the kernel loads; when those are too few to keep every thread
     * busy, a unit is one token's heads of a kv head, or (decode) one head. */
    const int64_t runs = (t + LLMR_ATTENTION_TOKENS - 1) / LLMR_ATTENTION_TOKENS;
    const int64_t tokens = runs * hkv >= 4 * slots ? LLMR_ATTENTION_TOKENS : 1;
    const int64_t heads = t * hkv >= 4 * slots ? hq / hkv : 1;
    attention_job j = {kern, out, q, k, v, scratch, t, hq, hkv, hd, n_past, tokens, heads, hq / heads, slots};
    llmr_parallel_for(slots, attention_item, &j);
}
