/* The avx512vnni rows-layout dot product of q5_k: vec_dot_q5_k_avx2.c built with VNNI, its int16
 * multiply-adds one vpdpwssd each. */
#define Q5K_ISA avx512vnni
#include "vec_dot_q5_k_avx2.c"
