/* Shared helpers for the libFuzzer targets in this folder (not a library: each target is one
 * program). A failed invariant aborts, which libFuzzer reports as a crash with the input. */
#ifndef RWKV5_FUZZ_COMMON_H
#define RWKV5_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz invariant failed %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
