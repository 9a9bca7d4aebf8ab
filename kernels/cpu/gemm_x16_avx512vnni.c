/* The avx512vnni X16 kernels: gemm_x16_avx512.c built again with -mavx512vnni, so its int16
 * multiply-adds become vpdpwssd; the names get the _avx512vnni suffix. */
#define X16_ISA avx512vnni
/* q4_k's avx512vnni kernel reads q16_b activations (gemm_x16_q4_k_avx512vnni.c) */
#define X16_NO_Q4_K
#include "gemm_x16_avx512.c"
