/* The type-agnostic loops: matmul and get_rows reach each type's kernels through the traits
 * and dispatch tables, so a new type or ISA never touches this file. */
#include "llmrun.h"

/* Activations are quantised in q16_a blocks of QK_Q16_A whatever the weight's block size: a
 * weight block spans a whole number of them (llmr_types_check), so k is a multiple too. */
size_t llmr_matmul_scratch(const llmr_type_traits *t, int64_t rows, int64_t k) {
    /* q16_a blocks, and room for their q16_b copy, which an ISA's X16 kernels may read instead */
    return t->act == LLMR_ACT_Q16_A ? (size_t)rows * (size_t)(k / QK_Q16_A) * (sizeof(block_q16_a) + sizeof(block_q16_b))
                                    : 0;
}

int llmr_matmul_supported(const llmr_kernels *kern, int type, int layout) {
    const llmr_type_traits *t = llmr_type_traits_get(type);
    if (!t)
        return -1;
    /* the same question check_layout (module.c) asks; the kernels are there by llmr_kernels_check */
    const int has = layout == LLMR_LAYOUT_X16 ? t->x16 && kern->gemm_x16[type] != NULL
                    : layout == LLMR_LAYOUT_ROWS && kern->vec_dot[type] != NULL;
    return has ? 0 : -1;
}

/* Work is split into items that each own whole outputs, so a result never depends on how many
 * threads ran or which ran what. */

/* Work per matmul item, in weight bytes times the tokens they meet: each item's rows are
 * contiguous, and in decode (one token) long runs matter: 16 KiB items, handed out alternately
 * to two threads, left a 1B-parameter model's decode slower on two threads than on one (26 vs
 * 30 GB/s); 256 KiB gave the prefetchers whole streams (44 GB/s), 512 KiB a few percent more
 * (Zen 4, alternating runs: 80.9 / 79.9 tok/s against 76.7 / 75.6; 1 and 2 MiB no better). On
 * the Intel Xeon, where a core's reads are bound by how many misses it keeps in flight, each
 * item's start (its first super-blocks, not yet prefetched) shows: 1B-shape Q4_K_M decode on
 * two threads, decode steps alternating between builds within one run, 2 MiB against 512 KiB
 * took 0.7-1.8% less time in four runs (1 MiB: 1.2 and 0.9% less; 3, 4 MiB: as 2; 8 MiB: 4%
 * more, two items a weight). In prefill, where an item meets many tokens, it is a few 16-row
 * groups either way. */
#define ITEM_WORK (2048 * 1024)
/* Less work than this is not worth waking a thread for. */
#define MIN_THREADED_WORK 4096

/* Rows [row0, row1) of one weight of a job, as items first_item, first_item + 1, ... */
typedef struct {
    llmr_vec_dot_fn vec_dot;
    llmr_vec_dot_tile_fn vec_dot_tile; /* NULL: vec_dot per token */
    llmr_gemm_fn gemm;                 /* NULL: vec_dot_tile / vec_dot per row */
    llmr_gemm_x16_fn gemm_x16;         /* the X16 layout's kernel */
    int layout;
    int q16_b; /* gemm_x16 reads the job's q16_b copy of the activations */
    const void *w;
    float *out;
    size_t w_row;
    int64_t n, row0, row1, rows_per_item, first_item; /* n: the weight's rows (out's row length) */
} matmul_part;

/* Weights that multiply the same input (q, k, v; gate, up) in one job: the input is quantised
 * once, and the threads meet once, after the last of them. */
typedef struct {
    const llmr_kernels *kern;
    const float *x;
    const void *act, *act_b; /* act_b: the q16_b copy, where a weight's kernel reads it (else NULL) */
    size_t act_row, act_b_row;
    int64_t t, k, rows_per_item; /* rows_per_item: activation rows per quantising item */
    int n_parts;
    matmul_part parts[LLMR_MAX_MATMUL_PARTS + 1]; /* + the last weight's tail */
} matmul_job;

/* Activation rows [item * rows_per_item, ...) quantised to q16_a (and copied to q16_b where wanted). */
static void quantize_item(void *ctx, int64_t item) {
    const matmul_job *j = ctx;
    const int64_t nb = j->k / QK_Q16_A, r1 = (item + 1) * j->rows_per_item;
    for (int64_t ti = item * j->rows_per_item; ti < (r1 < j->t ? r1 : j->t); ti++) {
        block_q16_a *a = (block_q16_a *)j->act + ti * nb;
        j->kern->quantize_q16_a(j->x + ti * j->k, a, j->k);
        if (j->act_b)
            j->kern->q16_b_from_a(a, (block_q16_b *)j->act_b + ti * nb, nb);
    }
}

/* Tokens per pass over an item's rows: their activations (72 bytes per 32 elements quantised,
 * 128 as f32) stay in the core's cache while each row meets them. Float weights in prefill
 * streamed all 512 tokens' activations (1.2 MB for SmolLM2) from L3 for every row before. */
#define TOKEN_CHUNK 64

/* Outputs out[:, n0:n1] of one weight for its rows [n0, n1). Weight rows outer: a row (a group
 * of 16 in the X16 layout) stays in cache while the tokens use it, and the weights, by far the
 * larger operand, stream through memory once. */
static void matmul_item(void *ctx, int64_t item) {
    const matmul_job *j = ctx;
    const matmul_part *p = &j->parts[0];
    while (p + 1 < j->parts + j->n_parts && item >= p[1].first_item)
        p++;
    const int64_t n0 = p->row0 + (item - p->first_item) * p->rows_per_item;
    const int64_t n1 = n0 + p->rows_per_item < p->row1 ? n0 + p->rows_per_item : p->row1;
    const uint8_t *act = j->act;
    if (p->layout == LLMR_LAYOUT_X16) {
        const uint8_t *x16_act = p->q16_b ? j->act_b : act;
        const size_t x16_act_row = p->q16_b ? j->act_b_row : j->act_row;
        for (int64_t t0 = 0; t0 < j->t; t0 += TOKEN_CHUNK) {
            const int64_t tn = j->t - t0 < TOKEN_CHUNK ? j->t - t0 : TOKEN_CHUNK;
            for (int64_t ni = n0; ni < n1; ni += LLMR_X16)
                p->gemm_x16(j->k, tn, p->out + t0 * p->n + ni, (size_t)p->n, (const uint8_t *)p->w + ni * p->w_row,
                            x16_act + t0 * x16_act_row, x16_act_row);
        }
        return;
    }
    /* The float types: one call for all the tokens, which the kernel takes in tiles of a few (their
     * activations in L1 while the item's rows pass), so it needs no chunks. */
    if (p->gemm) {
        p->gemm(j->k, n1 - n0, j->t, p->out + n0, (size_t)p->n, (const uint8_t *)p->w + n0 * p->w_row, act,
                j->act_row);
        return;
    }
    /* Tokens in chunks whose activations stay in cache while the item's rows meet them; within a
     * chunk, in tiles of LLMR_TILE where the table has a tile kernel for the type (it unpacks
     * each weight block once per tile, and equals vec_dot bit for bit), the rest one by one. */
    for (int64_t t0 = 0; t0 < j->t; t0 += TOKEN_CHUNK) {
        const int64_t t1 = j->t - t0 < TOKEN_CHUNK ? j->t : t0 + TOKEN_CHUNK;
        const int64_t t_tiled = p->vec_dot_tile ? t0 + (t1 - t0) / LLMR_TILE * LLMR_TILE : t0;
        for (int64_t ni = n0; ni < n1; ni++) {
            const uint8_t *wr = (const uint8_t *)p->w + ni * p->w_row;
            int64_t ti = t0;
            for (; ti < t_tiled; ti += LLMR_TILE)
                p->vec_dot_tile(j->k, p->out + ti * p->n + ni, (size_t)p->n, wr, act + ti * j->act_row,
                                j->act_row);
            for (; ti < t1; ti++)
                p->vec_dot(j->k, p->out + ti * p->n + ni, wr, act + ti * j->act_row);
        }
    }
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int llmr_matmul_many(const llmr_kernels *kern, int n_weights, const llmr_weight *ws, float *const *outs,
                     const float *x, int64_t t, void *scratch) {
    for (int i = 0; i < n_weights; i++) /* every kernel below is then there: none is called through NULL */
        if (llmr_matmul_supported(kern, ws[i].type, ws[i].layout))
            return -1;
    const llmr_type_traits *tr = llmr_type_traits_get(ws[0].type);
    const int64_t threads = llmr_threads_get(), k = ws[0].cols;
    matmul_job j = {.kern = kern, .x = x, .act = x, .act_row = (size_t)k * sizeof(float), .t = t, .k = k};
    if (t <= 0)
        return 0;

    /* Quantise each activation row once; every weight row then reuses it. A few rows (decode)
     * are not worth a job of their own. */
    if (tr->act == LLMR_ACT_Q16_A) {
        j.act = scratch;
        j.act_row = (size_t)(k / QK_Q16_A) * sizeof(block_q16_a);
        for (int i = 0; i < n_weights; i++)
            if (ws[i].layout == LLMR_LAYOUT_X16 && kern->x16_q16_b[ws[i].type]) {
                j.act_b = (uint8_t *)scratch + (size_t)t * j.act_row;
                j.act_b_row = (size_t)(k / QK_Q16_A) * sizeof(block_q16_b);
            }
        j.rows_per_item = t * k >= 16 * 1024 ? ceil_div(t, threads) : t;
        llmr_parallel_for(ceil_div(t, j.rows_per_item), quantize_item, &j);
    }

    /* Each weight in items of about ITEM_WORK, as many for each thread (so they even out), of
     * whole groups in the X16 layout; all of them on the pool at once when there is enough. The
     * job's last weight ends in items an eighth the size, so that the threads finish the job
     * nearly together: a decode step ends some 80 jobs, and a thread idle for half a large item
     * at each end cost 1B-parameter decode on two threads a few percent. (That is so whenever
     * the job is more than an item a thread, its last weight small or not: q, k, v's job ends
     * in v.) */
    int64_t items = 0, work = 0;
    j.n_parts = 0;
    for (int i = 0; i < n_weights; i++) {
        const llmr_weight *w = &ws[i];
        const int type = w->type;
        const matmul_part part = {.vec_dot = kern->vec_dot[type], .vec_dot_tile = kern->vec_dot_tile[type],
                                  .gemm = kern->gemm[type], .gemm_x16 = kern->gemm_x16[type],
                                  .layout = w->layout, .q16_b = kern->x16_q16_b[type], .w = w->data,
                                  .out = outs[i], .w_row = (size_t)llmr_row_bytes(llmr_type_traits_get(type), k),
                                  .n = w->rows, .row0 = 0, .row1 = w->rows};
        /* whole X16 groups; and 16 rows anyway, so that no two threads write one cache line of out */
        const int64_t unit = LLMR_X16;
        const int64_t w_work = (int64_t)part.w_row * w->rows * t;
        const int64_t rows = ceil_div(ceil_div(w->rows, threads * ceil_div(w_work, threads * ITEM_WORK)), unit) * unit;
        /* (a whole item, or all of a weight smaller than one: rows may round past w->rows) */
        const int64_t tail = threads > 1 && i == n_weights - 1 && work + w_work > threads * ITEM_WORK
                                 ? ceil_div(w->rows / 8, rows) * rows : 0;
        const int64_t tail_rows = tail < w->rows ? tail : w->rows;
        matmul_part *p = &j.parts[j.n_parts++];
        *p = part;
        p->row1 = w->rows - tail_rows;
        p->rows_per_item = rows;
        p->first_item = items;
        items += ceil_div(p->row1, rows);
        if (tail_rows) {
            matmul_part *tail = &j.parts[j.n_parts++];
            *tail = part;
            tail->row0 = p->row1;
            tail->rows_per_item = ceil_div(ceil_div(rows, 8), unit) * unit;
            tail->first_item = items;
            items += ceil_div(tail_rows, tail->rows_per_item);
        }
        work += w_work;
    }
    if (work < MIN_THREADED_WORK) /* run it all here: less work than waking a thread costs */
        for (int64_t i = 0; i < items; i++)
            matmul_item(&j, i);
    else
        llmr_parallel_for(items, matmul_item, &j);
    return 0;
}

int llmr_matmul(const llmr_kernels *kern, int type, int layout, float *out, const float *x, const void *w,
                int64_t t, int64_t n, int64_t k, void *scratch) {
    const llmr_weight weight = {.data = w, .type = type, .layout = layout, .rows = n, .cols = k};
    if (llmr_matmul_supported(kern, type, layout))
        return -1;
    return n > 0 ? llmr_matmul_many(kern, 1, &weight, &out, x, t, scratch) : 0;
}

int64_t llmr_get_rows(int type, int layout, float *out, const void *w, int64_t rows, const int32_t *ids,
                      int64_t n, int64_t k, int32_t *bad) {
    const llmr_type_traits *tr = llmr_type_traits_get(type);
    const size_t w_row = (size_t)llmr_row_bytes(tr, k);
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = ids[i];
        if (id < 0 || id >= rows) {
            *bad = id;
            return i;
        }
        if (layout == LLMR_LAYOUT_X16) { /* the row's blocks, each copied out of its group */
            const uint8_t *group = (const uint8_t *)w + (size_t)(id - id % LLMR_X16) * w_row;
            const int bs = tr->block_size;
            uint8_t block[LLMR_MAX_BLOCK_BYTES]; /* every type's blocks fit (llmr_types_check) */
            for (int64_t b = 0; b < k / bs; b++) {
                llmr_x16_get_block(tr, group, id % LLMR_X16, b, block);
                tr->dequantize(block, out + i * k + b * bs, bs);
            }
        } else {
            tr->dequantize((const uint8_t *)w + (size_t)id * w_row, out + i * k, k);
        }
    }
    return -1;
}
