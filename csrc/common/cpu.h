/* Runtime instruction-set detection for the SIMD kernels (pure C). */
#ifndef RWKV5_CPU_H
#define RWKV5_CPU_H

/* ISA levels are numbered per architecture: 0 is the portable C build everywhere, and each level
 * includes the ones below it, so kernels test `isa >= LEVEL` (inside the #if of their architecture:
 * the same number means a different ISA on another architecture). */
typedef enum {
    RWKV5_ISA_SCALAR = 0,
    /* x86-64 */
    RWKV5_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    RWKV5_ISA_AVX512 = 2, /* AVX-512 F + BW + VL + DQ */
    RWKV5_ISA_AVX512_VNNI =
        3, /* the above + AVX512_VNNI (Cascade Lake and later, Zen 4): int8 row kernels */
    /* AArch64 (Advanced SIMD, fp16 conversions and FMA are part of the base architecture) */
    RWKV5_ISA_NEON = 1,        /* hand-written Advanced SIMD kernels */
    RWKV5_ISA_NEON_DOTPROD = 2 /* the above + the dot-product extension (SDOT, Armv8.2 FEAT_DotProd,
                                  HWCAP_ASIMDDP): int8 row kernels */
} rwkv5_isa;

/* Best ISA this CPU supports, lowered to the value of env RWKV5_ISA when that is set (read once):
 * scalar|avx2|avx512|avx512_vnni on x86-64, scalar|neon|neon_dotprod on AArch64 (a name of the
 * other architecture, or an unknown one, is ignored). Never above what the CPU supports. */
rwkv5_isa rwkv5_cpu_isa(void);
/* Best ISA the CPU supports, ignoring the environment and any override. */
rwkv5_isa rwkv5_cpu_isa_supported(void);
/* Force an ISA for the kernels (tests); clamped to what the CPU supports. Returns the ISA in use.
 */
rwkv5_isa rwkv5_set_isa(rwkv5_isa isa);
/* The name of a level on this architecture ("scalar", "avx2", ..., "neon", "neon_dotprod"). */
const char *rwkv5_isa_name(rwkv5_isa isa);
/* The level of an RWKV5_ISA name on this architecture, or -1 when the name is not one of them. */
int rwkv5_isa_from_name(const char *name);

#endif
