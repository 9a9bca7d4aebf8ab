/* llmrun._kernels: the CPython binding. Checks every buffer (format, contiguity, shape, byte
 * length, overlap) so that no call can make a kernel read or write out of bounds, then
 * releases the GIL for the compute. Buffers come through the buffer protocol: numpy arrays,
 * bytes, memoryviews of an mmap; no numpy headers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "llmrun.h"

static const llmr_kernels *kern; /* chosen once, at import */

/* ---- buffer checking ------------------------------------------------------------------------ */

enum kind { RAW, F32, F64, I32, KV }; /* KV: a KV cache's float32, float16 or uint8 (q8_0 blocks) */

/* "(2, 3, 4)" for messages. */
static const char *shape_str(const Py_buffer *v, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < v->ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %zd" : "%zd", v->shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, v->ndim == 1 ? ",)" : ")");
    return buf;
}

/* The format character of a native little-endian scalar of `size` bytes, or 0. */
static char scalar_format(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || (*f == '<' && PY_LITTLE_ENDIAN))
        f++;
    return f[0] != '\0' && f[1] == '\0' ? f[0] : 0;
}

/* Get `obj` as a C-contiguous buffer of `kind` with ndim in [min_ndim, max_ndim]; RAW buffers
 * are taken as their bytes whatever their format. On failure nothing is held. */
static int get_buffer(PyObject *obj, Py_buffer *v, const char *name, enum kind kind, int writable,
                      int min_ndim, int max_ndim) {
    if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) { /* e.g. numpy refusing a view */
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s: cannot export its buffer", name);
        }
        v->obj = NULL;
        return -1;
    }
    const char *problem = NULL;
    const char f = scalar_format(v);
    if (!PyBuffer_IsContiguous(v, 'C'))
        problem = "must be C-contiguous";
    else if (writable && v->readonly)
        problem = "must be writable";
    else if (kind == F32 && !(f == 'f' && v->itemsize == 4))
        problem = "must be float32";
    else if (kind == F64 && !(f == 'd' && v->itemsize == 8))
        problem = "must be float64";
    else if (kind == I32 && !((f == 'i' || f == 'l') && v->itemsize == 4))
        problem = "must be int32";
    else if (kind == KV && !((f == 'f' && v->itemsize == 4) || (f == 'e' && v->itemsize == 2) ||
                             (f == 'B' && v->itemsize == 1)))
        problem = "must be float32, float16 or uint8 (q8_0 blocks)";
    else if (kind == KV && (uintptr_t)v->buf % (uintptr_t)(v->itemsize == 1 ? 2 : v->itemsize))
        problem = "must be aligned to its elements (q8_0 blocks: 2 bytes, for their f16 scales)";
    else if (kind == F64 && (uintptr_t)v->buf % 8)
        problem = "must be 8-byte aligned";
    else if (kind != RAW && kind != KV && (uintptr_t)v->buf % 4)
        problem = "must be 4-byte aligned";
    else if (kind != RAW && (v->ndim < min_ndim || v->ndim > max_ndim)) {
        char s[160];
        if (min_ndim == max_ndim)
            PyErr_Format(PyExc_ValueError, "%s: must have %d dimensions, got shape %s", name, min_ndim,
                         shape_str(v, s, sizeof s));
        else
            PyErr_Format(PyExc_ValueError, "%s: must have %d to %d dimensions, got shape %s", name,
                         min_ndim, max_ndim, shape_str(v, s, sizeof s));
        PyBuffer_Release(v);
        return -1;
    }
    if (problem) {
        PyErr_Format(PyExc_ValueError, "%s: %s (got format '%s', itemsize %zd)", name, problem,
                     v->format ? v->format : "B", v->itemsize);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *views, int n) {
    for (int i = 0; i < n; i++)
        if (views[i].obj)
            PyBuffer_Release(&views[i]);
}

static int overlaps(const Py_buffer *a, const Py_buffer *b) {
    const char *pa = a->buf, *pb = b->buf;
    return a->len > 0 && b->len > 0 && pa < pb + b->len && pb < pa + a->len;
}

/* Outputs must not share memory with inputs, except element-wise ops run in place. */
static int check_disjoint(const Py_buffer *out, const Py_buffer *in, const char *names, int in_place_ok) {
    if (in_place_ok && out->buf == in->buf && out->len == in->len)
        return 0;
    if (overlaps(out, in)) {
        PyErr_Format(PyExc_ValueError, "%s: buffers overlap", names);
        return -1;
    }
    return 0;
}

static int check_shape(const Py_buffer *v, const char *name, int ndim, const Py_ssize_t *want) {
    int ok = v->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = v->shape[i] == want[i];
    if (!ok) {
        char got[160], exp[160];
        const Py_buffer w = {.ndim = ndim, .shape = (Py_ssize_t *)want};
        PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name,
                     shape_str(&w, exp, sizeof exp), shape_str(v, got, sizeof got));
        return -1;
    }
    return 0;
}

static int check_same_shape(const Py_buffer *v, const char *name, const Py_buffer *like) {
    return check_shape(v, name, like->ndim, like->shape);
}

static Py_ssize_t last_dim(const Py_buffer *v) { return v->shape[v->ndim - 1]; }
static Py_ssize_t leading_rows(const Py_buffer *v) {
    Py_ssize_t rows = 1;
    for (int i = 0; i < v->ndim - 1; i++)
        rows *= v->shape[i];
    return rows;
}

static const llmr_type_traits *get_type(int type) {
    const llmr_type_traits *t = llmr_type_traits_get(type);
    if (!t) { /* the known ids, from the traits table: "f32=0, f16=1, ..." */
        char known[512] = "";
        for (int id = 0; id < LLMR_TYPE_COUNT; id++) {
            const llmr_type_traits *k = llmr_type_traits_get(id);
            if (k)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s=%d", known[0] ? ", " : "",
                         k->name, id);
        }
        PyErr_Format(PyExc_ValueError, "unknown tensor type id %d (known: %s)", type, known);
    }
    return t;
}

/* Bytes per row of k elements of t, or -1 with ValueError. */
static Py_ssize_t row_bytes_or_error(const llmr_type_traits *t, Py_ssize_t k) {
    const int64_t rb = llmr_row_bytes(t, k);
    if (rb < 0)
        PyErr_Format(PyExc_ValueError, "%s rows must have a multiple of %d elements, got %zd",
                     t->name, t->block_size, k);
    return (Py_ssize_t)rb;
}

/* Float weights are read as elements, so they must sit on their element size. */
static int check_weight_alignment(const Py_buffer *w, const llmr_type_traits *t) {
    if (t->block_size == 1 && (uintptr_t)w->buf % (uintptr_t)t->type_size) {
        PyErr_Format(PyExc_ValueError, "w: %s weights must be %d-byte aligned", t->name, t->type_size);
        return -1;
    }
    return 0;
}

/* The layouts a type may be stored in: rows always; X16 where its traits say so (and then every
 * kernel table has its gemm_x16, checked at import). */
static int check_layout(const llmr_type_traits *t, int type, int layout) {
    if (!llmr_matmul_supported(kern, type, layout))
        return 0;
    PyErr_Format(PyExc_ValueError, "layout %d is not one llmrun reads for %s weights", layout, t->name);
    return -1;
}

static int check_x16_rows(int layout, Py_ssize_t rows) {
    if (layout != LLMR_LAYOUT_X16 || rows % LLMR_X16 == 0)
        return 0;
    PyErr_Format(PyExc_ValueError, "w: %zd rows is not a whole number of X16 groups of %d", rows, LLMR_X16);
    return -1;
}

/* ---- ops ------------------------------------------------------------------------------------ */

enum { MAX_NDIM = 64 };

/* matmul (below) on the kernel table `use`; fmt names the Python function in errors. */
static PyObject *matmul_with(const llmr_kernels *use, PyObject *args, const char *fmt) {
    PyObject *o_out, *o_x, *o_w;
    int type, layout = LLMR_LAYOUT_ROWS;
    if (!PyArg_ParseTuple(args, fmt, &o_out, &o_x, &o_w, &type, &layout))
        return NULL;
    const llmr_type_traits *t = get_type(type);
    if (!t || check_layout(t, type, layout))
        return NULL;
    Py_buffer v[3] = {{0}}, *out = &v[0], *x = &v[1], *w = &v[2];
    PyObject *ret = NULL;
    void *scratch = NULL;
    if (get_buffer(o_out, out, "out", F32, 1, 1, 2) || get_buffer(o_x, x, "x", F32, 0, 1, 2) ||
        get_buffer(o_w, w, "w", RAW, 0, 0, MAX_NDIM))
        goto done;
    /* x [T, K] -> out [T, N]; or x [K] -> out [N] for one token. */
    const Py_ssize_t k = last_dim(x), tok = leading_rows(x), n = last_dim(out);
    const Py_ssize_t want[2] = {tok, n};
    if (check_shape(out, "out", x->ndim, x->ndim == 2 ? want : want + 1))
        goto done;
    const Py_ssize_t rb = row_bytes_or_error(t, k);
    if (rb < 0 || check_weight_alignment(w, t))
        goto done;
    if (w->len != n * rb) {
        PyErr_Format(PyExc_ValueError, "w: expected %zd rows of %zd bytes (%s, K=%zd) = %zd bytes, got %zd",
                     n, rb, t->name, k, n * rb, w->len);
        goto done;
    }
    if (check_x16_rows(layout, n))
        goto done;
    if (check_disjoint(out, x, "out and x", 0) || check_disjoint(out, w, "out and w", 0))
        goto done;
    const size_t scratch_size = llmr_matmul_scratch(t, tok, k);
    if (scratch_size && !(scratch = malloc(scratch_size))) {
        PyErr_NoMemory();
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = llmr_matmul(use, type, layout, out->buf, x->buf, w->buf, tok, n, k, scratch); /* on the thread pool */
    Py_END_ALLOW_THREADS
    if (rc) /* check_layout asked the same question above: cannot happen */
        PyErr_Format(PyExc_SystemError, "matmul: no %s kernel for %s weights", use->isa, t->name);
    else
        ret = Py_NewRef(Py_None);
done:
    free(scratch);
    release(v, 3);
    return ret;
}

static PyObject *py_matmul(PyObject *self, PyObject *args) { return matmul_with(kern, args, "OOOi|i:matmul"); }

/* For tests: matmul on a copy of the table in use without its gemm and vec_dot_tile kernels, so
 * that every output of the rows layout is one call of the table's vec_dot (one row, one token):
 * what every tile must equal bit for bit. */
static PyObject *py_matmul_vec_dot(PyObject *self, PyObject *args) {
    llmr_kernels k = *kern;
    memset(k.gemm, 0, sizeof k.gemm);
    memset(k.vec_dot_tile, 0, sizeof k.vec_dot_tile);
    return matmul_with(&k, args, "OOOi|i:_matmul_vec_dot");
}

static PyObject *py_get_rows(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_w, *o_ids;
    int type, layout = LLMR_LAYOUT_ROWS;
    if (!PyArg_ParseTuple(args, "OOiO|i:get_rows", &o_out, &o_w, &type, &o_ids, &layout))
        return NULL;
    const llmr_type_traits *t = get_type(type);
    if (!t || check_layout(t, type, layout))
        return NULL;
    Py_buffer v[3] = {{0}}, *out = &v[0], *w = &v[1], *ids = &v[2];
    PyObject *ret = NULL;
    if (get_buffer(o_out, out, "out", F32, 1, 2, 2) || get_buffer(o_w, w, "w", RAW, 0, 0, MAX_NDIM) ||
        get_buffer(o_ids, ids, "ids", I32, 0, 1, 1))
        goto done;
    const Py_ssize_t n = out->shape[0], k = out->shape[1];
    if (check_shape(ids, "ids", 1, &n))
        goto done;
    const Py_ssize_t rb = row_bytes_or_error(t, k);
    if (rb < 0 || check_weight_alignment(w, t))
        goto done;
    if (rb == 0 || w->len % rb) {
        PyErr_Format(PyExc_ValueError, "w: %zd bytes is not a whole number of %s rows of K=%zd (%zd bytes each)",
                     w->len, t->name, k, rb);
        goto done;
    }
    const Py_ssize_t rows = w->len / rb;
    if (check_x16_rows(layout, rows))
        goto done;
    if (check_disjoint(out, w, "out and w", 0) || check_disjoint(out, ids, "out and ids", 0))
        goto done;
    int64_t bad_at;
    int32_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad_at = llmr_get_rows(type, layout, out->buf, w->buf, rows, ids->buf, n, k, &bad);
    Py_END_ALLOW_THREADS
    if (bad_at >= 0) {
        PyErr_Format(PyExc_ValueError, "ids[%zd] = %d is out of range [0, %zd)", (Py_ssize_t)bad_at, (int)bad, rows);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    release(v, 3);
    return ret;
}

/* Shared by quantize and quantize_q16a: x [..., K] float32 -> out, exactly rows * row_bytes. */
static int get_quantize_buffers(PyObject *o_out, PyObject *o_x, Py_buffer *out, Py_buffer *x,
                                Py_ssize_t block_size, Py_ssize_t block_bytes, const char *what) {
    if (get_buffer(o_out, out, "out", RAW, 1, 0, MAX_NDIM) || get_buffer(o_x, x, "x", F32, 0, 1, MAX_NDIM))
        return -1;
    const Py_ssize_t k = last_dim(x);
    if (k % block_size) {
        PyErr_Format(PyExc_ValueError, "%s rows must have a multiple of %zd elements, got %zd", what,
                     block_size, k);
        return -1;
    }
    const Py_ssize_t want = leading_rows(x) * (k / block_size) * block_bytes;
    if (out->len != want) {
        PyErr_Format(PyExc_ValueError, "out: expected %zd bytes for %s, got %zd", want, what, out->len);
        return -1;
    }
    return check_disjoint(out, x, "out and x", 0);
}

/* Rows in items of about QUANTIZE_ITEM_VALUES values, among the kernels' threads: a row's bytes are
 * its quantiser's alone, whatever the thread count (converting to the k-quants is mostly this
 * search). */
#define QUANTIZE_ITEM_VALUES 65536

/* Rows [item * rows_per_item, ...) of a quantize call: by the type's quantiser, by a k-quant or
 * iq4_nl fit with the columns' importance (k_fit), or by the calibrated q4_0 / q5_0 / q4_1 / q5_1
 * search with the columns' weights (weighted_type). */
typedef struct {
    const llmr_type_traits *t;
    const float *x;
    uint8_t *out;
    int64_t k, rows, row_bytes, rows_per_item;
    llmr_k_fit_fn k_fit;
    llmr_k_fit fit;
    int weighted_type;   /* else quantize_row_weighted's type, where not 0 (else the type's quantiser) */
    const void *columns; /* k_fit's importance (float) or quantize_row_weighted's weights (double) */
    /* quantize_row_k_best's type (where not 0), its fits and its error weights */
    int best_type, n_fits;
    const llmr_k_fit *fits;
    const double *error_w;
} quantize_job;

static void quantize_rows(void *ctx, int64_t item) {
    const quantize_job *j = ctx;
    const int64_t r1 = (item + 1) * j->rows_per_item < j->rows ? (item + 1) * j->rows_per_item : j->rows;
    for (int64_t r = item * j->rows_per_item; r < r1; r++)
        if (j->best_type) /* a type it takes: quantize_k_best checked */
            (void)quantize_row_k_best(j->best_type, j->x + r * j->k, j->out + r * j->row_bytes, j->k, j->fits, j->n_fits,
                                      j->columns, j->error_w);
        else if (j->k_fit)
            j->k_fit(j->x + r * j->k, j->out + r * j->row_bytes, j->k, &j->fit, j->columns);
        else if (j->weighted_type) /* a type it takes: quantize_weighted checked */
            (void)quantize_row_weighted(j->weighted_type, j->x + r * j->k, j->out + r * j->row_bytes, j->k,
                                        j->columns);
        else
            j->t->quantize(j->x + r * j->k, j->out + r * j->row_bytes, j->k);
}

static void run_quantize_job(quantize_job *j) {
    j->rows_per_item = j->k >= QUANTIZE_ITEM_VALUES ? 1 : QUANTIZE_ITEM_VALUES / (j->k ? j->k : 1);
    Py_BEGIN_ALLOW_THREADS
    llmr_parallel_for((j->rows + j->rows_per_item - 1) / j->rows_per_item, quantize_rows, j);
    Py_END_ALLOW_THREADS
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_x;
    int type;
    if (!PyArg_ParseTuple(args, "OOi:quantize", &o_out, &o_x, &type))
        return NULL;
    const llmr_type_traits *t = get_type(type);
    if (!t)
        return NULL;
    Py_buffer v[2] = {{0}}, *out = &v[0], *x = &v[1];
    PyObject *ret = NULL;
    if (get_quantize_buffers(o_out, o_x, out, x, t->block_size, t->type_size, t->name))
        goto done;
    const Py_ssize_t k = last_dim(x);
    quantize_job j = {.t = t, .x = x->buf, .out = out->buf, .k = k, .rows = leading_rows(x),
                      .row_bytes = (int64_t)llmr_row_bytes(t, k)};
    run_quantize_job(&j);
    ret = Py_NewRef(Py_None);
done:
    release(v, 2);
    return ret;
}

/* What quantize_weighted and quantize_k_fit share: out and x as quantize's, and a vector of one
 * value per column of x (`name`: float32 or float64), then j (its own fields set) over x's rows. */
static PyObject *quantize_with_columns(quantize_job *j, PyObject *o_out, PyObject *o_x, PyObject *o_columns,
                                       const char *name, enum kind kind) {
    Py_buffer v[3] = {{0}}, *out = &v[0], *x = &v[1], *columns = &v[2];
    PyObject *ret = NULL;
    if (get_quantize_buffers(o_out, o_x, out, x, j->t->block_size, j->t->type_size, j->t->name) ||
        get_buffer(o_columns, columns, name, kind, 0, 1, 1))
        goto done;
    const Py_ssize_t k = last_dim(x), size = kind == F64 ? sizeof(double) : sizeof(float);
    if (columns->len != k * size) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd values (x's columns), got %zd", name, k, columns->len / size);
        goto done;
    }
    char both[48];
    snprintf(both, sizeof both, "out and %s", name);
    if (check_disjoint(out, columns, both, 0)) /* the threads write out while they read it */
        goto done;
    j->x = x->buf;
    j->out = out->buf;
    j->k = k;
    j->rows = leading_rows(x);
    j->row_bytes = (int64_t)llmr_row_bytes(j->t, k);
    j->columns = columns->buf;
    run_quantize_job(j);
    ret = Py_NewRef(Py_None);
done:
    release(v, 3);
    return ret;
}

static PyObject *py_quantize_weighted(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_x, *o_w;
    int type;
    if (!PyArg_ParseTuple(args, "OOiO:quantize_weighted", &o_out, &o_x, &type, &o_w))
        return NULL;
    if (type != LLMR_TYPE_Q4_0 && type != LLMR_TYPE_Q5_0 && type != LLMR_TYPE_Q4_1 && type != LLMR_TYPE_Q5_1) {
        PyErr_Format(PyExc_ValueError, "quantize_weighted: type %d is not q4_0, q5_0, q4_1 or q5_1", type);
        return NULL;
    }
    quantize_job j = {.t = get_type(type), .weighted_type = type};
    return quantize_with_columns(&j, o_out, o_x, o_w, "weights", F64);
}

/* A fit's knobs as the C takes them, checked (what quantize_k_fit and quantize_k_best share);
 * -1 with the error set. */
static int make_fit(const char *who, double rmin, double rdelta, int nstep, double grid, int search, int square,
                    llmr_k_fit *fit) {
    if (nstep < 0 || nstep > 1000 || !(fabs(grid) < 8)) { /* grid: a shift of the largest scale, not a new grid */
        PyErr_Format(PyExc_ValueError, "%s: nstep %d outside 0 .. 1000, or grid %g outside (-8, 8)", who, nstep, grid);
        return -1;
    }
    *fit = (llmr_k_fit){.rmin = (float)rmin, .rdelta = (float)rdelta, .nstep = nstep, .grid = grid, .search = search,
                        .square = square};
    return 0;
}

/* The type's fit function (llmr_k_fit_for), or NULL with the error set. */
static llmr_k_fit_fn fit_for(const char *who, int type) {
    const llmr_k_fit_fn k_fit = llmr_k_fit_for(type);
    if (!k_fit)
        PyErr_Format(PyExc_ValueError, "%s: type %d is not q2_k, q3_k, q4_k, q5_k, q6_k or iq4_nl", who, type);
    return k_fit;
}

static PyObject *py_quantize_k_fit(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_x, *o_imp;
    int type, nstep, search = 0, square = 1;
    double rmin, rdelta, grid;
    if (!PyArg_ParseTuple(args, "OOiOddid|pp:quantize_k_fit", &o_out, &o_x, &type, &o_imp, &rmin, &rdelta, &nstep,
                          &grid, &search, &square))
        return NULL;
    quantize_job j = {.t = get_type(type), .k_fit = fit_for("quantize_k_fit", type)};
    if (!j.k_fit || make_fit("quantize_k_fit", rmin, rdelta, nstep, grid, search, square, &j.fit))
        return NULL;
    return quantize_with_columns(&j, o_out, o_x, o_imp, "importance", F32);
}

#define MAX_K_FITS 16

static PyObject *py_quantize_k_best(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_x, *o_imp, *o_w, *o_fits;
    int type;
    if (!PyArg_ParseTuple(args, "OOiOOO:quantize_k_best", &o_out, &o_x, &type, &o_imp, &o_w, &o_fits))
        return NULL;
    if (!fit_for("quantize_k_best", type))
        return NULL;
    llmr_k_fit fits[MAX_K_FITS];
    PyObject *seq = PySequence_Fast(o_fits, "quantize_k_best: fits must be a sequence");
    if (!seq)
        return NULL;
    const Py_ssize_t n_fits = PySequence_Fast_GET_SIZE(seq);
    if (n_fits > MAX_K_FITS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "quantize_k_best: at most %d fits, got %zd", MAX_K_FITS, n_fits);
        return NULL;
    }
    for (Py_ssize_t f = 0; f < n_fits; f++) {
        double rmin, rdelta, grid;
        int nstep, search, square;
        PyObject *fit = PySequence_Tuple(PySequence_Fast_GET_ITEM(seq, f)); /* any sequence of six */
        const int ok = fit && PyArg_ParseTuple(fit, "ddidpp:a fit (rmin, rdelta, nstep, grid, search, square)", &rmin,
                                               &rdelta, &nstep, &grid, &search, &square) &&
                       !make_fit("quantize_k_best", rmin, rdelta, nstep, grid, search, square, &fits[f]);
        Py_XDECREF(fit);
        if (!ok) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_buffer w = {0};
    if (get_buffer(o_w, &w, "weights", F64, 0, 1, 1))
        return NULL;
    const Py_ssize_t k = PyObject_Length(o_imp);
    PyObject *ret = NULL;
    if (k < 0 || w.len != k * (Py_ssize_t)sizeof(double)) {
        if (k >= 0)
            PyErr_Format(PyExc_ValueError, "weights: expected %zd values (importance's), got %zd", k,
                         w.len / (Py_ssize_t)sizeof(double));
    } else { /* a copy: no write to out can reach them */
        double *error_w = malloc((size_t)(k ? k : 1) * sizeof(double));
        if (!error_w) {
            PyErr_NoMemory();
        } else {
            memcpy(error_w, w.buf, (size_t)k * sizeof(double));
            quantize_job j = {.t = get_type(type), .best_type = type, .fits = fits, .n_fits = (int)n_fits,
                              .error_w = error_w};
            ret = quantize_with_columns(&j, o_out, o_x, o_imp, "importance", F32);
            free(error_w);
        }
    }
    release(&w, 1);
    return ret;
}

/* quantize_q16a and quantize_q16b: x's rows as q16_a blocks, or (planes) as the q16_b blocks made
 * from them by the table's own conversion (the reference's where none of its kernels reads q16_b). */
static PyObject *quantize_activations(PyObject *args, int planes) {
    PyObject *o_out, *o_x;
    if (!PyArg_ParseTuple(args, planes ? "OO:quantize_q16b" : "OO:quantize_q16a", &o_out, &o_x))
        return NULL;
    const char *name = planes ? "q16_b" : "q16_a";
    Py_buffer v[2] = {{0}}, *out = &v[0], *x = &v[1];
    PyObject *ret = NULL;
    block_q16_a *a = NULL;
    if (get_quantize_buffers(o_out, o_x, out, x, QK_Q16_A, planes ? sizeof(block_q16_b) : sizeof(block_q16_a), name))
        goto done;
    if ((uintptr_t)out->buf % 4) { /* both blocks' alignment */
        PyErr_Format(PyExc_ValueError, "out: %s blocks must be 4-byte aligned", name);
        goto done;
    }
    const Py_ssize_t k = last_dim(x), rows = leading_rows(x), nb = k / QK_Q16_A;
    void (*from_a)(const block_q16_a *, block_q16_b *, int64_t) = kern->q16_b_from_a ? kern->q16_b_from_a
                                                                                       : q16_b_from_a_ref;
    if (planes && !(a = PyMem_RawMalloc((size_t)(nb ? nb : 1) * sizeof(block_q16_a)))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x->buf + r * k;
        if (planes) {
            kern->quantize_q16_a(xr, a, k);
            from_a(a, (block_q16_b *)out->buf + r * nb, nb);
        } else {
            kern->quantize_q16_a(xr, (block_q16_a *)out->buf + r * nb, k);
        }
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    PyMem_RawFree(a);
    release(v, 2);
    return ret;
}

static PyObject *py_quantize_q16a(PyObject *self, PyObject *args) { return quantize_activations(args, 0); }

static PyObject *py_quantize_q16b(PyObject *self, PyObject *args) { return quantize_activations(args, 1); }

static PyObject *py_row_bytes(PyObject *self, PyObject *args) {
    int type;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "in:row_bytes", &type, &k))
        return NULL;
    const llmr_type_traits *t = get_type(type);
    if (!t)
        return NULL;
    const Py_ssize_t rb = row_bytes_or_error(t, k);
    return rb < 0 ? NULL : PyLong_FromSsize_t(rb);
}

static PyObject *py_rmsnorm(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_x, *o_w;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOf:rmsnorm", &o_out, &o_x, &o_w, &eps))
        return NULL;
    Py_buffer v[3] = {{0}}, *out = &v[0], *x = &v[1], *w = &v[2];
    PyObject *ret = NULL;
    if (get_buffer(o_out, out, "out", F32, 1, 1, MAX_NDIM) || get_buffer(o_x, x, "x", F32, 0, 1, MAX_NDIM) ||
        get_buffer(o_w, w, "w", F32, 0, 1, 1))
        goto done;
    const Py_ssize_t d = last_dim(x);
    if (check_same_shape(out, "out", x) || check_shape(w, "w", 1, &d) ||
        check_disjoint(out, x, "out and x", 1) || check_disjoint(out, w, "out and w", 0))
        goto done;
    if (!(eps >= 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "eps must be >= 0");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    kern->rmsnorm(out->buf, x->buf, w->buf, leading_rows(x), d, eps);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    release(v, 3);
    return ret;
}

static PyObject *py_kv_rotate(PyObject *self, PyObject *args) {
    PyObject *o_x;
    int divide;
    if (!PyArg_ParseTuple(args, "Op:kv_rotate", &o_x, &divide))
        return NULL;
    Py_buffer v[1] = {{0}}, *x = &v[0];
    if (get_buffer(o_x, x, "x", F32, 1, 1, 8))
        return NULL;
    const Py_ssize_t hd = last_dim(x), rows = leading_rows(x);
    if (hd < 1) {
        release(v, 1);
        PyErr_SetString(PyExc_ValueError, "kv_rotate: x's rows must hold at least one value");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    llmr_kv_rotate(x->buf, rows, hd, divide);
    Py_END_ALLOW_THREADS
    release(v, 1);
    Py_RETURN_NONE;
}

static PyObject *py_rope(PyObject *self, PyObject *args) {
    PyObject *o_x, *o_pos, *o_freq;
    double mscale = 1.0;
    if (!PyArg_ParseTuple(args, "OOO|d:rope", &o_x, &o_pos, &o_freq, &mscale))
        return NULL;
    if (!isfinite(mscale) || !isfinite((float)mscale)) {
        PyErr_Format(PyExc_ValueError, "rope: mscale %g is not a finite float32", mscale);
        return NULL;
    }
    Py_buffer v[3] = {{0}}, *x = &v[0], *pos = &v[1], *freq = &v[2];
    PyObject *ret = NULL;
    float *table = NULL;
    if (get_buffer(o_x, x, "x", F32, 1, 3, 3) || get_buffer(o_pos, pos, "positions", I32, 0, 1, 1) ||
        get_buffer(o_freq, freq, "inv_freq", F32, 0, 1, 1))
        goto done;
    /* inv_freq's length says how many of a head's elements rotate: all (hd / 2) or fewer (a partial rotary) */
    const Py_ssize_t t = x->shape[0], h = x->shape[1], hd = x->shape[2], half = freq->shape[0];
    if (hd % 2) {
        PyErr_Format(PyExc_ValueError, "x: head dim must be even, got %zd", hd);
        goto done;
    }
    if (half < 1 || 2 * half > hd) {
        PyErr_Format(PyExc_ValueError, "inv_freq: shape [%zd], expected 1 to %zd (head dim / 2) elements", half, hd / 2);
        goto done;
    }
    if (check_shape(pos, "positions", 1, &t) ||
        check_disjoint(x, pos, "x and positions", 0) || check_disjoint(x, freq, "x and inv_freq", 0))
        goto done;
    if (!(table = malloc(2 * (size_t)(t * half + 1) * sizeof(float)))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    llmr_rope_table(table, table + t * half, pos->buf, freq->buf, t, half, (float)mscale);
    kern->rope(x->buf, table, table + t * half, t, h, hd, 2 * half);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    free(table);
    release(v, 3);
    return ret;
}

/* The caches' LLMR_KV_* type (float32, float16, or uint8: q8_0 blocks), -1 (an error set) where
 * k's and v's differ. */
static int kv_type_of(const Py_buffer *k, const Py_buffer *v, const char *name) {
    if (k->itemsize != v->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: the key and value caches must have one element type", name);
        return -1;
    }
    return k->itemsize == 4 ? LLMR_KV_F32 : k->itemsize == 2 ? LLMR_KV_F16 : LLMR_KV_Q8_0;
}

/* A cache row's length in its buffer's items for head dim hd: hd, or q8_0's bytes (hd / 32
 * blocks); -1 (an error set) where a q8_0 row cannot hold hd. */
static Py_ssize_t kv_row_items(int kv, Py_ssize_t hd, const char *name) {
    if (kv == LLMR_KV_Q8_0 && hd % QK8_0) {
        PyErr_Format(PyExc_ValueError, "%s: a q8_0 cache needs a head dim that is a multiple of %d, not %zd", name,
                     QK8_0, hd);
        return -1;
    }
    return (Py_ssize_t)llmr_kv_row_bytes(kv, hd) / (kv == LLMR_KV_F32 ? 4 : kv == LLMR_KV_F16 ? 2 : 1);
}

static PyObject *py_attention(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_q, *o_k, *o_v;
    Py_ssize_t n_past, window = 0;
    double scale = 0.0;
    if (!PyArg_ParseTuple(args, "OOOOn|nd:attention", &o_out, &o_q, &o_k, &o_v, &n_past, &window, &scale))
        return NULL;
    if (window < 0 || !(scale >= 0.0)) {
        PyErr_Format(PyExc_ValueError, "attention: window %zd and scale %g must not be negative", window, scale);
        return NULL;
    }
    Py_buffer v[4] = {{0}}, *out = &v[0], *q = &v[1], *kc = &v[2], *vc = &v[3];
    PyObject *ret = NULL;
    float *scratch = NULL;
    if (get_buffer(o_out, out, "out", F32, 1, 3, 3) || get_buffer(o_q, q, "q", F32, 0, 3, 3) ||
        get_buffer(o_k, kc, "k_cache", KV, 0, 3, 3) || get_buffer(o_v, vc, "v_cache", KV, 0, 3, 3))
        goto done;
    const int kv_type = kv_type_of(kc, vc, "attention");
    if (kv_type < 0)
        goto done;
    const Py_ssize_t t = q->shape[0], hq = q->shape[1], hd = q->shape[2];
    const Py_ssize_t hkv = kc->shape[0], n_ctx = kc->shape[1];
    if (check_same_shape(out, "out", q) || check_same_shape(vc, "v_cache", kc))
        goto done;
    if (hd < 1) {
        PyErr_SetString(PyExc_ValueError, "q: head dim must be at least 1");
        goto done;
    }
    const Py_ssize_t row = kv_row_items(kv_type, hd, "k_cache");
    if (row < 0)
        goto done;
    if (kc->shape[2] != row) {
        PyErr_Format(PyExc_ValueError, "k_cache: rows of %zd items, not the %zd of q's head dim %zd", kc->shape[2],
                     row, hd);
        goto done;
    }
    if (hkv < 1 || hq % hkv) {
        PyErr_Format(PyExc_ValueError, "q has %zd heads, not a multiple of k_cache's %zd", hq, hkv);
        goto done;
    }
    if (n_past < 0 || n_past > n_ctx - t) {
        PyErr_Format(PyExc_ValueError, "n_past=%zd with %zd new tokens does not fit n_ctx=%zd", n_past, t, n_ctx);
        goto done;
    }
    if (check_disjoint(out, q, "out and q", 0) || check_disjoint(out, kc, "out and k_cache", 0) ||
        check_disjoint(out, vc, "out and v_cache", 0))
        goto done;
    /* Scratch for each slot (thread) working at once. */
    const llmr_attention_seq seq = {out->buf, q->buf, kc->buf, vc->buf, kv_type, t, n_past, n_ctx};
    const int64_t slots = llmr_attention_slots(&seq, 1, hq, hd);
    if (!(scratch = malloc((size_t)slots * (size_t)llmr_attention_scratch(&seq, 1, hq, hd) * sizeof(float)))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    llmr_attention(kern, &seq, 1, hq, hkv, hd, window, scale > 0.0 ? (float)scale : 1.0f / sqrtf((float)hd), scratch,
                   slots);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    free(scratch);
    release(v, 4);
    return ret;
}

/* out = act(gate) * up for the table's silu_mul or gelu_mul */
static PyObject *gated(PyObject *args, const char *format,
                       void (*act_mul)(float *out, const float *gate, const float *up, int64_t n)) {
    PyObject *o_out, *o_gate, *o_up;
    if (!PyArg_ParseTuple(args, format, &o_out, &o_gate, &o_up))
        return NULL;
    Py_buffer v[3] = {{0}}, *out = &v[0], *gate = &v[1], *up = &v[2];
    PyObject *ret = NULL;
    if (get_buffer(o_out, out, "out", F32, 1, 0, MAX_NDIM) || get_buffer(o_gate, gate, "gate", F32, 0, 0, MAX_NDIM) ||
        get_buffer(o_up, up, "up", F32, 0, 0, MAX_NDIM))
        goto done;
    if (check_same_shape(gate, "gate", out) || check_same_shape(up, "up", out) ||
        check_disjoint(out, gate, "out and gate", 1) || check_disjoint(out, up, "out and up", 1))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    act_mul(out->buf, gate->buf, up->buf, out->len / (Py_ssize_t)sizeof(float));
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    release(v, 3);
    return ret;
}

static PyObject *py_silu_mul(PyObject *self, PyObject *args) { return gated(args, "OOO:silu_mul", kern->silu_mul); }
static PyObject *py_gelu_mul(PyObject *self, PyObject *args) { return gated(args, "OOO:gelu_mul", kern->gelu_mul); }

static PyObject *py_top_k(PyObject *self, PyObject *args) {
    PyObject *o_ids, *o_x;
    if (!PyArg_ParseTuple(args, "OO:top_k", &o_ids, &o_x))
        return NULL;
    Py_buffer v[2] = {{0}}, *ids = &v[0], *x = &v[1];
    PyObject *ret = NULL;
    if (get_buffer(o_ids, ids, "ids", I32, 1, 1, 1) || get_buffer(o_x, x, "x", F64, 0, 1, 1) ||
        check_disjoint(ids, x, "ids and x", 0))
        goto done;
    if (x->shape[0] > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "x: more than 2^31 - 1 values");
        goto done;
    }
    int64_t kept;
    Py_BEGIN_ALLOW_THREADS
    kept = llmr_top_k(x->buf, x->shape[0], ids->shape[0], ids->buf);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong(kept);
done:
    release(v, 2);
    return ret;
}

static PyObject *py_isa(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(kern->isa);
}

static const char *prefetch_name; /* llmr_prefetch_choose's, at import */

static PyObject *py_prefetch(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(prefetch_name);
}

/* The C traits table as {id: {name, block_size, type_size, n_scales, scales_at, act, x16}}, for the test
 * that holds it to quant/types.py's. */
static PyObject *py_type_traits(PyObject *self, PyObject *unused) {
    PyObject *d = PyDict_New();
    for (int id = 0; d && id < LLMR_TYPE_COUNT; id++) {
        const llmr_type_traits *t = llmr_type_traits_get(id);
        if (!t)
            continue;
        PyObject *key = PyLong_FromLong(id);
        PyObject *v = Py_BuildValue("{s:s, s:i, s:i, s:i, s:i, s:s, s:O}", "name", t->name, "block_size",
                                    t->block_size, "type_size", t->type_size, "n_scales", t->n_scales,
                                    "scales_at", t->scales_at, "act",
                                    t->act == LLMR_ACT_Q16_A ? "q16_a" : "f32", "x16", t->x16 ? Py_True : Py_False);
        if (!key || !v || PyDict_SetItem(d, key, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(key);
        Py_XDECREF(v);
    }
    return d;
}

/* For tests of the import-time check: llmr_kernels_check on a copy of the table in use with one
 * entry (vec_dot, vec_dot_tile, gemm or gemm_x16 of type id `type`; or "none") set to NULL. Returns the
 * check's message, or None where it passes. */
static PyObject *py_check_kernels(PyObject *self, PyObject *args) {
    const char *entry;
    int type;
    if (!PyArg_ParseTuple(args, "si:_check_kernels", &entry, &type))
        return NULL;
    if (type < 0 || type >= LLMR_TYPE_COUNT) {
        PyErr_Format(PyExc_ValueError, "type id %d is outside [0, %d)", type, LLMR_TYPE_COUNT);
        return NULL;
    }
    llmr_kernels k = *kern;
    if (!strcmp(entry, "vec_dot"))
        k.vec_dot[type] = NULL;
    else if (!strcmp(entry, "vec_dot_tile"))
        k.vec_dot_tile[type] = NULL;
    else if (!strcmp(entry, "gemm"))
        k.gemm[type] = NULL;
    else if (!strcmp(entry, "gemm_x16"))
        k.gemm_x16[type] = NULL;
    else if (strcmp(entry, "none")) {
        PyErr_Format(PyExc_ValueError, "entry %R: vec_dot, vec_dot_tile, gemm, gemm_x16 or none", PyTuple_GET_ITEM(args, 0));
        return NULL;
    }
    char err[512];
    return llmr_kernels_check(&k, err, sizeof err) ? PyUnicode_FromString(err) : Py_NewRef(Py_None);
}

static PyObject *py_isas(PyObject *self, PyObject *unused) {
    const char *names[16];
    const int n = llmr_isas(names, 16);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, s);
    }
    return list;
}

static PyObject *py_set_threads(PyObject *self, PyObject *arg) {
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "set_threads: n must be in [1, %d]", LLMR_MAX_THREADS);
        }
        return NULL;
    }
    if (PyBool_Check(arg) || n < 1 || n > LLMR_MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "set_threads: n must be an integer in [1, %d], got %R", LLMR_MAX_THREADS, arg);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS /* waits for a kernel running on the pool in another thread */
    llmr_threads_set((int)n); /* cannot fail: n was checked above */
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_get_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(llmr_threads_get());
}

static PyObject *py_default_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(llmr_threads_default());
}


/* ---- the forward pass ----------------------------------------------------------------------- */

/* A model's weights as the C forward pass reads them, with the buffer views that keep their
 * memory alive: held by a capsule, released with it. */
typedef struct {
    llmr_model m;
    llmr_layer *layers;
    Py_buffer *views;
    int n_views;
} graph_t;

static void graph_free(PyObject *capsule) {
    graph_t *g = PyCapsule_GetPointer(capsule, "llmrun.graph");
    if (!g)
        return;
    release(g->views, g->n_views);
    free(g->views);
    free(g->layers);
    free(g);
}

/* A float32 vector of n elements. */
static int take_vector(graph_t *g, PyObject *obj, const char *name, Py_ssize_t n, const float **out) {
    Py_buffer *v = &g->views[g->n_views];
    if (get_buffer(obj, v, name, F32, 0, 1, 1))
        return -1;
    g->n_views++;
    if (check_shape(v, name, 1, &n))
        return -1;
    *out = v->buf;
    return 0;
}

/* A weight (data, type id, layout, rows, cols) of `rows` x `cols` (rows < 0: any). */
static int take_weight(graph_t *g, PyObject *obj, const char *name, Py_ssize_t rows, Py_ssize_t cols, llmr_weight *out) {
    PyObject *data;
    Py_ssize_t r, c;
    if (!PyTuple_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "graph: %s must be a tuple (data, type, layout, rows, cols)", name);
        return -1;
    }
    if (!PyArg_ParseTuple(obj, "Oiinn", &data, &out->type, &out->layout, &r, &c))
        return -1;
    const llmr_type_traits *t = get_type(out->type);
    if (!t || check_layout(t, out->type, out->layout))
        return -1;
    if ((rows >= 0 && r != rows) || c != cols || r < 1) {
        PyErr_Format(PyExc_ValueError, "%s: shape [%zd, %zd], expected [%zd, %zd]", name, r, c, rows, cols);
        return -1;
    }
    Py_buffer *v = &g->views[g->n_views];
    if (get_buffer(data, v, name, RAW, 0, 0, MAX_NDIM))
        return -1;
    g->n_views++;
    const Py_ssize_t rb = row_bytes_or_error(t, c);
    if (rb < 0 || check_weight_alignment(v, t) || check_x16_rows(out->layout, r))
        return -1;
    if (v->len != r * rb) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, %s [%zd, %zd] takes %zd", name, v->len, t->name, r, c, r * rb);
        return -1;
    }
    out->data = v->buf;
    out->rows = r;
    out->cols = c;
    return 0;
}

/* The sizes a field's shape is made of. */
enum size { SIZE_D, SIZE_Q, SIZE_KV, SIZE_HD, SIZE_F };

static Py_ssize_t size_of(const llmr_model *m, enum size s) {
    switch (s) {
    case SIZE_D: return m->dim;
    case SIZE_Q: return m->n_heads * m->head_dim;
    case SIZE_KV: return m->n_kv_heads * m->head_dim;
    case SIZE_HD: return m->head_dim;
    default: return m->ffn_dim;
    }
}

/* A layer's tensors by name (llmrun/model.py's LayerWeights): a family's new one is a line here
 * and a field in llmr_layer. */
static const struct {
    const char *name;
    size_t offset;
    enum size n;
    int required;
} LAYER_VECTORS[] = {
    {"attn_norm", offsetof(llmr_layer, attn_norm), SIZE_D, 1},
    {"ffn_norm", offsetof(llmr_layer, ffn_norm), SIZE_D, 1},
    {"bq", offsetof(llmr_layer, bq), SIZE_Q, 0},
    {"bk", offsetof(llmr_layer, bk), SIZE_KV, 0},
    {"bv", offsetof(llmr_layer, bv), SIZE_KV, 0},
    {"q_norm", offsetof(llmr_layer, q_norm), SIZE_HD, 0},
    {"k_norm", offsetof(llmr_layer, k_norm), SIZE_HD, 0},
    {"attn_post_norm", offsetof(llmr_layer, attn_post_norm), SIZE_D, 0},
    {"ffn_post_norm", offsetof(llmr_layer, ffn_post_norm), SIZE_D, 0},
};
static const struct {
    const char *name;
    size_t offset;
    enum size rows, cols;
} LAYER_WEIGHTS[] = {
    {"wq", offsetof(llmr_layer, wq), SIZE_Q, SIZE_D},         {"wk", offsetof(llmr_layer, wk), SIZE_KV, SIZE_D},
    {"wv", offsetof(llmr_layer, wv), SIZE_KV, SIZE_D},        {"wo", offsetof(llmr_layer, wo), SIZE_D, SIZE_Q},
    {"w_gate", offsetof(llmr_layer, w_gate), SIZE_F, SIZE_D}, {"w_up", offsetof(llmr_layer, w_up), SIZE_F, SIZE_D},
    {"w_down", offsetof(llmr_layer, w_down), SIZE_D, SIZE_F},
};
#define N_LAYER_VECTORS (sizeof LAYER_VECTORS / sizeof LAYER_VECTORS[0])
#define N_LAYER_WEIGHTS (sizeof LAYER_WEIGHTS / sizeof LAYER_WEIGHTS[0])
static const char *const LAYER_SWITCHES[] = {"rope", "window"};
static const char *const MODEL_KEYS[] = {"dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                                         "rope_dims", "act", "norm_eps", "embed_scale", "residual_scale",
                                         "attn_scale", "logit_scale", "rope_mscale", "inv_freq", "inv_freq_local",
                                         "norm",
                                         "tok_embeddings", "output"};

/* A dict whose every key is a known name (a misspelt field is an error, not a tensor left out). */
static int check_keys(PyObject *d, const char *what, const char *const *known, size_t n_known,
                      const char *const *more, size_t n_more) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &key, &value)) {
        const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!k && PyErr_Occurred())
            return -1;
        int found = 0;
        for (size_t i = 0; k && i < n_known + n_more && !found; i++)
            found = !strcmp(k, i < n_known ? known[i] : more[i - n_known]);
        if (!found) {
            PyErr_Format(PyExc_ValueError, "graph: %s has an unknown field %R", what, key);
            return -1;
        }
    }
    return 0;
}

/* d[key] as a whole number; `fallback` where absent (and not required). */
static int dict_int(PyObject *d, const char *key, int required, long long fallback, long long *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        *out = fallback;
        if (required)
            PyErr_Format(PyExc_ValueError, "graph: %s is missing", key);
        return required ? -1 : 0;
    }
    *out = PyLong_AsLongLong(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* d[key] as a finite float; `fallback` where absent. */
static int dict_float(PyObject *d, const char *key, double fallback, float *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    const double x = v ? PyFloat_AsDouble(v) : fallback;
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!isfinite(x) || !isfinite((float)x)) {
        PyErr_Format(PyExc_ValueError, "graph: %s = %g is not a finite float32", key, x);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static int take_layer(graph_t *g, const llmr_model *m, PyObject *d, Py_ssize_t l) {
    llmr_layer *y = &g->layers[l];
    char where[32];
    snprintf(where, sizeof where, "layers[%zd]", l);
    const char *names[N_LAYER_VECTORS + N_LAYER_WEIGHTS];
    for (size_t i = 0; i < N_LAYER_VECTORS; i++)
        names[i] = LAYER_VECTORS[i].name;
    for (size_t i = 0; i < N_LAYER_WEIGHTS; i++)
        names[N_LAYER_VECTORS + i] = LAYER_WEIGHTS[i].name;
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "graph: %s is not a dict", where);
        return -1;
    }
    if (check_keys(d, where, names, N_LAYER_VECTORS + N_LAYER_WEIGHTS, LAYER_SWITCHES, 2))
        return -1;
    for (size_t i = 0; i < N_LAYER_VECTORS; i++) {
        PyObject *v = PyDict_GetItemString(d, LAYER_VECTORS[i].name);
        const float **field = (const float **)((char *)y + LAYER_VECTORS[i].offset);
        if (!v || v == Py_None) {
            if (LAYER_VECTORS[i].required) {
                PyErr_Format(PyExc_ValueError, "graph: %s.%s is missing", where, LAYER_VECTORS[i].name);
                return -1;
            }
            *field = NULL;
        } else if (take_vector(g, v, LAYER_VECTORS[i].name, size_of(m, LAYER_VECTORS[i].n), field))
            return -1;
    }
    for (size_t i = 0; i < N_LAYER_WEIGHTS; i++) {
        PyObject *v = PyDict_GetItemString(d, LAYER_WEIGHTS[i].name);
        if (!v) {
            PyErr_Format(PyExc_ValueError, "graph: %s.%s is missing", where, LAYER_WEIGHTS[i].name);
            return -1;
        }
        if (take_weight(g, v, LAYER_WEIGHTS[i].name, size_of(m, LAYER_WEIGHTS[i].rows),
                        size_of(m, LAYER_WEIGHTS[i].cols), (llmr_weight *)((char *)y + LAYER_WEIGHTS[i].offset)))
            return -1;
    }
    if (!y->q_norm != !y->k_norm) {
        PyErr_Format(PyExc_ValueError, "graph: %s has one of q_norm and k_norm without the other", where);
        return -1;
    }
    long long rope, window;
    if (dict_int(d, "rope", 0, LLMR_ROPE_GLOBAL, &rope) || dict_int(d, "window", 0, 0, &window))
        return -1;
    if (rope < LLMR_ROPE_NONE || rope > LLMR_ROPE_LOCAL || (rope == LLMR_ROPE_LOCAL && !m->inv_freq_local) ||
        window < 0) {
        PyErr_Format(PyExc_ValueError, "graph: %s: rope %lld (2 needs inv_freq_local) or window %lld out of range",
                     where, rope, window);
        return -1;
    }
    y->rope = (int)rope;
    y->window = window;
    return 0;
}

static PyObject *py_graph(PyObject *self, PyObject *args) {
    PyObject *o_model, *o_layers;
    if (!PyArg_ParseTuple(args, "O!O!:graph", &PyDict_Type, &o_model, &PyList_Type, &o_layers))
        return NULL;
    if (check_keys(o_model, "the model", MODEL_KEYS, sizeof MODEL_KEYS / sizeof MODEL_KEYS[0], NULL, 0))
        return NULL;
    long long D, L, H, Hkv, hd, F, rd, act;
    llmr_model cfg = {0};
    if (dict_int(o_model, "dim", 1, 0, &D) || dict_int(o_model, "n_layers", 1, 0, &L) ||
        dict_int(o_model, "n_heads", 1, 0, &H) || dict_int(o_model, "n_kv_heads", 1, 0, &Hkv) ||
        dict_int(o_model, "head_dim", 1, 0, &hd) || dict_int(o_model, "ffn_dim", 1, 0, &F) ||
        dict_int(o_model, "rope_dims", 0, hd, &rd) || dict_int(o_model, "act", 0, LLMR_ACT_SILU, &act) ||
        dict_float(o_model, "norm_eps", 1e-5, &cfg.norm_eps) ||
        dict_float(o_model, "embed_scale", 1.0, &cfg.embed_scale) ||
        dict_float(o_model, "residual_scale", 1.0, &cfg.residual_scale) ||
        dict_float(o_model, "attn_scale", hd > 0 ? 1.0 / sqrt((double)hd) : 1.0, &cfg.attn_scale) ||
        dict_float(o_model, "logit_scale", 1.0, &cfg.logit_scale) ||
        dict_float(o_model, "rope_mscale", 1.0, &cfg.rope_mscale))
        return NULL;
    if (D < 1 || L < 1 || L > (1 << 20) || H < 1 || Hkv < 1 || H % Hkv || hd < 2 || hd % 2 || F < 1 || rd < 2 ||
        rd % 2 || rd > hd || (act != LLMR_ACT_SILU && act != LLMR_ACT_GELU_TANH) || PyList_GET_SIZE(o_layers) != L) {
        PyErr_SetString(PyExc_ValueError, "graph: inconsistent config");
        return NULL;
    }
    graph_t *g = calloc(1, sizeof *g);
    const int max_views = 5 + (int)((N_LAYER_VECTORS + N_LAYER_WEIGHTS) * (size_t)L);
    if (!g || !(g->layers = calloc((size_t)L, sizeof *g->layers)) ||
        !(g->views = calloc((size_t)max_views, sizeof *g->views))) {
        if (g)
            free(g->layers);
        free(g);
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(g, "llmrun.graph", graph_free);
    if (!capsule) {
        free(g->views);
        free(g->layers);
        free(g);
        return NULL;
    }
    llmr_model *m = &g->m;
    *m = cfg;
    m->dim = D, m->n_layers = L, m->n_heads = H, m->n_kv_heads = Hkv, m->head_dim = hd, m->ffn_dim = F;
    m->rope_dims = rd, m->act = (int)act, m->layers = g->layers;
    PyObject *o_freq = PyDict_GetItemString(o_model, "inv_freq"), *o_local = PyDict_GetItemString(o_model, "inv_freq_local");
    PyObject *o_norm = PyDict_GetItemString(o_model, "norm"), *o_emb = PyDict_GetItemString(o_model, "tok_embeddings");
    PyObject *o_out = PyDict_GetItemString(o_model, "output");
    if (!o_freq || !o_norm || !o_emb || !o_out) {
        PyErr_SetString(PyExc_ValueError, "graph: inv_freq, norm, tok_embeddings and output are required");
        goto fail;
    }
    if (take_vector(g, o_freq, "inv_freq", rd / 2, &m->inv_freq) ||
        (o_local && o_local != Py_None && take_vector(g, o_local, "inv_freq_local", rd / 2, &m->inv_freq_local)) ||
        take_vector(g, o_norm, "norm", D, &m->norm) ||
        take_weight(g, o_emb, "tok_embeddings", -1, D, &m->tok_embeddings) ||
        take_weight(g, o_out, "output", m->tok_embeddings.rows, D, &m->output))
        goto fail;
    for (Py_ssize_t l = 0; l < L; l++)
        if (take_layer(g, m, PyList_GET_ITEM(o_layers, l), l))
            goto fail;
    return capsule;
fail:
    Py_DECREF(capsule);
    return NULL;
}

/* Segment s, a tuple (tokens, n_past, k_cache, v_cache, first), checked (shapes, fit, no overlap
 * with the logits or with the caches of the segments before it) into segs[s]; its buffers are
 * held in views[3s .. 3s+2] (tokens, k_cache, v_cache). */
static int take_segment(const llmr_model *m, PyObject *obj, Py_ssize_t s, Py_buffer *views, llmr_segment *segs,
                        const Py_buffer *logits) {
    PyObject *o_tokens, *o_k, *o_v;
    Py_ssize_t n_past, first;
    char name[3][64];
    snprintf(name[0], sizeof name[0], "segments[%zd].tokens", s);
    snprintf(name[1], sizeof name[1], "segments[%zd].k_cache", s);
    snprintf(name[2], sizeof name[2], "segments[%zd].v_cache", s);
    if (!PyTuple_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "segments[%zd]: expected a tuple (tokens, n_past, k_cache, v_cache, first)", s);
        return -1;
    }
    Py_buffer *tokens = &views[3 * s], *kc = tokens + 1, *vc = tokens + 2;
    if (!PyArg_ParseTuple(obj, "OnOOn:forward segment", &o_tokens, &n_past, &o_k, &o_v, &first) ||
        get_buffer(o_tokens, tokens, name[0], I32, 0, 1, 1) || get_buffer(o_k, kc, name[1], KV, 1, 4, 4) ||
        get_buffer(o_v, vc, name[2], KV, 1, 4, 4))
        return -1;
    const int kv_type = kv_type_of(kc, vc, name[1]);
    if (kv_type < 0)
        return -1;
    const Py_ssize_t t = tokens->shape[0], n_ctx = kc->shape[2], row = kv_row_items(kv_type, m->head_dim, name[1]);
    if (row < 0)
        return -1;
    const Py_ssize_t cache[4] = {m->n_layers, m->n_kv_heads, n_ctx, row};
    if (check_shape(kc, name[1], 4, cache) || check_same_shape(vc, name[2], kc))
        return -1;
    if (first < 0 || first >= t) {
        PyErr_Format(PyExc_ValueError, "segments[%zd]: logits from position %zd: there are %zd tokens", s, first, t);
        return -1;
    }
    if (n_past < 0 || n_past > n_ctx - t) {
        PyErr_Format(PyExc_ValueError, "segments[%zd]: n_past=%zd with %zd tokens does not fit n_ctx=%zd", s, n_past,
                     t, n_ctx);
        return -1;
    }
    /* every cache written here is disjoint from the logits and from every other cache */
    if (check_disjoint(kc, vc, name[1], 0) || check_disjoint(logits, kc, name[1], 0) ||
        check_disjoint(logits, vc, name[2], 0))
        return -1;
    for (Py_ssize_t e = 0; e < s; e++) /* the caches of the segments before */
        for (int c = 1; c <= 2; c++)
            if (overlaps(kc, &views[3 * e + c]) || overlaps(vc, &views[3 * e + c])) {
                PyErr_Format(PyExc_ValueError, "segments[%zd] and segments[%zd] share cache memory", e, s);
                return -1;
            }
    segs[s] = (llmr_segment){.tokens = tokens->buf, .t = t, .n_past = n_past, .n_ctx = n_ctx, .first = first,
                             .k_cache = kc->buf, .v_cache = vc->buf, .kv_type = kv_type};
    return 0;
}

static PyObject *py_forward(PyObject *self, PyObject *args) {
    PyObject *o_graph, *o_segs, *o_logits;
    if (!PyArg_ParseTuple(args, "OOO:forward", &o_graph, &o_segs, &o_logits))
        return NULL;
    const graph_t *g = PyCapsule_GetPointer(o_graph, "llmrun.graph");
    /* a tuple of our own: its segments stay referenced whatever the caller's list does meanwhile */
    PyObject *segments = g ? PySequence_Tuple(o_segs) : NULL;
    if (!segments)
        return NULL;
    const llmr_model *m = &g->m;
    const Py_ssize_t n = PyTuple_GET_SIZE(segments);
    Py_buffer logits = {0}, *views = calloc(3 * (size_t)n + 1, sizeof *views); /* tokens, k, v per segment */
    llmr_segment *segs = calloc((size_t)n + 1, sizeof *segs);
    PyObject *ret = NULL;
    if (!views || !segs) {
        PyErr_NoMemory();
        goto done;
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "forward: no segments");
        goto done;
    }
    if (get_buffer(o_logits, &logits, "logits", F32, 1, 2, 2))
        goto done;
    Py_ssize_t rows = 0;
    for (Py_ssize_t s = 0; s < n; s++) {
        if (take_segment(m, PyTuple_GET_ITEM(segments, s), s, views, segs, &logits))
            goto done;
        rows += segs[s].t - segs[s].first;
    }
    const Py_ssize_t want_logits[2] = {rows, m->output.rows};
    if (check_shape(&logits, "logits", 2, want_logits))
        goto done;
    int64_t bad_at;
    int32_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad_at = llmr_forward(kern, m, segs, n, logits.buf, &bad);
    Py_END_ALLOW_THREADS
    if (bad_at == -2)
        PyErr_NoMemory();
    else if (bad_at == -3) /* graph() checked every weight's type and layout: cannot happen */
        PyErr_Format(PyExc_SystemError, "forward: a weight has no %s kernel", kern->isa);
    else if (bad_at >= 0) {
        Py_ssize_t s = 0;
        for (; bad_at >= segs[s].t; s++)
            bad_at -= segs[s].t;
        PyErr_Format(PyExc_ValueError, "segments[%zd].tokens[%zd] = %d is out of range [0, %zd)", s,
                     (Py_ssize_t)bad_at, (int)bad, (Py_ssize_t)m->tok_embeddings.rows);
    } else
        ret = Py_NewRef(Py_None);
done:
    if (views)
        release(views, 3 * (int)n);
    release(&logits, 1);
    free(views);
    free(segs);
    Py_DECREF(segments);
    return ret;
}

static PyMethodDef methods[] = {
    {"graph", py_graph, METH_VARARGS,
     "graph(model, layers): a model's weights and switches for forward(), by name. model: a dict of\n"
     "dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, norm_eps, inv_freq, norm, tok_embeddings,\n"
     "output and the optional rope_dims, act, embed_scale, residual_scale, attn_scale, logit_scale,\n"
     "rope_mscale, inv_freq_local; layers: a dict each of attn_norm, ffn_norm, wq, wk, wv, wo, w_gate, w_up, w_down\n"
     "and the optional bq, bk, bv, q_norm, k_norm, attn_post_norm, ffn_post_norm, rope, window.\n"
     "A weight is (buffer, type id, layout, rows, cols). The buffers stay referenced while the graph lives."},
    {"forward", py_forward, METH_VARARGS,
     "forward(graph, segments, logits): llmrun.model.forward in C, over one or more sequences at once.\n"
     "segments: (tokens, n_past, k_cache, v_cache, first) each; tokens int32 [T]; caches float32,\n"
     "float16 (both alike) [layers, kv_heads, n_ctx, head_dim] or uint8 [.., head_dim / 32 * 34] (q8_0 blocks of\n"
     "rotated rows: llmr_kv_rotate) of their own, rows n_past .. written. logits float32\n"
     "[sum(T - first), V]: each segment's, of its tokens first .. T-1, segment after segment."},
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(out, x, w, wtype, layout=0): out[t, n] = dot(W[n], x[t]). x float32 [T, K] or [K]; out float32\n"
     "[T, N] or [N]; w the bytes of N rows of type id wtype (K a multiple of its block size).\n"
     "Quantised types multiply x quantised to q16_a blocks of 32."},
    {"_matmul_vec_dot", py_matmul_vec_dot, METH_VARARGS,
     "_matmul_vec_dot(out, x, w, wtype, layout=0): matmul with the table's gemm and vec_dot_tile kernels set\n"
     "aside: each rows-layout output one vec_dot call, which every tile must equal bit for bit. For tests."},
    {"get_rows", py_get_rows, METH_VARARGS,
     "get_rows(out, w, wtype, ids, layout=0): out[i] = dequantised row ids[i] of W. out float32 [n, K],\n"
     "ids int32 [n] each in [0, rows of w)."},
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(out, x, wtype): float32 x [..., K] -> the bytes of type wtype into out (exactly\n"
     "rows * row_bytes(wtype, K) bytes); byte-exact with quant.reference.quantize."},
    {"quantize_weighted", py_quantize_weighted, METH_VARARGS,
     "quantize_weighted(out, x, wtype, weights): float32 x [..., K] -> q4_0, q5_0, q4_1 or q5_1 bytes into out,\n"
     "each block the best of 19 grids by the squared error weighted by weights[column] (float64 [K]);\n"
     "byte-exact with quant.calibrate's _weighted_symmetric / _weighted_affine given the same."},
    {"quantize_k_fit", py_quantize_k_fit, METH_VARARGS,
     "quantize_k_fit(out, x, wtype, importance, rmin, rdelta, nstep, grid, search=False, square=True): float32\n"
     "x [..., K] -> q2_k, q3_k, q4_k, q5_k, q6_k or iq4_nl bytes into out, fitted with importance[column]\n"
     "(float32 [K]) in the weights; q2_k, q4_k, q5_k: the search rmin + rdelta * i (i in 0 .. nstep); q4_k,\n"
     "q5_k: the largest 6-bit scale and min at 63 + grid; q3_k: the largest scale at -(32 + grid), or with\n"
     "search the spread-weighted grid searches; q6_k: the largest int8 scale at -(128 + grid); iq4_nl: each\n"
     "value weighing its square times its importance, or (not square) its importance. Byte-exact with\n"
     "quant.reference's _quantize_q2_k .. _q6_k and _quantize_iq4_nl given the same (the calibrated fits)."},
    {"quantize_k_best", py_quantize_k_best, METH_VARARGS,
     "quantize_k_best(out, x, wtype, importance, weights, fits): float32 x [..., K] -> q2_k .. q6_k or iq4_nl bytes\n"
     "into out: per block, of the type's own quantiser's block and each fit's (a fit: (rmin, rdelta, nstep, grid,\n"
     "search, square), as quantize_k_fit's, with importance float32 [K]), the one with the least error\n"
     "sum weights[i] (dequantised[i] - x[i])^2 (weights float64 [K]; in double, in order), the first of equals.\n"
     "The calibrated k-quant quantiser (quant.calibrate.quantize_k_weighted)."},
    {"quantize_q16a", py_quantize_q16a, METH_VARARGS,
     "quantize_q16a(out, x): float32 x [..., K] -> q16_a activation blocks {f32 d, f32 s, int16 qs[32]}."},
    {"quantize_q16b", py_quantize_q16b, METH_VARARGS,
     "quantize_q16b(out, x): float32 x [..., K] -> q16_b activation blocks {f32 d, f32 s, f32 s16[2], u8 lo[32],\n"
     "i8 hi[32]}: the q16_a blocks' integers as byte planes (what this path's u8 x s8 kernels read)."},
    {"row_bytes", py_row_bytes, METH_VARARGS, "row_bytes(wtype, k) -> bytes in a row of k elements."},
    {"rmsnorm", py_rmsnorm, METH_VARARGS,
     "rmsnorm(out, x, w, eps): out = x / sqrt(mean(x^2, last axis) + eps) * w. x, out float32\n"
     "[..., D] (out may be x), w float32 [D]."},
    {"rope", py_rope, METH_VARARGS,
     "rope(x, positions, inv_freq, mscale=1): rotate x float32 [T, H, hd] in place, rotate-half\n"
     "convention; positions int32 [T], inv_freq float32 [rd/2]: the first rd (<= hd) of each head\n"
     "rotate; cos and sin are scaled by mscale (LongRoPE's attention factor)."},
    {"kv_rotate", py_kv_rotate, METH_VARARGS,
     "kv_rotate(x, divide) -> None: x [.., hd] float32 in place: each run of n (the largest power of two dividing "
     "hd) times the Walsh-Hadamard matrix H_n, then / n where divide (a q8_0 KV cache's rotation)."},
    {"attention", py_attention, METH_VARARGS,
     "attention(out, q, k_cache, v_cache, n_past, window=0, scale=hd**-0.5): causal grouped-query\n"
     "attention. q, out float32 [T, Hq, hd]; caches float32 or float16 [Hkv, n_ctx, hd], or uint8 (q8_0 blocks)\n"
     "[Hkv, n_ctx, hd / 32 * 34], holding positions\n"
     "0 .. n_past+T-1; window > 0: each token sees its last `window` positions only."},
    {"silu_mul", py_silu_mul, METH_VARARGS,
     "silu_mul(out, gate, up): out = gate * sigmoid(gate) * up, all float32 of one shape."},
    {"gelu_mul", py_gelu_mul, METH_VARARGS,
     "gelu_mul(out, gate, up): out = gelu(gate) * up (tanh approximation), all float32 of one shape."},
    {"top_k", py_top_k, METH_VARARGS,
     "top_k(ids, x) -> m: ids[:m] = the indices of the len(ids) largest of x (float64 [n]), largest\n"
     "first, a tie to the lower index; NaN never taken, so m < len(ids) only when x has too few others."},
    {"isa", py_isa, METH_NOARGS, "isa() -> the kernel path in use, e.g. 'scalar'."},
    {"prefetch", py_prefetch, METH_NOARGS,
     "prefetch() -> how the x86 kernels prefetch the weights they stream: 'nta' or 'l2'."},
    {"type_traits", py_type_traits, METH_NOARGS,
     "type_traits() -> {type id: {name, block_size, type_size, n_scales, scales_at, act, x16}}: the C traits table\n"
     "(kernels/cpu/types.c), which quant/types.py's table must match."},
    {"_check_kernels", py_check_kernels, METH_VARARGS,
     "_check_kernels(entry, type) -> the import-time completeness check's message for the table in use\n"
     "with entry ('vec_dot', 'vec_dot_tile', 'gemm', 'gemm_x16' or 'none') of type id `type` removed; None if\n"
     "it passes. For tests."},
    {"isas", py_isas, METH_NOARGS, "isas() -> the kernel paths this CPU can run, best first."},
    {"set_threads", py_set_threads, METH_O,
     "set_threads(n): run kernels on n threads (1 .. 512), the caller included. Results are\n"
     "bit-identical for any n."},
    {"get_threads", py_get_threads, METH_NOARGS,
     "get_threads() -> the thread count: LLMRUN_THREADS at import, else the physical cores, or\n"
     "the last set_threads."},
    {"default_threads", py_default_threads, METH_NOARGS,
     "default_threads() -> the physical cores this process may use (affinity, cgroup quota)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_kernels",
    .m_doc = "llmrun's native kernels. LLMRUN_ISA (read once, at import) forces a kernel path;\n"
             "LLMRUN_PREFETCH (nta or l2, read once, at import) how its x86 kernels prefetch weights;\n"
             "LLMRUN_THREADS (read once, at import) sets the thread count (default: physical cores).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    char err[512];
    kern = llmr_dispatch(getenv("LLMRUN_ISA"), err, sizeof err);
    if (!kern) {
        PyErr_SetString(PyExc_ImportError, err);
        return NULL;
    }
    prefetch_name = llmr_prefetch_choose(getenv("LLMRUN_PREFETCH"), err, sizeof err);
    if (!prefetch_name) {
        PyErr_SetString(PyExc_ImportError, err);
        return NULL;
    }
    /* LLMRUN_THREADS: a whole number in [1, LLMR_MAX_THREADS]; anything else is an error, not
     * a silent fallback. Unset or empty: the physical cores. */
    const char *env = getenv("LLMRUN_THREADS");
    int threads;
    if (!env || env[0] == '\0')
        threads = llmr_threads_default();
    else {
        char *end;
        errno = 0;
        const long n = strtol(env, &end, 10);
        if (errno || end == env || *end != '\0' || n < 1 || n > LLMR_MAX_THREADS) {
            PyErr_Format(PyExc_ImportError, "LLMRUN_THREADS=%s: must be a whole number of threads in [1, %d]",
                         env, LLMR_MAX_THREADS);
            return NULL;
        }
        threads = (int)n;
    }
    llmr_threads_init(threads);
    return PyModule_Create(&module);
}
