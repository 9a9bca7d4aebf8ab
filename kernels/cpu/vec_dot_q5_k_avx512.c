/* The avx512 rows-layout dot product of q5_k: vec_dot_q5_k_avx2.c's 256-bit code built with the
 * AVX-512 flags (these rows are the few matrices whose rows are not a multiple of 16). */
#define Q5K_ISA avx512
#include "vec_dot_q5_k_avx2.c"
