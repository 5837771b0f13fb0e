/* Exact float32 values of ggml's quantised blocks (layouts in ggml_blocks.h). Pure C. */
#include "model/ggml_blocks.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "common/threadpool.h"
#include "model/kernels.h"

int rwkv5_ggml_block_bytes(int kind) {
    switch (kind) {
        case RWKV5_Q4_0: return 18;
        case RWKV5_Q4_1: return 20;
        case RWKV5_Q5_0: return 22;
        case RWKV5_Q5_1: return 24;
        case RWKV5_Q8_0: return 34;
        default: return 0;
    }
}

static float ld_half(const unsigned char *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
    return rwkv5_f16_to_f32(h);
}

/* q[32] <- the 4-bit values of qs[16], plus the fifth bits of qh when has_qh, minus zero */
static void unpack4(float *q, const unsigned char *qs, uint32_t qh, int has_qh, int zero) {
    for (int j = 0; j < RWKV5_QK / 2; j++) {
        int lo = qs[j] & 0x0F, hi = qs[j] >> 4;
        if (has_qh) {
            lo |= (int)((qh >> j) & 1u) << 4;
            hi |= (int)((qh >> (j + 16)) & 1u) << 4;
        }
        q[j] = (float)(lo - zero);
        q[j + RWKV5_QK / 2] = (float)(hi - zero);
    }
}

int64_t rwkv5_ggml_dequantize(float *out, const void *blocks, int64_t nblocks, int kind) {
    const int bytes = rwkv5_ggml_block_bytes(kind);
    if (!bytes) return -2;
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
        } else {
            uint32_t qh = 0;
            if (has_qh) {
                qh = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                p += 4;
            }
            unpack4(q, p, qh, has_qh, zero);
        }
        /* w = d * q (+ m): the product is exact, so a fused multiply-add rounds the same */
        if (has_m)
            for (int j = 0; j < RWKV5_QK; j++) o[j] = d * q[j] + m;
        else
            for (int j = 0; j < RWKV5_QK; j++) o[j] = d * q[j];
    }
    return -1;
}

/* ---- the same over the thread pool ---- */

typedef struct {
    float *out;
    const unsigned char *blocks;
    int kind, bytes;
    _Atomic int64_t bad;   /* the first bad block found so far, -1 while none */
} dequant_job;

static void dequant_range(void *ctx, int64_t b0, int64_t b1) {
    dequant_job *job = (dequant_job *)ctx;
    int64_t r = rwkv5_ggml_dequantize(job->out + b0 * RWKV5_QK, job->blocks + b0 * job->bytes, b1 - b0, job->kind);
    if (r < 0) return;
    int64_t want = b0 + r, cur = atomic_load(&job->bad);
    while ((cur < 0 || want < cur) && !atomic_compare_exchange_weak(&job->bad, &cur, want)) {
    }
}

int64_t rwkv5_ggml_dequantize_threads(float *out, const void *blocks, int64_t nblocks, int kind) {
    const int bytes = rwkv5_ggml_block_bytes(kind);
    if (!bytes) return -2;
    dequant_job job = {out, (const unsigned char *)blocks, kind, bytes, -1};
    rwkv5_parallel_for(nblocks, 1 << 13, dequant_range, &job);   /* pieces of >= 256K weights */
    return atomic_load(&job.bad);
}
