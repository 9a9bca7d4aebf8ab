/* The thread pool: persistent pthreads that run one job at a time, a job being a function
 * called on items 0 .. n-1 of some context. The calling thread takes part, so a pool of n
 * threads has n - 1 workers. Items are handed out by an atomic counter, so which thread runs
 * an item varies from call to call; kernels keep results bit-identical for any thread count by
 * making each output element the work of exactly one item, computed by the same code.
 *
 * A job costs two synchronisations (start, end), both spin-then-block: a waiting thread spins
 * for SPIN_NS, then sleeps on a condition variable. A decode step runs ~200 small jobs, a few
 * tens of microseconds apart, so the workers normally catch the next job while still spinning.
 *
 * No OpenMP (Apple's clang has none) and no pthread_barrier (macOS has none): a new generation
 * starts a job, the count of items done ends it. There is no barrier on the workers: on a busy
 * machine a worker that the OS has not run yet would otherwise stall every job. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifdef __APPLE__
#include <sys/sysctl.h>
#endif
#include <sched.h>

#include "llmrun.h"

/* How long an idle thread spins before it sleeps: longer than the Python between two kernel
 * calls of a decode step, short enough that an idle process soon stops burning CPU. */
#define SPIN_NS 200000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The job in progress is one 64-bit word: generation (high 32 bits) and next item (low 32).
 * A thread claims an item by a compare-and-swap that only succeeds within the generation it
 * read the job under, so a worker that wakes late (preempted, or still asleep) cannot take an
 * item of a job it has not read, and the caller waits only for the items to be done, never for
 * every worker to check in: a descheduled worker costs nothing unless it holds an item. */
static struct {
    pthread_mutex_t run;  /* held by the thread running a job (or resizing the pool) */
    pthread_mutex_t mu;   /* for sleeping, with wake and done */
    pthread_cond_t wake;  /* a new generation (or stop) */
    pthread_cond_t done;  /* the last item of a job finished */
    _Atomic int want;     /* threads asked for (set_threads), >= 1 once initialised */
    int n_workers;        /* workers running now (threads - 1), changed under run */
    pthread_t workers[LLMR_MAX_THREADS];

    /* The job: written by the caller before it publishes a new generation, and not again
     * until every item is done. A late worker may read them while the next job is written:
     * the caller first closes the old generation (next item = CLOSED), and writes them with
     * release, so a worker that read any new one also sees the old generation closed, claims
     * nothing and discards what it read. */
    _Atomic(llmr_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n_items;
    _Atomic uint64_t job;       /* generation << 32 | next item */
    _Atomic int64_t n_done;     /* items of this job finished */
    _Atomic int sleeping_caller; /* the caller waits on done */
    _Atomic int stop;
} P = {
    .run = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

static uint32_t generation_of(uint64_t job) { return (uint32_t)(job >> 32); }
#define CLOSED 0xFFFFFFFFu /* next item of a finished job: beyond any n_items */

/* Claim and run items of generation g until none are left (or the job is over); returns the
 * job word last seen. */
static uint64_t run_items(uint32_t g) {
    const llmr_task_fn fn = atomic_load_explicit(&P.fn, memory_order_acquire);
    void *const ctx = atomic_load_explicit(&P.ctx, memory_order_acquire);
    const int64_t n_items = atomic_load_explicit(&P.n_items, memory_order_acquire);
    uint64_t job = atomic_load_explicit(&P.job, memory_order_acquire);
    for (;;) {
        const uint64_t item = job & 0xFFFFFFFFu;
        if (generation_of(job) != g || (int64_t)item >= n_items)
            return job;
        if (!atomic_compare_exchange_weak_explicit(&P.job, &job, job + 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        fn(ctx, (int64_t)item);
        /* release: this item's outputs happen before the caller sees the count complete. */
        if (atomic_fetch_add_explicit(&P.n_done, 1, memory_order_seq_cst) + 1 == n_items &&
            atomic_load_explicit(&P.sleeping_caller, memory_order_seq_cst)) {
            pthread_mutex_lock(&P.mu);
            pthread_cond_signal(&P.done);
            pthread_mutex_unlock(&P.mu);
        }
        job = atomic_load_explicit(&P.job, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    uint32_t seen = (uint32_t)(uintptr_t)arg; /* the generation when this worker was made */
    for (;;) {
        /* Wait for the next generation: spin, then sleep. */
        uint32_t g = generation_of(atomic_load_explicit(&P.job, memory_order_acquire));
        if (g == seen) {
            const int64_t t0 = now_ns();
            for (int spins = 0; g == seen && !atomic_load_explicit(&P.stop, memory_order_relaxed); spins++) {
                cpu_relax();
                g = generation_of(atomic_load_explicit(&P.job, memory_order_acquire));
                if ((spins & 255) == 255 && now_ns() - t0 > SPIN_NS)
                    break;
            }
            if (g == seen) {
                pthread_mutex_lock(&P.mu);
                while ((g = generation_of(atomic_load_explicit(&P.job, memory_order_acquire))) == seen &&
                       !atomic_load_explicit(&P.stop, memory_order_relaxed))
                    pthread_cond_wait(&P.wake, &P.mu);
                pthread_mutex_unlock(&P.mu);
            }
        }
        if (atomic_load_explicit(&P.stop, memory_order_relaxed))
            return NULL;
        /* Run what is left of generation g; if a newer job began meanwhile, wait for the next
         * one after it rather than join it half-read (its caller does not need us). */
        seen = generation_of(run_items(g));
    }
}

/* With P.run held: stop and join the workers. */
static void stop_workers(void) {
    if (!P.n_workers)
        return;
    pthread_mutex_lock(&P.mu);
    atomic_store(&P.stop, 1);
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);
    for (int i = 0; i < P.n_workers; i++)
        pthread_join(P.workers[i], NULL);
    P.n_workers = 0;
    atomic_store(&P.stop, 0);
}

/* With P.run held: make the pool P.want threads. If a thread cannot be made, run with those
 * that were (results do not depend on the count). */
static void resize(void) {
    const int target = atomic_load(&P.want) - 1;
    if (P.n_workers == target)
        return;
    stop_workers();
    /* Workers block every signal, so Ctrl-C still reaches Python's main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    const uint32_t g = generation_of(atomic_load(&P.job));
    while (P.n_workers < target &&
           pthread_create(&P.workers[P.n_workers], NULL, worker_main, (void *)(uintptr_t)g) == 0)
        P.n_workers++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void run_here(int64_t n_items, llmr_task_fn fn, void *ctx) {
    for (int64_t i = 0; i < n_items; i++)
        fn(ctx, i);
}

void llmr_parallel_for(int64_t n_items, llmr_task_fn fn, void *ctx) {
    if (n_items <= 0)
        return;
    /* One job at a time. Another thread's job in progress (two Python threads in kernels at
     * once, the GIL released): run this one here alone rather than wait for the pool. */
    if (n_items == 1 || n_items > INT32_MAX || atomic_load_explicit(&P.want, memory_order_relaxed) <= 1 ||
        pthread_mutex_trylock(&P.run) != 0) {
        run_here(n_items, fn, ctx);
        return;
    }
    resize();
    if (!P.n_workers) {
        pthread_mutex_unlock(&P.run);
        run_here(n_items, fn, ctx);
        return;
    }
    const uint32_t g = generation_of(atomic_load_explicit(&P.job, memory_order_relaxed)) + 1;
    atomic_store_explicit(&P.job, (uint64_t)(g - 1) << 32 | CLOSED, memory_order_relaxed);
    atomic_store_explicit(&P.fn, fn, memory_order_release);
    atomic_store_explicit(&P.ctx, ctx, memory_order_release);
    atomic_store_explicit(&P.n_items, n_items, memory_order_release);
    atomic_store_explicit(&P.n_done, 0, memory_order_relaxed);
    atomic_store_explicit(&P.sleeping_caller, 0, memory_order_relaxed);
    /* Under mu, so that a worker between its check and its sleep cannot miss the new job. */
    pthread_mutex_lock(&P.mu);
    atomic_store_explicit(&P.job, (uint64_t)g << 32, memory_order_release);
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    run_items(g);

    /* Every item must be done (ctx lives on our caller's stack) before we return: spin, then
     * sleep. Workers may still be inside run_items, but they can no longer claim an item. While
     * spinning, yield now and then: on a busy machine the worker that holds the last item may
     * be waiting for a CPU. (Workers do not yield while waiting for a job: measured, a worker
     * that yields to another process misses the next jobs of a decode step.) */
    if (atomic_load_explicit(&P.n_done, memory_order_acquire) != n_items) {
        const int64_t t0 = now_ns();
        for (int spins = 0; atomic_load_explicit(&P.n_done, memory_order_acquire) != n_items; spins++) {
            cpu_relax();
            if ((spins & 255) == 255 && now_ns() - t0 <= SPIN_NS)
                sched_yield();
            else if ((spins & 255) == 255) {
                pthread_mutex_lock(&P.mu);
                atomic_store_explicit(&P.sleeping_caller, 1, memory_order_seq_cst);
                while (atomic_load_explicit(&P.n_done, memory_order_seq_cst) != n_items)
                    pthread_cond_wait(&P.done, &P.mu);
                pthread_mutex_unlock(&P.mu);
                break;
            }
        }
    }
    pthread_mutex_unlock(&P.run);
}

/* ---- how many threads ----------------------------------------------------------------------- */

#ifdef __linux__
static int read_int(const char *path, long *v) {
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    const int ok = fscanf(f, "%ld", v) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

/* Physical cores among the CPUs this process may run on: unique (package, core) pairs. */
static int linux_physical_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return -1;
    enum { MAX_PAIRS = 1024 };
    long pairs[MAX_PAIRS][2];
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set))
            continue;
        char path[128];
        long core, pkg;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        if (read_int(path, &core))
            return CPU_COUNT(&set); /* no topology (some containers): count logical CPUs */
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        if (read_int(path, &pkg))
            pkg = 0;
        int seen = 0;
        for (int i = 0; i < n && !seen; i++)
            seen = pairs[i][0] == pkg && pairs[i][1] == core;
        if (!seen && n < MAX_PAIRS) {
            pairs[n][0] = pkg;
            pairs[n][1] = core;
            n++;
        }
    }
    return n;
}

/* A cgroup v2 CPU quota (docker --cpus=2), rounded up; -1 if none. */
static int cgroup_cpu_limit(void) {
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (!f)
        return -1;
    char quota[32] = "";
    long period = 0;
    const int got = fscanf(f, "%31s %ld", quota, &period);
    fclose(f);
    if (got != 2 || period <= 0 || quota[0] < '0' || quota[0] > '9')
        return -1; /* "max": no limit */
    const long q = strtol(quota, NULL, 10);
    return q > 0 ? (int)((q + period - 1) / period) : -1;
}
#endif

int llmr_threads_default(void) {
    int n = -1;
#if defined(__APPLE__)
    int v = 0;
    size_t size = sizeof v;
    if (sysctlbyname("hw.physicalcpu", &v, &size, NULL, 0) == 0)
        n = v;
#elif defined(__linux__)
    n = linux_physical_cores();
    const int limit = cgroup_cpu_limit();
    if (n > 0 && limit > 0 && limit < n)
        n = limit;
#endif
    if (n < 1)
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n < LLMR_MAX_THREADS ? n : LLMR_MAX_THREADS;
}

/* After fork() the child has only the forking thread: forget the parent's workers. */
static void after_fork_child(void) {
    pthread_mutex_init(&P.run, NULL);
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.done, NULL);
    P.n_workers = 0;
    atomic_store(&P.stop, 0);
}

int llmr_threads_init(int n) {
    if (n < 1 || n > LLMR_MAX_THREADS)
        return -1;
    static int registered;
    if (!registered) {
        pthread_atfork(NULL, NULL, after_fork_child);
        registered = 1;
    }
    P.want = n;
    return 0;
}

int llmr_threads_get(void) { return P.want; }

int llmr_threads_set(int n) {
    if (n < 1 || n > LLMR_MAX_THREADS)
        return -1;
    /* Waits for a job in progress; the pool itself is resized lazily, by the next job. */
    pthread_mutex_lock(&P.run);
    P.want = n;
    pthread_mutex_unlock(&P.run);
    return 0;
}
