// SOURCES: csrc/dataprep/dp_text.c csrc/dataprep/dp_json.c csrc/dataprep/dp_codec.c csrc/dataprep/dp_task.c
// LIBS: -lzstd -lz -lbz2 -llzma
/* Fuzz target: the task runner (dp_run_task) reading a fuzzed input file: every record format
 * (dp_record_formats) behind every codec (dp_codecs), the file being either the raw fuzzed bytes
 * (so the decoders see garbage) or the fuzzed bytes properly compressed by that codec (so the
 * record format behind the decoder is reached). Two option bytes come first:
 *   byte 0: bits 0-1 the record format (modulo their count), bits 2-4 the codec (modulo their
 *           count), bit 7: compress the body with the codec;
 *   byte 1: bit 0 repair, bit 1 fail-fast, bit 2 two threads, bit 3 a 7-byte batch size (so batch
 *           boundaries fall inside records), bit 4 a lang field.
 * Oracles: return 0 or -1 with a message; on success the token part holds exactly result.tokens
 * ids, the meta part result.docs records, and the token counts in the meta records add up;
 * nothing leaks (LeakSanitizer). */
#include "fuzz_common.h"
#include "dataprep/dataprep.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

static char in_path[256], tok_path[256], meta_path[256];

static size_t byte_encode(const void *ctx, const uint8_t *t, size_t n, uint16_t *out) {
    (void)ctx;
    for (size_t i = 0; i < n; i++) out[i] = (uint16_t)(t[i] + 1);
    return n;
}

static void remove_input(void) { unlink(in_path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    atexit(remove_input);
    const char *dir = getenv("TMPDIR");
    if (!dir) dir = "/tmp";
    snprintf(in_path, sizeof in_path, "%s/rwkv5-fuzz-task-%d.in", dir, (int)getpid());
    snprintf(tok_path, sizeof tok_path, "%s/rwkv5-fuzz-task-%d.tok", dir, (int)getpid());
    snprintf(meta_path, sizeof meta_path, "%s/rwkv5-fuzz-task-%d.meta", dir, (int)getpid());
    return 0;
}

static void write_all(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    FUZZ_ASSERT(f);
    FUZZ_ASSERT(fwrite(p, 1, n, f) == n);
    fclose(f);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* body compressed by codec (malloc'd, *zn bytes). */
static uint8_t *compress_body(int codec, const uint8_t *body, size_t n, size_t *zn) {
    uint8_t *z = NULL;
    switch (codec) {
    case DP_CODEC_ZSTD: {
        size_t cap = ZSTD_compressBound(n);
        z = malloc(cap ? cap : 1);
        *zn = ZSTD_compress(z, cap, body, n, 1);
        FUZZ_ASSERT(!ZSTD_isError(*zn));
        break;
    }
    case DP_CODEC_GZIP: {
        z_stream zs;
        memset(&zs, 0, sizeof zs);
        FUZZ_ASSERT(deflateInit2(&zs, 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) ==
                    Z_OK);
        size_t cap = deflateBound(&zs, (uLong)n) + 64;
        z = malloc(cap);
        zs.next_in = (Bytef *)body;
        zs.avail_in = (uInt)n;
        zs.next_out = z;
        zs.avail_out = (uInt)cap;
        FUZZ_ASSERT(deflate(&zs, Z_FINISH) == Z_STREAM_END);
        *zn = cap - zs.avail_out;
        deflateEnd(&zs);
        break;
    }
    case DP_CODEC_BZIP2: {
        unsigned cap = (unsigned)(n + n / 100 + 601);
        z = malloc(cap);
        FUZZ_ASSERT(BZ2_bzBuffToBuffCompress((char *)z, &cap, (char *)body, (unsigned)n, 1, 0, 0) ==
                    BZ_OK);
        *zn = cap;
        break;
    }
    case DP_CODEC_XZ: {
        size_t cap = lzma_stream_buffer_bound(n);
        z = malloc(cap);
        *zn = 0;
        FUZZ_ASSERT(lzma_easy_buffer_encode(0, LZMA_CHECK_CRC32, NULL, body, n, z, zn, cap) ==
                    LZMA_OK);
        break;
    }
    default:
        z = malloc(n ? n : 1);
        memcpy(z, body, n);
        *zn = n;
    }
    return z;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    uint8_t opt = data[0], flags = data[1];
    const uint8_t *body = data + 2;
    size_t n = size - 2;
    int format = (opt & 3) % DP_N_RECORD_FORMATS;
    int codec = ((opt >> 2) & 7) % DP_N_CODECS;
    if ((opt & 0x80) && codec != DP_CODEC_PLAIN) {
        size_t zn;
        uint8_t *z = compress_body(codec, body, n, &zn);
        write_all(in_path, z, zn);
        free(z);
    } else {
        write_all(in_path, body, n);
    }
    dp_task_opts o;
    memset(&o, 0, sizeof o);
    o.path = in_path;
    o.record_format = format;
    o.codec = codec;
    o.start = 0;
    o.end = UINT64_MAX;
    o.text_field = "text";
    o.lang_field = (flags & 0x10) ? "lang" : NULL;
    o.repair_utf8 = flags & 1;
    o.fail_fast = (flags >> 1) & 1;
    o.n_threads = 1 + ((flags >> 2) & 1);
    o.batch_bytes = (flags & 8) ? 7 : 0;
    o.encode = byte_encode;
    o.tok_path = tok_path;
    o.meta_path = meta_path;
    dp_task_result res;
    memset(&res, 0, sizeof res);
    int rc = dp_run_task(&o, &res);
    FUZZ_ASSERT(rc == 0 || rc == -1);
    if (rc == -1) {
        FUZZ_ASSERT(memchr(res.err, 0, sizeof res.err) && res.err[0]);
    } else {
        FUZZ_ASSERT(file_size(tok_path) == (long)(res.tokens * 2));
        FUZZ_ASSERT(file_size(meta_path) == (long)(res.docs * sizeof(dp_doc_meta)));
        FUZZ_ASSERT(res.docs <= res.tokens);
        FUZZ_ASSERT(res.n_listed >= 0 && res.n_listed <= DP_MAX_LISTED);
        FUZZ_ASSERT(res.n_langs >= 1);
        FILE *f = fopen(meta_path, "rb");
        FUZZ_ASSERT(f);
        dp_doc_meta m;
        uint64_t sum = 0, bytes = 0;
        while (fread(&m, sizeof m, 1, f) == 1) {
            sum += m.n_tokens;
            bytes += m.n_bytes;
            FUZZ_ASSERT(m.lang < res.n_langs && m.script < DP_N_SCRIPTS);
            FUZZ_ASSERT(m.n_tokens == m.n_bytes + 1); /* byte-level encoder plus the 0 */
        }
        fclose(f);
        FUZZ_ASSERT(sum == res.tokens && bytes == res.text_bytes);
    }
    dp_task_result_free(&res);
    unlink(tok_path);
    unlink(meta_path);
    return 0;
}
