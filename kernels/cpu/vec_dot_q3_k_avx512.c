/* The avx512 dot product of q3_k: vec_dot_q3_k_avx2.c's 256-bit code built with the AVX-512 flags. */
#define Q3K_ISA avx512
#include "vec_dot_q3_k_avx2.c"
