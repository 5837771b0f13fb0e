/* Codecs: how an input file's bytes are stored. Each is a row of dp_codecs (name, suffix, magic,
 * open/read/close); dp_source_* run whichever a task names. Errors name the file and byte offsets
 * in the (compressed) file: where the damaged unit (zstd frame, gzip member, bzip2 or xz stream)
 * begins and where the damage was seen, or where the file ends.
 *
 * Decoders: libzstd, zlib (gzip), libbz2, liblzma (xz), all streamed through one input buffer,
 * so memory does not grow with the file; docs/dataprep.md says why these and not others. */
#include <bzlib.h>
#include <errno.h>
#include <limits.h>
#include <lzma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "dataprep/dataprep.h"

struct dp_source {
    const char *path;
    const dp_codec *codec;
    FILE *f;
    uint64_t remaining; /* plain: bytes left in the range */
    /* compressed input, shared by the decoders */
    uint8_t *zin;
    size_t zin_cap, zin_len, zin_pos;
    uint64_t zin_off; /* file offset of zin[0] */
    int file_eof;
    uint64_t unit_start; /* file offset where the current frame / member / stream began */
    int in_unit;         /* a unit has begun and not ended */
    uint64_t n_pad;      /* zero bytes since the last unit ended (xz stream padding) */
    uint64_t n_units;    /* units ended so far */
    void *state;         /* the decoder's own state */
};

/* Refill zin when it is used up. 0, or -1 with err (read error). */
static int fill_input(dp_source *s, char *err, size_t errlen) {
    if (s->zin_pos < s->zin_len || s->file_eof) return 0;
    s->zin_off += s->zin_len;
    s->zin_len = fread(s->zin, 1, s->zin_cap, s->f);
    s->zin_pos = 0;
    if (s->zin_len < s->zin_cap) {
        if (ferror(s->f)) {
            snprintf(err, errlen, "%s: read error: %s", s->path, strerror(errno));
            return -1;
        }
        if (s->zin_len == 0) s->file_eof = 1;
    }
    return 0;
}

static int alloc_input(dp_source *s, size_t cap, char *err, size_t errlen) {
    s->zin_cap = cap;
    s->zin = malloc(cap);
    if (!s->zin) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* The end of the compressed file: an error when it is empty or ends inside a unit. */
static int check_end(dp_source *s, const char *what, const char *unit, char *err, size_t errlen) {
    if (s->zin_off == 0) {
        snprintf(err, errlen, "%s: 0 bytes, not a %s stream (it holds no %s)", s->path, what, unit);
        return -1;
    }
    if (s->in_unit) {
        snprintf(err, errlen,
                 "%s: truncated %s %s starting at byte offset %llu (the file ends at byte %llu)",
                 s->path, what, unit, (unsigned long long)s->unit_start,
                 (unsigned long long)s->zin_off);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ plain */

static int plain_open(dp_source *s, char *err, size_t errlen) {
    (void)s;
    (void)err;
    (void)errlen;
    return 0;
}

static int plain_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err,
                      size_t errlen) {
    size_t want = cap;
    if (s->remaining < want) want = (size_t)s->remaining;
    *got = 0;
    if (want == 0) return 0;
    size_t k = fread(dst, 1, want, s->f);
    if (k < want && ferror(s->f)) {
        snprintf(err, errlen, "%s: read error: %s", s->path, strerror(errno));
        return -1;
    }
    s->remaining -= k;
    if (k == 0) s->remaining = 0;
    *got = k;
    return 0;
}

static void plain_close(dp_source *s) { (void)s; }

/* ------------------------------------------------------------------ zstd (frames, one after
 * another) */

static int zstd_open(dp_source *s, char *err, size_t errlen) {
    s->state = ZSTD_createDCtx();
    if (!s->state) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return alloc_input(s, ZSTD_DStreamInSize(), err, errlen);
}

static int zstd_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err,
                     size_t errlen) {
    ZSTD_outBuffer out = {dst, cap, 0};
    *got = 0;
    for (;;) {
        if (fill_input(s, err, errlen)) return -1;
        if (s->zin_pos == s->zin_len && s->file_eof) {
            /* `zstd -t` agrees: a zstd stream holds at least one frame */
            if (check_end(s, "zstd", "frame", err, errlen)) return -1;
            *got = out.pos;
            return 0;
        }
        if (!s->in_unit) {
            s->unit_start = s->zin_off + s->zin_pos;
            s->in_unit = 1;
        }
        ZSTD_inBuffer in = {s->zin, s->zin_len, s->zin_pos};
        size_t ret = ZSTD_decompressStream(s->state, &out, &in);
        if (ZSTD_isError(ret)) {
            snprintf(err, errlen,
                     "%s: corrupt zstd data (%s) in the frame starting at byte offset %llu",
                     s->path, ZSTD_getErrorName(ret), (unsigned long long)s->unit_start);
            return -1;
        }
        s->zin_pos = in.pos;
        if (ret == 0) s->in_unit = 0; /* a frame ended; the next starts at the next byte */
        if (out.pos == out.size) {
            *got = out.pos;
            return 0;
        }
        if (out.pos > 0 && s->zin_pos == s->zin_len) {
            *got = out.pos;
            return 0;
        }
    }
}

static void zstd_close(dp_source *s) { ZSTD_freeDCtx(s->state); }

/* ------------------------------------------------------------------ gzip (members, one after
 * another) */

#define IN_CAP (1u << 17)

/* The offset in the file of the next byte the decoder will take. */
static uint64_t in_offset(const dp_source *s) { return s->zin_off + s->zin_pos; }

static int gzip_init(z_stream *z) {
    memset(z, 0, sizeof *z);
    return inflateInit2(z, 16 + MAX_WBITS); /* 16: a gzip header and trailer (CRC-32, length) */
}

static int gzip_open(dp_source *s, char *err, size_t errlen) {
    z_stream *z = malloc(sizeof *z);
    if (!z || gzip_init(z) != Z_OK) {
        free(z);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->state = z;
    return alloc_input(s, IN_CAP, err, errlen);
}

static int gzip_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err,
                     size_t errlen) {
    z_stream *z = s->state;
    size_t pos = 0;
    *got = 0;
    if (cap > UINT_MAX) cap = UINT_MAX;
    for (;;) {
        if (fill_input(s, err, errlen)) return -1;
        if (s->zin_pos == s->zin_len && s->file_eof) {
            if (check_end(s, "gzip", "member", err, errlen)) return -1;
            *got = pos;
            return 0;
        }
        if (!s->in_unit) {
            /* zero bytes after a member are padding (gzip and Python's gzip module skip them too)
             */
            while (s->n_units && s->zin_pos < s->zin_len && s->zin[s->zin_pos] == 0) s->zin_pos++;
            if (s->zin_pos == s->zin_len) continue;
            s->unit_start = in_offset(s);
            s->in_unit = 1;
        }
        z->next_in = s->zin + s->zin_pos;
        z->avail_in = (unsigned)(s->zin_len - s->zin_pos);
        z->next_out = dst + pos;
        z->avail_out = (unsigned)(cap - pos);
        int ret = inflate(z, Z_NO_FLUSH);
        s->zin_pos = s->zin_len - z->avail_in;
        pos = cap - z->avail_out;
        if (ret ==
            Z_STREAM_END) { /* a member ended (its CRC and length checked); another may follow */
            s->in_unit = 0;
            s->n_units++;
            if (inflateReset(z) != Z_OK) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        } else if (ret == Z_MEM_ERROR) {
            snprintf(err, errlen, "out of memory");
            return -1;
        } else if (ret != Z_OK && ret != Z_BUF_ERROR) {
            snprintf(err, errlen,
                     "%s: corrupt gzip data (%s) at byte offset %llu, in the member starting at "
                     "byte offset %llu",
                     s->path, z->msg ? z->msg : "data error", (unsigned long long)in_offset(s),
                     (unsigned long long)s->unit_start);
            return -1;
        }
        if (pos == cap || (pos > 0 && s->zin_pos == s->zin_len)) {
            *got = pos;
            return 0;
        }
    }
}

static void gzip_close(dp_source *s) {
    if (s->state) inflateEnd(s->state);
    free(s->state);
}

/* ------------------------------------------------------------------ bzip2 (streams, one after
 * another) */

static int bzip2_open(dp_source *s, char *err, size_t errlen) {
    bz_stream *b = calloc(1, sizeof *b);
    if (!b || BZ2_bzDecompressInit(b, 0, 0) != BZ_OK) {
        free(b);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->state = b;
    return alloc_input(s, IN_CAP, err, errlen);
}

static int bzip2_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err,
                      size_t errlen) {
    bz_stream *b = s->state;
    size_t pos = 0;
    *got = 0;
    if (cap > UINT_MAX) cap = UINT_MAX;
    for (;;) {
        if (fill_input(s, err, errlen)) return -1;
        if (s->zin_pos == s->zin_len && s->file_eof) {
            if (check_end(s, "bzip2", "stream", err, errlen)) return -1;
            *got = pos;
            return 0;
        }
        if (!s->in_unit) {
            s->unit_start = in_offset(s);
            s->in_unit = 1;
        }
        b->next_in = (char *)(s->zin + s->zin_pos);
        b->avail_in = (unsigned)(s->zin_len - s->zin_pos);
        b->next_out = (char *)(dst + pos);
        b->avail_out = (unsigned)(cap - pos);
        int ret = BZ2_bzDecompress(b);
        s->zin_pos = s->zin_len - b->avail_in;
        pos = cap - b->avail_out;
        if (ret ==
            BZ_STREAM_END) { /* a stream ended (its CRCs checked); another may follow (pbzip2) */
            s->in_unit = 0;
            BZ2_bzDecompressEnd(b);
            memset(b, 0, sizeof *b);
            if (BZ2_bzDecompressInit(b, 0, 0) != BZ_OK) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        } else if (ret == BZ_MEM_ERROR) {
            snprintf(err, errlen, "out of memory");
            return -1;
        } else if (ret != BZ_OK) {
            snprintf(err, errlen,
                     "%s: corrupt bzip2 data (%s) at byte offset %llu, in the stream starting at "
                     "byte offset %llu",
                     s->path, ret == BZ_DATA_ERROR_MAGIC ? "not a bzip2 stream" : "data error",
                     (unsigned long long)in_offset(s), (unsigned long long)s->unit_start);
            return -1;
        }
        if (pos == cap || (pos > 0 && s->zin_pos == s->zin_len)) {
            *got = pos;
            return 0;
        }
    }
}

static void bzip2_close(dp_source *s) {
    if (s->state) BZ2_bzDecompressEnd(s->state);
    free(s->state);
}

/* ------------------------------------------------------------------ xz (streams and their padding)
 */

/* The decoder refuses a file whose dictionary would need more memory than this. */
#define XZ_MEMLIMIT ((uint64_t)1 << 30)

/* One stream at a time (not LZMA_CONCATENATED), so that the file offset where each stream begins is
 * known: bytes after a stream that are neither stream padding nor another stream are reported as
 * what they are, at their offset, not as a truncated stream. */
static int xz_init(lzma_stream *x) { return lzma_stream_decoder(x, XZ_MEMLIMIT, 0) == LZMA_OK; }

static int xz_open(dp_source *s, char *err, size_t errlen) {
    lzma_stream *x = malloc(sizeof *x);
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *x = (lzma_stream)LZMA_STREAM_INIT;
    if (!xz_init(x)) {
        free(x);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->state = x;
    return alloc_input(s, IN_CAP, err, errlen);
}

static const char *xz_error(lzma_ret r) {
    switch (r) {
    case LZMA_FORMAT_ERROR:
        return "not an xz stream";
    case LZMA_OPTIONS_ERROR:
        return "unsupported options";
    case LZMA_DATA_ERROR:
        return "data error";
    case LZMA_BUF_ERROR:
        return "truncated or corrupt";
    case LZMA_MEMLIMIT_ERROR:
        return "needs more than 1 GiB of memory to decode";
    case LZMA_MEM_ERROR:
        return "out of memory";
    default:
        return "decoder error";
    }
}

/* The xz format's stream padding: zero bytes after a stream, a multiple of 4 in all. */
static int xz_padding_error(const dp_source *s, char *err, size_t errlen) {
    snprintf(err, errlen,
             "%s: corrupt xz data (stream padding of %llu bytes, not a multiple of 4) ending at "
             "byte offset %llu",
             s->path, (unsigned long long)s->n_pad, (unsigned long long)in_offset(s));
    return -1;
}

static int xz_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err, size_t errlen) {
    lzma_stream *x = s->state;
    static const uint8_t magic[6] = {0xfd, '7', 'z', 'X', 'Z', 0};
    size_t pos = 0;
    *got = 0;
    for (;;) {
        if (fill_input(s, err, errlen)) return -1;
        int at_end = s->zin_pos == s->zin_len && s->file_eof;
        if (at_end && !s->in_unit) {
            if (s->n_pad % 4) return xz_padding_error(s, err, errlen);
            if (s->zin_off == 0) {
                snprintf(err, errlen, "%s: 0 bytes, not an xz stream", s->path);
                return -1;
            }
            *got = pos;
            return 0;
        }
        if (!s->in_unit) {
            while (s->n_units && s->zin_pos < s->zin_len && s->zin[s->zin_pos] == 0) {
                s->zin_pos++;
                s->n_pad++;
            }
            if (s->zin_pos == s->zin_len) continue;
            if (s->n_pad % 4) return xz_padding_error(s, err, errlen);
            s->unit_start = in_offset(s);
            size_t k =
                s->zin_len - s->zin_pos < sizeof magic ? s->zin_len - s->zin_pos : sizeof magic;
            if (memcmp(s->zin + s->zin_pos, magic, k) != 0) {
                snprintf(err, errlen, "%s: corrupt xz data (%s) at byte offset %llu", s->path,
                         s->n_units ? "not an xz stream: trailing garbage after the last stream"
                                    : "not an xz stream",
                         (unsigned long long)s->unit_start);
                return -1;
            }
            if (s->n_units && !xz_init(x)) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            s->in_unit = 1;
            s->n_pad = 0;
        }
        x->next_in = s->zin + s->zin_pos;
        x->avail_in = s->zin_len - s->zin_pos;
        x->next_out = dst + pos;
        x->avail_out = cap - pos;
        lzma_ret ret = lzma_code(x, at_end ? LZMA_FINISH : LZMA_RUN);
        s->zin_pos = s->zin_len - x->avail_in;
        pos = cap - x->avail_out;
        if (ret == LZMA_STREAM_END) { /* a stream ended (its index and checks verified); padding or
                                         another may follow */
            s->in_unit = 0;
            s->n_units++;
        } else if (ret != LZMA_OK) {
            if (at_end && (ret == LZMA_BUF_ERROR || ret == LZMA_DATA_ERROR))
                snprintf(err, errlen,
                         "%s: truncated xz stream starting at byte offset %llu (the file ends at "
                         "byte %llu)",
                         s->path, (unsigned long long)s->unit_start,
                         (unsigned long long)s->zin_off);
            else
                snprintf(err, errlen,
                         "%s: corrupt xz data (%s) at byte offset %llu, in the stream starting at "
                         "byte offset %llu",
                         s->path, xz_error(ret), (unsigned long long)in_offset(s),
                         (unsigned long long)s->unit_start);
            return -1;
        }
        if (pos == cap || (pos > 0 && s->zin_pos == s->zin_len)) {
            *got = pos;
            return 0;
        }
    }
}

static void xz_close(dp_source *s) {
    if (s->state) lzma_end(s->state);
    free(s->state);
}

/* bzip2's magic "BZh" is plain ASCII: also ask for a block size digit and the magic of a first
 * block (pi) or of an empty stream's end (sqrt(pi)), so a text beginning with "BZh" stays text. */
static int bzip2_sniff(const uint8_t *h, size_t n) {
    return n >= 10 && h[3] >= '1' && h[3] <= '9' &&
           (memcmp(h + 4, "\x31\x41\x59\x26\x53\x59", 6) == 0 ||
            memcmp(h + 4, "\x17\x72\x45\x38\x50\x90", 6) == 0);
}

/* ------------------------------------------------------------------ the table */

const dp_codec dp_codecs[DP_N_CODECS] = {
    [DP_CODEC_PLAIN] = {"plain", "", "", 0, NULL, plain_open, plain_read, plain_close},
    [DP_CODEC_ZSTD] = {"zstd", ".zst", "\x28\xb5\x2f\xfd", 4, NULL, zstd_open, zstd_read,
                       zstd_close},
    [DP_CODEC_GZIP] = {"gzip", ".gz", "\x1f\x8b", 2, NULL, gzip_open, gzip_read, gzip_close},
    [DP_CODEC_BZIP2] = {"bzip2", ".bz2", "BZh", 3, bzip2_sniff, bzip2_open, bzip2_read,
                        bzip2_close},
    [DP_CODEC_XZ] = {"xz", ".xz",
                     "\xfd"
                     "7zXZ\x00",
                     6, NULL, xz_open, xz_read, xz_close},
};

int dp_codec_detect(const uint8_t *head, size_t n) {
    for (int c = 0; c < DP_N_CODECS; c++) {
        size_t m = dp_codecs[c].magic_len;
        if (m && n >= m && memcmp(head, dp_codecs[c].magic, m) == 0 &&
            (!dp_codecs[c].sniff || dp_codecs[c].sniff(head, n)))
            return c;
    }
    return -1;
}

dp_source *dp_source_open(const char *path, int codec, uint64_t start, uint64_t end, char *err,
                          size_t errlen) {
    if (codec < 0 || codec >= DP_N_CODECS) {
        snprintf(err, errlen, "unknown codec %d", codec);
        return NULL;
    }
    if (start > end) {
        snprintf(err, errlen, "%s: byte range %llu..%llu is empty", path, (unsigned long long)start,
                 (unsigned long long)end);
        return NULL;
    }
    if (codec != DP_CODEC_PLAIN && (start != 0 || end != UINT64_MAX)) {
        snprintf(err, errlen, "%s: a %s file is read whole, not as a byte range", path,
                 dp_codecs[codec].name);
        return NULL;
    }
    dp_source *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->path = path;
    s->codec = &dp_codecs[codec];
    s->f = fopen(path, "rb");
    if (!s->f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        free(s);
        return NULL;
    }
    if (start && fseeko(s->f, (off_t)start, SEEK_SET)) {
        snprintf(err, errlen, "%s: cannot seek to byte %llu: %s", path, (unsigned long long)start,
                 strerror(errno));
        fclose(s->f);
        free(s);
        return NULL;
    }
    s->remaining = end == UINT64_MAX ? UINT64_MAX : end - start;
    if (s->codec->open(s, err, errlen)) {
        dp_source_close(s);
        return NULL;
    }
    return s;
}

int dp_source_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err, size_t errlen) {
    return s->codec->read(s, dst, cap, got, err, errlen);
}

void dp_source_close(dp_source *s) {
    if (!s) return;
    s->codec->close(s);
    if (s->f) fclose(s->f);
    free(s->zin);
    free(s);
}
