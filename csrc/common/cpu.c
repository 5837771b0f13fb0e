#include "cpu.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__clang__)
#include <cpuid.h>
/* clang (14) does not know "f16c" in __builtin_cpu_supports: CPUID.1:ECX bit 29 (the OS support of
 * the AVX state it needs is checked with "avx2") */
static int has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
}
#elif defined(__x86_64__) || defined(__i386__)
static int has_f16c(void) { return __builtin_cpu_supports("f16c"); }
#endif

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20) /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

static atomic_int current = -1; /* -1: not yet decided */

/* The names of the levels on this architecture, indexed by level. */
#if defined(__x86_64__) || defined(__i386__)
static const char *const names[] = {"scalar", "avx2", "avx512", "avx512_vnni"};
#elif defined(__aarch64__)
static const char *const names[] = {"scalar", "neon", "neon_dotprod"};
#else
static const char *const names[] = {"scalar"};
#endif
#define N_LEVELS ((int)(sizeof names / sizeof names[0]))

rwkv5_isa rwkv5_cpu_isa_supported(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        if (__builtin_cpu_supports("avx512vnni")) return RWKV5_ISA_AVX512_VNNI;
        return RWKV5_ISA_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
        return RWKV5_ISA_AVX2;
#elif defined(__aarch64__)
    /* Advanced SIMD is mandatory in AArch64; the dot-product extension is optional (Armv8.2+):
     * Linux reports it in AT_HWCAP, macOS as the sysctl hw.optional.arm.FEAT_DotProd (untested:
     * docs/arm64.md). Elsewhere it is not assumed. */
#if defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) return RWKV5_ISA_NEON_DOTPROD;
#elif defined(__APPLE__)
    int has = 0;
    size_t len = sizeof has;
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &has, &len, NULL, 0) == 0 && has)
        return RWKV5_ISA_NEON_DOTPROD;
#endif
    return RWKV5_ISA_NEON;
#endif
    return RWKV5_ISA_SCALAR;
}

rwkv5_isa rwkv5_set_isa(rwkv5_isa isa) {
    rwkv5_isa best = rwkv5_cpu_isa_supported();
    if ((int)isa < 0) isa = RWKV5_ISA_SCALAR;
    if (isa > best) isa = best;
    atomic_store(&current, (int)isa);
    return isa;
}

int rwkv5_isa_from_name(const char *name) {
    for (int i = 0; i < N_LEVELS; i++)
        if (name && !strcmp(name, names[i])) return i;
    return -1;
}

rwkv5_isa rwkv5_cpu_isa(void) {
    int v = atomic_load(&current);
    if (v >= 0) return (rwkv5_isa)v;
    rwkv5_isa want = rwkv5_cpu_isa_supported();
    const char *env = getenv("RWKV5_ISA");
    if (env && *env) {
        int lvl = rwkv5_isa_from_name(env);
        if (lvl >= 0) want = (rwkv5_isa)lvl;
    }
    return rwkv5_set_isa(want);
}

const char *rwkv5_isa_name(rwkv5_isa isa) {
    return (int)isa >= 0 && (int)isa < N_LEVELS ? names[isa] : "scalar";
}
