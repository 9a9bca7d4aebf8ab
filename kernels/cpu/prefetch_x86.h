/* Software prefetch of the weights the x86 X16 kernels stream: a decode step reads every weight
 * once, from memory, so a kernel's speed there is how well its loads overlap its arithmetic.
 * Which prefetch does that best depends on the core (one core, decode matvecs from memory, GB/s):
 *
 *   - Zen 4 (sessions 13-16; a plain streaming read: 22.5): non-temporal (NTA) prefetches of the
 *     super-block about to be read ran q6_k at 24.1 (T0 ones: 20.3; the next super-block's:
 *     17-19), q4_k 26.9 against 20.3 without; the other types 8 KiB ahead, NTA: q4_0 22.3 -> 24.3.
 *   - Intel Xeon (Emerald Rapids, a 2-core VM; a plain streaming read: 12-15), NTA as above ->
 *     into L2 (T1), two super-blocks ahead for q4_k and q6_k and 8 KiB ahead for the others:
 *     q4_0 9.1 -> 14.3, q8_0 9.9 -> 14.6, q5_0 8.9 -> 13.5, iq4_nl 9.0 -> 13.5, q4_k 9.0 -> 13.0,
 *     q5_k 8.4 -> 12.5, q6_k 7.1 -> 11.6 (T0 one super-block ahead was within noise of T1); from
 *     L2 the NTA prefetches had cost q6_k 22 -> 14. The 1B shape's Q4_K_M decode: 9.9 -> 14.8
 *     tokens/s on one thread, 19.4 -> 26.9 on two.
 *
 * So the mode is chosen once at import (llmr_prefetch_choose: AMD NTA, other x86 L2;
 * LLMRUN_PREFETCH=nta|l2 forces one), and a kernel asks for its lines through llmr_prefetch_lines
 * (the 32-element types: a block's bytes LLMR_PREFETCH_AHEAD ahead) or, for a k-quant's
 * super-block, llmr_prefetch_block and llmr_prefetch_part: a branch or two per super-block. The
 * results do not depend on it: a prefetch never changes what a load reads. */
#ifndef LLMRUN_PREFETCH_X86_H
#define LLMRUN_PREFETCH_X86_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "llmrun.h"

/* Bytes ahead that each block of a group of the 32-element types prefetches, by the chosen mode
 * (the k-quants' super-blocks: llmr_prefetch_block). On Zen 4, NTA, 1B-shape q4_0 decode from a
 * file's cached pages, alternating runs: 22.3 / 22.2 -> 24.3 / 22.4 GB/s on one core, about the
 * same on two (AVX2's kernels, without prefetches then: no difference). On the Intel Xeon, L2,
 * AVX2's kernels, one core, from memory, without -> with, GB/s: q4_0 8.3 -> 11.8, q4_1 8.5 ->
 * 12.7, q5_0 6.8 -> 9.8, iq4_nl 7.9 -> 11.3, q8_0 10.2 -> 13.9 (a plain read: 12.4-13.3). */
#define LLMR_PREFETCH_AHEAD 8192

/* The lines of bytes at p, by the chosen mode's hint. */
static inline __attribute__((always_inline)) void llmr_prefetch_lines(const uint8_t *p, size_t bytes) {
    if (llmr_prefetch == LLMR_PREFETCH_L2)
        for (size_t line = 0; line < bytes; line += 64)
            _mm_prefetch((const char *)p + line, _MM_HINT_T1);
    else
        for (size_t line = 0; line < bytes; line += 64)
            _mm_prefetch((const char *)p + line, _MM_HINT_NTA);
}

/* The prefetch of the super-block at g (bytes long) that a k-quant kernel reads next.
 *   - NTA: the super-block itself, whole, now, just before it is read (q6_k's three interleaved
 *     streams, two of ql words and one of qh, are ones the hardware prefetcher does not follow).
 *     Returns NULL.
 *   - L2: returns the super-block two ahead, which the kernel prefetches a part at a time as it
 *     reads this one (llmr_prefetch_part, a part per word column or sub-block): on the Intel Xeon
 *     a burst of a whole super-block's prefetches (53 lines for q6_k) held up the loads behind it.
 *     One core, decode from memory, one burst -> spread, GB/s: avx512vnni q4_k 13.0 -> 14.6,
 *     q5_k 12.3 -> 14.2, q6_k 11.6 -> 13.9, q3_k 10.9 -> 11.5; avx2 q4_k 10.1 -> 12.1, q5_k 7.0 ->
 *     9.4, q6_k 8.5 -> 10.9. Two cores, avx512vnni: q4_k 26.9 -> 29.0, q6_k 22.7 -> 27.1. */
static inline __attribute__((always_inline)) const uint8_t *llmr_prefetch_block(const uint8_t *g, size_t bytes) {
    if (llmr_prefetch == LLMR_PREFETCH_L2)
        return g + 2 * bytes;
    llmr_prefetch_lines(g, bytes);
    return NULL;
}

/* Part i of n of the super-block at pf (bytes long; none where pf is NULL): lines [L i / n,
 * L (i + 1) / n) of its L. */
static inline __attribute__((always_inline)) void llmr_prefetch_part(const uint8_t *pf, size_t bytes, int i, int n) {
    if (!pf)
        return;
    const size_t lines = (bytes + 63) / 64, first = lines * i / n, end = lines * (i + 1) / n;
    llmr_prefetch_lines(pf + 64 * first, 64 * (end - first));
}

#endif
