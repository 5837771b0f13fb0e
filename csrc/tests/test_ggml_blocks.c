// SOURCES: csrc/model/ggml_blocks.c csrc/common/threadpool.c
/* The ggml block dequantizer without Python: known blocks of each kind give known floats, an
 * unaligned source is read, a non-finite scale stops at its block, an unknown kind is refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/threadpool.h"
#include "model/ggml_blocks.h"
#include "check.h"

/* block `kind` with d (and m) given as half bits, the 32 integers q (before the zero point) packed
 * as ggml does: weight j < 16 low nibble of byte j, weight j + 16 its high nibble, fifth bits in qh
 */
static int make_block(unsigned char *p, int kind, uint16_t d, uint16_t m, const int *q) {
    int n = 0;
    p[n++] = (unsigned char)(d & 0xff);
    p[n++] = (unsigned char)(d >> 8);
    if (kind == RWKV5_Q4_1 || kind == RWKV5_Q5_1) {
        p[n++] = (unsigned char)(m & 0xff);
        p[n++] = (unsigned char)(m >> 8);
    }
    if (kind == RWKV5_Q8_0) {
        for (int j = 0; j < 32; j++) p[n++] = (unsigned char)(int8_t)q[j];
        return n;
    }
    if (kind == RWKV5_Q5_0 || kind == RWKV5_Q5_1) {
        uint32_t qh = 0;
        for (int j = 0; j < 32; j++) qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        for (int i = 0; i < 4; i++) p[n++] = (unsigned char)(qh >> (8 * i));
    }
    for (int j = 0; j < 16; j++) p[n++] = (unsigned char)((q[j] & 15) | ((q[j + 16] & 15) << 4));
    return n;
}

int main(void) {
    static const int kinds[5] = {RWKV5_Q4_0, RWKV5_Q4_1, RWKV5_Q5_0, RWKV5_Q5_1, RWKV5_Q8_0};
    static const int sizes[5] = {18, 20, 22, 24, 34};
    unsigned char buf[1 + 3 * 34];
    float out[3 * 32];
    int q[32];
    for (int k = 0; k < 5; k++) {
        const int kind = kinds[k];
        CHECK(rwkv5_ggml_block_bytes(kind) == sizes[k], "block bytes of kind %d", kind);
        const int bits = kind == RWKV5_Q8_0                           ? 8
                         : (kind == RWKV5_Q5_0 || kind == RWKV5_Q5_1) ? 5
                                                                      : 4;
        const int zero = kind == RWKV5_Q4_0 ? 8 : kind == RWKV5_Q5_0 ? 16 : 0;
        for (int j = 0; j < 32; j++) q[j] = bits == 8 ? j * 7 - 100 : (j * 5 + 3) % (1 << bits);
        /* three blocks at an odd address: d = 0.5, 1, -2; m = 0.25 (the _1 kinds) */
        const uint16_t ds[3] = {0x3800, 0x3C00, 0xC000};
        const float dv[3] = {0.5f, 1.0f, -2.0f};
        int n = 0;
        for (int b = 0; b < 3; b++) n += make_block(buf + 1 + n, kind, ds[b], 0x3400, q);
        CHECK(n == 3 * sizes[k], "packed size of kind %d: %d", kind, n);
        CHECK(rwkv5_ggml_dequantize(out, buf + 1, 3, kind) == -1, "kind %d: status", kind);
        const float m = (kind == RWKV5_Q4_1 || kind == RWKV5_Q5_1) ? 0.25f : 0.0f;
        for (int b = 0; b < 3; b++)
            for (int j = 0; j < 32; j++) {
                const float want = dv[b] * (float)(q[j] - zero) + m;
                CHECK(out[b * 32 + j] == want, "kind %d block %d weight %d: %g, want %g", kind, b,
                      j, out[b * 32 + j], want);
            }
        /* an infinite d in block 1 stops there */
        make_block(buf + 1 + sizes[k], kind, 0x7C00, 0x3400, q);
        CHECK(rwkv5_ggml_dequantize(out, buf + 1, 3, kind) == 1, "kind %d: inf d not reported",
              kind);
        if (kind == RWKV5_Q4_1 || kind == RWKV5_Q5_1) {
            make_block(buf + 1 + sizes[k], kind, 0x3C00, 0x7E00, q); /* NaN m */
            CHECK(rwkv5_ggml_dequantize(out, buf + 1, 3, kind) == 1, "kind %d: NaN m not reported",
                  kind);
        }
    }
    /* the threaded version on many blocks: the same floats, and the first of two bad blocks */
    const int64_t nb = 100003;
    unsigned char *big = malloc((size_t)nb * 22);
    float *o1 = malloc((size_t)nb * 32 * sizeof(float)),
          *o2 = malloc((size_t)nb * 32 * sizeof(float));
    if (!big || !o1 || !o2) return 2;
    for (int64_t b = 0; b < nb; b++) {
        for (int j = 0; j < 32; j++) q[j] = (int)((b * 31 + j * 7) % 32);
        make_block(big + b * 22, RWKV5_Q5_0, (uint16_t)(0x3000 + b % 1024), 0, q);
    }
    CHECK(rwkv5_set_num_threads(2) == 0, "set_num_threads");
    CHECK(rwkv5_ggml_dequantize(o1, big, nb, RWKV5_Q5_0) == -1, "Q5_0 many");
    CHECK(rwkv5_ggml_dequantize_threads(o2, big, nb, RWKV5_Q5_0) == -1, "Q5_0 many, threads");
    CHECK(memcmp(o1, o2, (size_t)nb * 32 * sizeof(float)) == 0, "threaded result differs");
    make_block(big + 90001 * 22, RWKV5_Q5_0, 0xFC00, 0, q);
    make_block(big + 12345 * 22, RWKV5_Q5_0, 0x7E00, 0, q);
    CHECK(rwkv5_ggml_dequantize_threads(o2, big, nb, RWKV5_Q5_0) == 12345,
          "first bad block, threads");
    CHECK(rwkv5_ggml_dequantize_threads(o2, big, nb, 5) == -2, "unknown kind, threads");
    rwkv5_set_num_threads(1); /* join the workers so leak checkers see a clean exit */
    free(big);
    free(o1);
    free(o2);
    CHECK(rwkv5_ggml_block_bytes(4) == 0 && rwkv5_ggml_dequantize(out, buf, 1, 4) == -2,
          "unknown kind");
    CHECK(rwkv5_ggml_dequantize(out, buf, 0, RWKV5_Q4_0) == -1, "zero blocks");
    if (failures)
        fprintf(stderr, "test_ggml_blocks: %d failure(s)\n", failures);
    else
        printf("test_ggml_blocks: ok\n");
    return failures != 0;
}
