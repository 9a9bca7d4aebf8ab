/* The avx512vnni q6_k X16 kernel: gemm_x16_q6_k_avx512.c built again with -mavx512vnni, so its
 * int16 multiply-adds become vpdpwssd; the name gets the _avx512vnni suffix. */
#define X16_Q6K_ISA avx512vnni
#include "gemm_x16_q6_k_avx512.c"
