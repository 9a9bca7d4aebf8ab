/* The avx512vnni X16 kernels: gemm_x16_avx512.c built again with -mavx512vnni, so its int16
 * multiply-adds become vpdpwssd; the names get the _avx512vnni suffix. */
#define X16_ISA avx512vnni
#include "gemm_x16_avx512.c"
