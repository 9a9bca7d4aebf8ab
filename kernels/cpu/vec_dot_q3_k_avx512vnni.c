/* The avx512vnni dot product of q3_k: vec_dot_q3_k_avx2.c built with VNNI, its int16
 * multiply-adds one vpdpwssd each. */
#define Q3K_ISA avx512vnni
#include "vec_dot_q3_k_avx2.c"
