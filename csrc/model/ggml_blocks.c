/* Exact float32 values of ggml's quantised blocks (layouts in ggml_blocks.h). Pure C. */
#include "model/ggml_blocks.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "common/threadpool.h"
#include "model/kernels.h"

int rwkv5_ggml_block_bytes(int kind) {
    switch (kind) {
    case RWKV5_Q4_0:
        return 18;
    case RWKV5_Q4_1:
        return 20;
    case RWKV5_Q5_0:
        return 22;
    case RWKV5_Q5_1:
        return 24;
    case RWKV5_Q8_0:
        return 34;
    default:
        return 0;
    }
}

static float ld_half(const unsigned char *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    return rwkv5_f16_to_f32(h);
}

/* The 8 bits of b spread over 8 bytes, bit i -> 16 in byte i (little-endian), else 0: the
 * multiply copies b into every byte, the mask keeps bit i in byte i, adding 0x7f per byte carries
 * any set bit into that byte's top bit (never into the next byte). Branch-free and without the
 * per-lane variable shifts that baseline x86-64 lacks, so the Q5 loop stays as fast as Q4's. */
static uint64_t fifth_bits8(uint32_t b) {
    uint64_t x = ((uint64_t)(b & 0xffu) * 0x0101010101010101ull) & 0x8040201008040201ull;
    return (((x + 0x7f7f7f7f7f7f7f7full) >> 7) & 0x0101010101010101ull) << 4;
}

/* q[32] <- the 4-bit values of qs[16] minus zero */
static void unpack4(float *q, const unsigned char *qs, int zero) {
    for (int j = 0; j < RWKV5_QK / 2; j++) {
        q[j] = (float)((qs[j] & 0x0F) - zero);
        q[j + RWKV5_QK / 2] = (float)((qs[j] >> 4) - zero);
    }
}

/* q[32] <- the 4-bit values of qs[16] with the fifth bits of qh, minus zero */
static void unpack5(float *q, const unsigned char *qs, uint32_t qh, int zero) {
    unsigned char hb[RWKV5_QK]; /* hb[j] = 16 if bit j of qh is set, else 0 */
    for (int i = 0; i < 4; i++) {
        uint64_t v = fifth_bits8(qh >> (8 * i));
        for (int k = 0; k < 8; k++) hb[8 * i + k] = (unsigned char)(v >> (8 * k));
    }
    for (int j = 0; j < RWKV5_QK / 2; j++) {
        q[j] = (float)((int)((qs[j] & 0x0F) | hb[j]) - zero);
        q[j + RWKV5_QK / 2] = (float)((int)((qs[j] >> 4) | hb[j + 16]) - zero);
    }
}

/* The loop for one kind: called with a constant kind, so each copy keeps only its own branches. */
static inline __attribute__((always_inline)) int64_t
dequantize_kind(float *out, const void *blocks, int64_t nblocks, const int kind) {
    const int bytes = rwkv5_ggml_block_bytes(kind);
    const int has_m = kind == RWKV5_Q4_1 || kind == RWKV5_Q5_1;
    const int has_qh = kind == RWKV5_Q5_0 || kind == RWKV5_Q5_1;
    const int zero = kind == RWKV5_Q4_0 ? 8 : kind == RWKV5_Q5_0 ? 16 : 0;
    for (int64_t b = 0; b < nblocks; b++) {
        const unsigned char *p = (const unsigned char *)blocks + b * bytes;
        float *o = out + b * RWKV5_QK, q[RWKV5_QK];
        const float d = ld_half(p), m = has_m ? ld_half(p + 2) : 0.0f;
        if (!isfinite(d) || !isfinite(m)) return b;
        p += 2 + 2 * has_m;
        if (kind == RWKV5_Q8_0) {
            for (int j = 0; j < RWKV5_QK; j++) q[j] = (float)(int8_t)p[j];
        } else if (has_qh) {
            const uint32_t qh =
                (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            unpack5(q, p + 4, qh, zero);
        } else {
            unpack4(q, p, zero);
        }
        /* w = d * q (+ m): the product is exact, so a fused multiply-add rounds the same */
        if (has_m)
            for (int j = 0; j < RWKV5_QK; j++) o[j] = d * q[j] + m;
        else
            for (int j = 0; j < RWKV5_QK; j++) o[j] = d * q[j];
    }
    return -1;
}

int64_t rwkv5_ggml_dequantize(float *out, const void *blocks, int64_t nblocks, int kind) {
    switch (kind) {
    case RWKV5_Q4_0:
        return dequantize_kind(out, blocks, nblocks, RWKV5_Q4_0);
    case RWKV5_Q4_1:
        return dequantize_kind(out, blocks, nblocks, RWKV5_Q4_1);
    case RWKV5_Q5_0:
        return dequantize_kind(out, blocks, nblocks, RWKV5_Q5_0);
    case RWKV5_Q5_1:
        return dequantize_kind(out, blocks, nblocks, RWKV5_Q5_1);
    case RWKV5_Q8_0:
        return dequantize_kind(out, blocks, nblocks, RWKV5_Q8_0);
    default:
        return -2;
    }
}

/* ---- the same over the thread pool ---- */

typedef struct {
    float *out;
    const unsigned char *blocks;
    int kind, bytes;
    _Atomic int64_t bad; /* the first bad block found so far, -1 while none */
} dequant_job;

static void dequant_range(void *ctx, int64_t b0, int64_t b1) {
    dequant_job *job = (dequant_job *)ctx;
    int64_t r = rwkv5_ggml_dequantize(job->out + b0 * RWKV5_QK, job->blocks + b0 * job->bytes,
                                      b1 - b0, job->kind);
    if (r < 0) return;
    int64_t want = b0 + r, cur = atomic_load(&job->bad);
    while ((cur < 0 || want < cur) && !atomic_compare_exchange_weak(&job->bad, &cur, want)) {
    }
}

int64_t rwkv5_ggml_dequantize_threads(float *out, const void *blocks, int64_t nblocks, int kind) {
    const int bytes = rwkv5_ggml_block_bytes(kind);
    if (!bytes) return -2;
    dequant_job job = {out, (const unsigned char *)blocks, kind, bytes, -1};
    rwkv5_parallel_for(nblocks, 1 << 13, dequant_range, &job); /* pieces of >= 256K weights */
    return atomic_load(&job.bad);
}
