/* Read bandwidth of this machine: each of N threads sums its own contiguous slice of one large
 * buffer (bigger than any cache), 32 bytes per load, four independent chains. Prints the median
 * and the best of R passes, in GB/s. The yardstick for decode, which reads every weight once
 * per token: on a shared host the bandwidth drifts from second to second, so the median of
 * passes spread over a second or two is what a decode run of that length can expect.
 *
 *     cc -O2 -mavx2 -pthread benchmarks/membw.c -o membw && ./membw THREADS [MiB] [PASSES] [FILE]
 *
 * With FILE, the buffer is the first MiB of that file's pages in the page cache (a read-only
 * shared map, as a model's weights are read): in a virtual machine the speed of memory differs
 * from page to page with where the host placed it, and on this project's Zen 4 VM two files of
 * the same model read at 23 and 31 GB/s on one core; a model's decode is bounded by its own
 * file's pages, not by fresh memory's.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const __m256i *p;
    size_t n;
    pthread_barrier_t *start;
    long long sink;
} slice;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *read_slice(void *arg) {
    slice *s = arg;
    pthread_barrier_wait(s->start);
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 4 <= s->n; i += 4) {
        a = _mm256_add_epi64(a, _mm256_load_si256(s->p + i));
        b = _mm256_add_epi64(b, _mm256_load_si256(s->p + i + 1));
        c = _mm256_add_epi64(c, _mm256_load_si256(s->p + i + 2));
        d = _mm256_add_epi64(d, _mm256_load_si256(s->p + i + 3));
    }
    long long out[4];
    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    s->sink = out[0] + out[1] + out[2] + out[3];
    return NULL;
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t bytes = (size_t)(argc > 2 ? atol(argv[2]) : 1024) << 20;
    const int passes = argc > 3 ? atoi(argv[3]) : 41;
    const char *file = argc > 4 ? argv[4] : NULL;
    if (threads < 1 || threads > 256 || bytes < (1u << 20) || passes < 1 || passes > 1000) {
        fprintf(stderr, "usage: membw THREADS [MiB >= 1] [PASSES >= 1] [FILE]\n");
        return 2;
    }
    __m256i *buf;
    if (file) {
        const int fd = open(file, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) || st.st_size < (1 << 20)) {
            fprintf(stderr, "membw: cannot read %s (or it is under 1 MiB)\n", file);
            return 1;
        }
        if ((size_t)st.st_size < bytes)
            bytes = (size_t)st.st_size & ~(size_t)((1 << 20) - 1);
        buf = mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
        close(fd);
        if (buf == MAP_FAILED) {
            fprintf(stderr, "membw: cannot map %s\n", file);
            return 1;
        }
    } else {
        buf = aligned_alloc(64, bytes);
        if (!buf) {
            fprintf(stderr, "membw: cannot allocate %zu MiB\n", bytes >> 20);
            return 1;
        }
        memset(buf, 1, bytes); /* commit the pages */
    }
    const size_t per = bytes / sizeof(__m256i) / (size_t)threads;
    double gbs[1000];
    for (int r = 0; r < passes; r++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
        pthread_t tid[256];
        slice s[256];
        for (int i = 0; i < threads; i++) {
            s[i] = (slice){buf + i * per, per, &start, 0};
            pthread_create(&tid[i], NULL, read_slice, &s[i]);
        }
        pthread_barrier_wait(&start);
        const double t0 = now();
        for (int i = 0; i < threads; i++)
            pthread_join(tid[i], NULL);
        gbs[r] = (double)(per * (size_t)threads * sizeof(__m256i)) / (now() - t0) / 1e9;
        pthread_barrier_destroy(&start);
    }
    for (int i = 1; i < passes; i++) /* insertion sort: a few dozen values */
        for (int j = i; j > 0 && gbs[j - 1] > gbs[j]; j--) {
            const double v = gbs[j];
            gbs[j] = gbs[j - 1];
            gbs[j - 1] = v;
        }
    printf("%.2f %.2f\n", gbs[passes / 2], gbs[passes - 1]);
    if (file)
        munmap(buf, bytes);
    else
        free(buf);
    return 0;
}
