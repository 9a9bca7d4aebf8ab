/* The avx512vnni X16 kernel of q5_k: gemm_x16_q5_k_avx512.c built again with -mavx512vnni, so its
 * int16 multiply-adds become vpdpwssd; the name gets the _avx512vnni suffix. */
#define Q5K_ISA avx512vnni
#include "gemm_x16_q5_k_avx512.c"
