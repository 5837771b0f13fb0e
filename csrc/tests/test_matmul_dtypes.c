// SOURCES: csrc/common/threadpool.c csrc/common/cpu.c csrc/common/polled.c csrc/model/matmul.c csrc/model/neon.c
/* The storage-type table (dtypes.h) and the matmul entry points' handling of storage types: the
 * table's rows are consistent; every entry point computes for every type at every ISA level this
 * CPU has, and refuses a type outside the table with RWKV5_EINVAL, leaving `out` unwritten. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cpu.h"
#include "common/threadpool.h"
#include "model/kernels.h"
#include "tests/check.h"

enum { M = 20, N = 40, D = 9 }; /* M >= RWKV5_GEMM_MIN_M: the GEMM path too */

static const float SENTINEL = -12345.0f;

static void fill(float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = SENTINEL;
}
static int untouched(const float *out, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (out[i] != SENTINEL) return 0;
    return 1;
}

static void table_rows_are_consistent(void) {
    CHECK(RWKV5_N_DTYPES == (int)(sizeof rwkv5_dtypes / sizeof rwkv5_dtypes[0]), "table size");
    for (int t = 0; t < RWKV5_N_DTYPES; t++) {
        const rwkv5_dtype_info *d = &rwkv5_dtypes[t];
        CHECK(d->name && d->name[0], "dtype %d has no name", t);
        CHECK(d->elem_bytes > 0 && 64 % d->elem_bytes == 0,
              "dtype %s: element size %d does not divide 64", d->name, d->elem_bytes);
        CHECK(rwkv5_esz(t) == (size_t)d->elem_bytes, "rwkv5_esz(%s)", d->name);
        CHECK(d->block ? d->block_bytes > 0 && !d->row_scale &&
                             rwkv5_row_bytes(t, 1) == (size_t)d->block_bytes
                       : rwkv5_row_bytes(t, 3) == 3 * (size_t)d->elem_bytes,
              "dtype %s: block fields", d->name);
        for (int u = 0; u < t; u++)
            CHECK(strcmp(d->name, rwkv5_dtypes[u].name) != 0, "name %s twice", d->name);
    }
    CHECK(!rwkv5_dtype_valid(-1) && !rwkv5_dtype_valid(RWKV5_N_DTYPES) && rwkv5_dtype_valid(0),
          "rwkv5_dtype_valid");
}

/* W = all elements 1 (stored as each type: fp32 1.0, fp16 0x3c00, bf16 0x3f80, int8 1 with scale 1,
 * int4 nibbles 1 with fp16 scales 1.0), so out = sum of x's row, exact for these x */
static void every_type_computes(void) {
    static unsigned char w[D * N * 4];
    float x[M * N], out[M * D], scale[D], ws_buf[4096];
    float *ws = rwkv5_gemm_ws_floats(M, N, D) <= 4096 ? ws_buf : NULL;
    CHECK(ws != NULL, "workspace too small for the test shape");
    for (int i = 0; i < M * N; i++) x[i] = (float)(i % 7) - 3.0f;
    for (int o = 0; o < D; o++) scale[o] = 1.0f;
    int best = (int)rwkv5_cpu_isa_supported();
    for (int t = 0; t < RWKV5_N_DTYPES; t++) {
        size_t esz = rwkv5_esz(t);
        float one = 1.0f;
        uint16_t h = t == RWKV5_F16 ? 0x3c00 : 0x3f80;
        int8_t q = 1;
        if (t ==
            RWKV5_I4) { /* blocks: two scales 1.0, then q = 1 in every nibble (0x11 per byte) */
            size_t rb = rwkv5_row_bytes(t, N);
            for (size_t b = 0; b < D * rb; b += RWKV5_I4_BLOCK_BYTES) {
                const uint16_t s1[2] = {0x3c00, 0x3c00};
                memcpy(w + b, s1, 4);
                memset(w + b + 4, 0x11, RWKV5_I4_BLOCK_BYTES - 4);
            }
        } else
            for (int i = 0; i < D * N; i++)
                memcpy(w + i * esz,
                       esz == 4   ? (const void *)&one
                       : esz == 2 ? (const void *)&h
                                  : (const void *)&q,
                       esz);
        rwkv5_mat mat = {w, rwkv5_dtypes[t].row_scale ? scale : NULL, t, D, N, 0};
        for (int isa = -1; isa <= best; isa++) {
            for (int path = 0; path < 3; path++) {
                fill(out, M * D);
                int rc = path == 0 ? (isa < 0 ? rwkv5_matmul(out, x, &mat, M)
                                              : rwkv5_matmul_rows_isa(isa, out, x, &mat, M, 0, D))
                                   : rwkv5_matmul_ws(isa, path == 2, out, x, &mat, M, ws, 4096);
                CHECK(rc == RWKV5_OK, "%s isa=%d path=%d: rc %d", rwkv5_dtypes[t].name, isa, path,
                      rc);
                for (int m = 0; m < M; m++) {
                    float want = 0.0f;
                    for (int i = 0; i < N; i++) want += x[m * N + i];
                    for (int o = 0; o < D; o++)
                        /* (the x86 SIMD int4 row kernels round x to t = max|x| / 8191 per group of
                         * 32 (matmul.c): off by at most N * t / 2, here max|x| = 3; headroom 2) */
                        CHECK(fabsf(out[m * D + o] - want) <=
                                  (t == RWKV5_I4 ? N * 3.0f / 8191 : 0.0f),
                              "%s isa=%d path=%d [%d][%d]: %g, want %g", rwkv5_dtypes[t].name, isa,
                              path, m, o, out[m * D + o], want);
                }
            }
        }
    }
}

static void unknown_type_is_refused(void) {
    static float w[D * N], x[M * N], out[M * D], ws[4096];
    int best = (int)rwkv5_cpu_isa_supported();
    const int bad[] = {-1, RWKV5_N_DTYPES, 1000};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        rwkv5_mat mat = {w, NULL, bad[b], D, N, 0};
        fill(out, M * D);
        CHECK(rwkv5_matmul(out, x, &mat, M) == RWKV5_EINVAL, "rwkv5_matmul accepted dtype %d",
              bad[b]);
        CHECK(rwkv5_matmul(out, x, &mat, 1) == RWKV5_EINVAL, "rwkv5_matmul (M=1) accepted dtype %d",
              bad[b]);
        for (int isa = -1; isa <= best; isa++) {
            CHECK(rwkv5_matmul_ws(isa, 1, out, x, &mat, M, ws, 4096) == RWKV5_EINVAL,
                  "matmul_ws (GEMM) accepted dtype %d", bad[b]);
            CHECK(rwkv5_matmul_ws(isa, 0, out, x, &mat, 1, NULL, 0) == RWKV5_EINVAL,
                  "matmul_ws (rows) accepted dtype %d", bad[b]);
            if (isa >= 0)
                CHECK(rwkv5_matmul_rows_isa(isa, out, x, &mat, M, 0, D) == RWKV5_EINVAL,
                      "matmul_rows_isa accepted dtype %d", bad[b]);
        }
        CHECK(untouched(out, M * D), "dtype %d: out was written", bad[b]);
    }
}

int main(void) {
    table_rows_are_consistent();
    every_type_computes();
    unknown_type_is_refused();
    rwkv5_set_num_threads(1); /* join the workers so LeakSanitizer sees a clean exit */
    if (failures)
        fprintf(stderr, "test_matmul_dtypes: %d failures\n", failures);
    else
        printf("test_matmul_dtypes: ok\n");
    return failures != 0;
}
