/* Runtime instruction-set detection for the SIMD kernels (pure C). */
#ifndef RWKV5_CPU_H
#define RWKV5_CPU_H

typedef enum { RWKV5_ISA_SCALAR = 0, RWKV5_ISA_AVX2 = 1, RWKV5_ISA_AVX512 = 2 } rwkv5_isa;

/* Best ISA this CPU supports (AVX2 means AVX2+FMA+F16C; AVX512 means F+BW+VL+DQ), lowered to the
 * value of env RWKV5_ISA=scalar|avx2|avx512 when that is set (read once). Never above what the CPU
 * supports. */
rwkv5_isa rwkv5_cpu_isa(void);
/* Best ISA the CPU supports, ignoring the environment and any override. */
rwkv5_isa rwkv5_cpu_isa_supported(void);
/* Force an ISA for the kernels (tests); clamped to what the CPU supports. Returns the ISA in use. */
rwkv5_isa rwkv5_set_isa(rwkv5_isa isa);
const char *rwkv5_isa_name(rwkv5_isa isa);

#endif
