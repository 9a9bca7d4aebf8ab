/* The avx512 dot product of q2_k: vec_dot_q2_k_avx2.c's 256-bit code built with the AVX-512 flags. */
#define Q2K_ISA avx512
#include "vec_dot_q2_k_avx2.c"
