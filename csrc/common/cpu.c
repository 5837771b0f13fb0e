#include "cpu.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_int current = -1;   /* -1: not yet decided */

rwkv5_isa rwkv5_cpu_isa_supported(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        if (__builtin_cpu_supports("avx512vnni"))
            return RWKV5_ISA_AVX512_VNNI;
        return RWKV5_ISA_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return RWKV5_ISA_AVX2;
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

rwkv5_isa rwkv5_cpu_isa(void) {
    int v = atomic_load(&current);
    if (v >= 0) return (rwkv5_isa)v;
    rwkv5_isa want = rwkv5_cpu_isa_supported();
    const char *env = getenv("RWKV5_ISA");
    if (env && *env) {
        if (!strcmp(env, "scalar")) want = RWKV5_ISA_SCALAR;
        else if (!strcmp(env, "avx2")) want = RWKV5_ISA_AVX2;
        else if (!strcmp(env, "avx512")) want = RWKV5_ISA_AVX512;
        else if (!strcmp(env, "avx512_vnni")) want = RWKV5_ISA_AVX512_VNNI;
    }
    return rwkv5_set_isa(want);
}

const char *rwkv5_isa_name(rwkv5_isa isa) {
    switch (isa) {
    case RWKV5_ISA_AVX512_VNNI: return "avx512_vnni";
    case RWKV5_ISA_AVX512: return "avx512";
    case RWKV5_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}
