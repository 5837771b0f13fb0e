/* The one assertion macro of the C unit tests: CHECK(cond, printf-format, ...) counts a failure and
 * reports file:line and the message, without stopping, so one run lists every failure. Each test's
 * main() returns `failures != 0`. */
#ifndef RWKV5_TESTS_CHECK_H
#define RWKV5_TESTS_CHECK_H

#include <stdio.h>

static int failures = 0;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

#endif
