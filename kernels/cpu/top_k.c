/* The sampler's top-k: the k largest of a row of logits, in one pass. A vocabulary-sized row
 * (49k to 150k) against k of about 40: after the first k, nearly every element is turned away
 * by one comparison with the k-th best so far, where a partition (numpy's argpartition) moves
 * the whole row about: about 20 us against 80 to 330 us, for each token of every sequence.
 * An insertion shifts up to k kept ids, so a row in ascending order costs n * k: the sampler
 * takes k up to 64 here (llmrun/sampling.py, KERNEL_K) and partitions beyond. */
#include "llmrun.h"

int64_t llmr_top_k(const double *x, int64_t n, int64_t k, int32_t *ids) {
    int64_t kept = 0;
    double kth = 0; /* x[ids[k - 1]] once full */
    for (int64_t i = 0; i < n && k > 0; i++) {
        const double v = x[i];
        /* full: only what beats the k-th (a tie goes to the lower index, already kept);
         * NaN is never kept */
        if (kept == k ? !(v > kth) : v != v)
            continue;
        int64_t j = kept < k ? kept++ : k - 1; /* full: the k-th makes way */
        for (; j > 0 && x[ids[j - 1]] < v; j--)
            ids[j] = ids[j - 1];
        ids[j] = (int32_t)i;
        kth = x[ids[kept - 1]];
    }
    return kept;
}
