/* Software prefetch of the weights the x86 X16 kernels stream: a decode step reads every weight
 * once, from memory, so a kernel's speed there is how well its loads overlap its arithmetic.
 * Which prefetch does that best depends on the core (one core, decode matvecs of 150-220 MB
 * from memory, GB/s, against a plain streaming read of about 12-14 on both machines' days):
 *
 *   - Zen 4 (sessions 13-16): non-temporal (NTA) prefetches of the super-block about to be read
 *     ran q6_k at 24.1 (T0 ones: 20.3; the next super-block's: 17-19), q4_k 26.9 against 20.3
 *     without; the other types 8 KiB ahead, NTA: q4_0 22.3 -> 24.3.
 *   - Intel Xeon (Emerald Rapids, a 2-core VM): those same NTA prefetches held every type near
 *     7-9 (q4_0 7.2, q8_0 8.9, q4_k 9.1, q6_k 7.3) and cost q6_k from L2 26 -> 14; into L2 (T1),
 *     two super-blocks ahead for q4_k and q6_k and 8 KiB ahead for the others: q4_0 14.5, q8_0
 *     15.1, q5_0 14.4, iq4_nl 13.8, q4_k 13.5, q6_k 11.6 (T0 one super-block ahead: 12.1, 12.3).
 *     The 1B shape's Q4_K_M decode went from 9.7 to 14.9 tokens/s on one thread, 19.0 to 28.4 on two.
 *
 * So the mode is chosen once at import (llmr_prefetch_choose: AMD NTA, other x86 L2;
 * LLMRUN_PREFETCH=nta|l2 forces one), and a kernel asks for its lines through llmr_prefetch_lines,
 * a branch taken once per super-block. The results do not depend on it: a prefetch never changes
 * what a load reads. */
#ifndef LLMRUN_PREFETCH_X86_H
#define LLMRUN_PREFETCH_X86_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "llmrun.h"

/* The lines of bytes at p, by the chosen mode's hint. */
static inline __attribute__((always_inline)) void llmr_prefetch_lines(const uint8_t *p, size_t bytes) {
    if (llmr_prefetch == LLMR_PREFETCH_L2)
        for (size_t line = 0; line < bytes; line += 64)
            _mm_prefetch((const char *)p + line, _MM_HINT_T1);
    else
        for (size_t line = 0; line < bytes; line += 64)
            _mm_prefetch((const char *)p + line, _MM_HINT_NTA);
}

#endif
