/* The type-agnostic loops: matmul and get_rows reach each type's kernels through the traits
 * and dispatch tables, so a new type or ISA never touches this file. */
#include "llmrun.h"

size_t llmr_matmul_scratch(const llmr_type_traits *t, int64_t rows, int64_t k) {
    return t->act == LLMR_ACT_Q16_A ? (size_t)rows * (size_t)(k / QK) * sizeof(block_q16_a) : 0;
}

/* Work is split into items that each own whole outputs, so a result never depends on how many
 * threads ran or which ran what. */

/* Work per matmul item, in weight bytes times the tokens they meet: each item's rows are
 * contiguous, and in decode (one token) long runs matter: 16 KiB items, handed out alternately
 * to two threads, left a 1B-parameter model's decode slower on two threads than on one (26 vs
 * 30 GB/s); 256 KiB gives the prefetchers whole streams (44 GB/s). */
#define ITEM_WORK (256 * 1024)
/* Less work than this is not worth waking a thread for. */
#define MIN_THREADED_WORK 4096

typedef struct {
    const llmr_kernels *kern;
    llmr_vec_dot_fn vec_dot;
    llmr_vec_dot_tile_fn vec_dot_tile; /* NULL: vec_dot per token */
    llmr_gemm_x16_fn gemm_x16;         /* the X16 layout's kernel */
    float *out;
    const float *x;
    const void *w, *act;
    size_t w_row, act_row;
    int64_t t, n, k, rows_per_item;
} matmul_job;

/* Activation rows [item * rows_per_item, ...) quantised to q16_a. */
static void quantize_item(void *ctx, int64_t item) {
    const matmul_job *j = ctx;
    const int64_t nb = j->k / QK, r1 = (item + 1) * j->rows_per_item;
    for (int64_t ti = item * j->rows_per_item; ti < (r1 < j->t ? r1 : j->t); ti++)
        j->kern->quantize_q16_a(j->x + ti * j->k, (block_q16_a *)j->act + ti * nb, j->k);
}

/* Outputs out[:, n0:n1] for weight rows [n0, n1). Weight rows outer: a row stays in cache
 * while every token uses it, and the weights, by far the larger operand, stream through
 * memory once. */
static void matmul_item(void *ctx, int64_t item) {
    const matmul_job *j = ctx;
    const int64_t n0 = item * j->rows_per_item, n1 = n0 + j->rows_per_item < j->n ? n0 + j->rows_per_item : j->n;
    /* Tokens in tiles of LLMR_TILE where the table has a tile kernel for the type (it unpacks
     * each weight block once per tile, and equals vec_dot bit for bit), the rest one by one. */
    const int64_t t_tiled = j->vec_dot_tile ? j->t / LLMR_TILE * LLMR_TILE : 0;
    for (int64_t ni = n0; ni < n1; ni++) {
        const uint8_t *wr = (const uint8_t *)j->w + ni * j->w_row;
        int64_t ti = 0;
        for (; ti < t_tiled; ti += LLMR_TILE)
            j->vec_dot_tile(j->k, j->out + ti * j->n + ni, (size_t)j->n, wr,
                            (const uint8_t *)j->act + ti * j->act_row, j->act_row);
        for (; ti < j->t; ti++)
            j->vec_dot(j->k, j->out + ti * j->n + ni, wr, (const uint8_t *)j->act + ti * j->act_row);
    }
}

/* Tokens per pass over an item's X16 groups: their activations (72 bytes per 32 elements)
 * stay in the core's cache while each group meets them. */
#define X16_TOKEN_CHUNK 64

/* The X16 layout: rows [n0, n1) are whole groups of 16. */
static void matmul_x16_item(void *ctx, int64_t item) {
    const matmul_job *j = ctx;
    const int64_t n0 = item * j->rows_per_item, n1 = n0 + j->rows_per_item < j->n ? n0 + j->rows_per_item : j->n;
    for (int64_t t0 = 0; t0 < j->t; t0 += X16_TOKEN_CHUNK) {
        const int64_t tn = j->t - t0 < X16_TOKEN_CHUNK ? j->t - t0 : X16_TOKEN_CHUNK;
        for (int64_t ni = n0; ni < n1; ni += LLMR_X16)
            j->gemm_x16(j->k, tn, j->out + t0 * j->n + ni, (size_t)j->n, (const uint8_t *)j->w + ni * j->w_row,
                        (const uint8_t *)j->act + t0 * j->act_row, j->act_row);
    }
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void llmr_matmul(const llmr_kernels *kern, int type, int layout, float *out, const float *x, const void *w,
                 int64_t t, int64_t n, int64_t k, void *scratch) {
    const llmr_type_traits *tr = llmr_type_traits_get(type);
    const int64_t threads = llmr_threads_get();
    matmul_job j = {
        .kern = kern, .vec_dot = kern->vec_dot[type], .vec_dot_tile = kern->vec_dot_tile[type],
        .gemm_x16 = kern->gemm_x16[type],
        .out = out, .x = x, .w = w, .act = x,
        .w_row = (size_t)llmr_row_bytes(tr, k), .act_row = (size_t)k * sizeof(float), .t = t, .n = n, .k = k,
    };
    if (t <= 0 || n <= 0)
        return;

    /* Quantise each activation row once; every weight row then reuses it. A few rows (decode)
     * are not worth a job of their own. */
    if (tr->act == LLMR_ACT_Q16_A) {
        j.act = scratch;
        j.act_row = (size_t)(k / QK) * sizeof(block_q16_a);
        j.rows_per_item = t * k >= 16 * 1024 ? ceil_div(t, threads) : t;
        llmr_parallel_for(ceil_div(t, j.rows_per_item), quantize_item, &j);
    }

    /* Items of about ITEM_WORK, as many for each thread (so they even out), of whole groups in
     * the X16 layout. */
    const int64_t unit = layout == LLMR_LAYOUT_X16 ? LLMR_X16 : 1;
    const int64_t work = (int64_t)j.w_row * n * t;
    const int64_t items = threads * ceil_div(work, threads * ITEM_WORK);
    j.rows_per_item = work < MIN_THREADED_WORK ? n : ceil_div(ceil_div(n, items), unit) * unit;
    llmr_parallel_for(ceil_div(n, j.rows_per_item), layout == LLMR_LAYOUT_X16 ? matmul_x16_item : matmul_item, &j);
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
            uint8_t block[sizeof(block_q8_0)]; /* the largest X16 block */
            for (int64_t b = 0; b < k / QK; b++) {
                llmr_x16_get_block(tr, group, id % LLMR_X16, b, block);
                tr->dequantize(block, out + i * k + b * QK, QK);
            }
        } else {
            tr->dequantize((const uint8_t *)w + (size_t)id * w_row, out + i * k, k);
        }
    }
    return -1;
}
