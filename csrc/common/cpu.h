/* Runtime instruction-set detection for the SIMD kernels (pure C). */
#ifndef RWKV5_CPU_H
#define RWKV5_CPU_H

typedef enum {
    RWKV5_ISA_SCALAR = 0,
    RWKV5_ISA_AVX2 = 1,         /* AVX2 + FMA + F16C */
    RWKV5_ISA_AVX512 = 2,       /* AVX-512 F + BW + VL + DQ */
    RWKV5_ISA_AVX512_VNNI = 3   /* the above + AVX512_VNNI (Cascade Lake and later, Zen 4): int8 row kernels */
} rwkv5_isa;

/* Best ISA this CPU supports, lowered to the value of env RWKV5_ISA=scalar|avx2|avx512|avx512_vnni
 * when that is set (read once). Never above what the CPU supports. Each level includes the ones
 * below it: kernels test `isa >= LEVEL`. */
rwkv5_isa rwkv5_cpu_isa(void);
/* Best ISA the CPU supports, ignoring the environment and any override. */
rwkv5_isa rwkv5_cpu_isa_supported(void);
/* Force an ISA for the kernels (tests); clamped to what the CPU supports. Returns the ISA in use. */
rwkv5_isa rwkv5_set_isa(rwkv5_isa isa);
const char *rwkv5_isa_name(rwkv5_isa isa);

#endif
