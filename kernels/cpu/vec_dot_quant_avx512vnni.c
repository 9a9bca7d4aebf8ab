/* The avx512vnni kernels: vec_dot_quant_avx512.c built again with -mavx512vnni, so its
 * int16 multiply-adds become vpdpwssd; the names get the _avx512vnni suffix. */
#define ISA_FN(name) name##_avx512vnni
#include "vec_dot_quant_avx512.c"
