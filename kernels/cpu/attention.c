/* Threaded attention: the table's kernel on units of a run of tokens and a range of query heads,
 * for one or more sequences (a batched decode step's segments) in one job, so that the pool
 * wakes once per layer however many sequences there are. The kernel computes each token's head
 * with the same arithmetic whatever tokens and heads it is given with, so a result never
 * depends on how many threads ran, which ran what, or which sequences ran beside it. */
#include "llmrun.h"

/* Below this many multiply-adds (q.k and p.v) waking the pool costs more than it saves. */
#define MIN_THREADED_MACS 32768

int64_t llmr_attention_slots(const llmr_attention_seq *seqs, int64_t n, int64_t hq, int64_t hd) {
    const int64_t threads = llmr_threads_get();
    int64_t macs = 0, units = 0;
    for (int64_t s = 0; s < n; s++) {
        macs += 2 * hq * hd * seqs[s].t * (seqs[s].n_past + (seqs[s].t + 1) / 2); /* token i sees n_past + i + 1 */
        units += seqs[s].t * hq;
    }
    if (threads <= 1 || macs < MIN_THREADED_MACS)
        return 1;
    return units < threads ? units : threads; /* never more slots than single-head units */
}

/* The largest sequence's kernel scratch, then a cache line, so that slots never share one. */
int64_t llmr_attention_scratch(const llmr_attention_seq *seqs, int64_t n, int64_t hq, int64_t hd) {
    int64_t most = 0;
    for (int64_t s = 0; s < n; s++)
        most = seqs[s].n_past + seqs[s].t > most ? seqs[s].n_past + seqs[s].t : most;
    return most + LLMR_ATTENTION_TOKENS * hq * hd + 16;
}

typedef struct {
    const llmr_kernels *kern;
    const llmr_attention_seq *seqs;
    float *scratch;
    int64_t hq, hkv, hd, window, scratch_per_slot;
    float scale;
    int64_t tokens, heads, units_per_run, units, slots;
} attention_job;

static int64_t units_of(const attention_job *j, const llmr_attention_seq *s) {
    return (s->t + j->tokens - 1) / j->tokens * j->units_per_run;
}

/* Units item, item + slots, ... of all the sequences' units in turn: interleaved, as causal
 * attention's cost grows with the token; each with this slot's scratch. */
static void attention_item(void *ctx, int64_t item) {
    const attention_job *j = ctx;
    float *scratch = j->scratch + item * j->scratch_per_slot;
    const llmr_attention_seq *s = j->seqs;
    int64_t first = 0; /* s's units are first, first + 1, ... */
    for (int64_t u = item; u < j->units; u += j->slots) {
        while (u >= first + units_of(j, s))
            first += units_of(j, s++);
        const int64_t t0 = (u - first) / j->units_per_run * j->tokens, h0 = (u - first) % j->units_per_run * j->heads;
        const int64_t nt = s->t - t0 < j->tokens ? s->t - t0 : j->tokens, off = t0 * j->hq * j->hd;
        j->kern->attention(s->out + off, s->q + off, s->k, s->v, s->kv_type, nt, j->hq, j->hkv, j->hd, s->n_ctx,
                           s->n_past + t0, j->window, j->scale, h0, h0 + j->heads, scratch);
    }
}

void llmr_attention(const llmr_kernels *kern, const llmr_attention_seq *seqs, int64_t n, int64_t hq, int64_t hkv,
                    int64_t hd, int64_t window, float scale, float *scratch, int64_t slots) {
    if (slots <= 1) {
        for (int64_t s = 0; s < n; s++)
            kern->attention(seqs[s].out, seqs[s].q, seqs[s].k, seqs[s].v, seqs[s].kv_type, seqs[s].t, hq, hkv, hd,
                            seqs[s].n_ctx, seqs[s].n_past, window, scale, 0, hq, scratch);
        return;
    }
    /* A unit is a run of LLMR_ATTENTION_TOKENS tokens and the query heads of one kv head, which
     * share every K and V row the kernel loads; when those are too few to keep every thread
     * busy, a unit is one token's heads of a kv head, or one head. */
    int64_t runs = 0, t = 0;
    for (int64_t s = 0; s < n; s++) {
        runs += (seqs[s].t + LLMR_ATTENTION_TOKENS - 1) / LLMR_ATTENTION_TOKENS;
        t += seqs[s].t;
    }
    const int64_t tokens = runs * hkv >= 4 * slots ? LLMR_ATTENTION_TOKENS : 1;
    const int64_t heads = t * hkv >= 4 * slots ? hq / hkv : 1;
    attention_job j = {kern, seqs, scratch, hq, hkv, hd, window, llmr_attention_scratch(seqs, n, hq, hd), scale,
                       tokens, heads, hq / heads, 0, slots};
    for (int64_t s = 0; s < n; s++)
        j.units += units_of(&j, &seqs[s]);
    llmr_parallel_for(slots, attention_item, &j);
}
