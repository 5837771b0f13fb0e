/* Codecs: how an input file's bytes are stored. Each is a row of dp_codecs (name, suffix, magic,
 * open/read/close); dp_source_* run whichever a task names. Errors name the file and the byte
 * offset in the (compressed) file where the damaged unit begins or where the file ends. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "dataprep/dataprep.h"

struct dp_source {
    const char *path;
    const dp_codec *codec;
    FILE *f;
    uint64_t remaining;     /* plain: bytes left in the range */
    /* compressed input, shared by the decoders */
    uint8_t *zin;
    size_t zin_cap, zin_len, zin_pos;
    uint64_t zin_off;       /* file offset of zin[0] */
    int file_eof;
    uint64_t unit_start;    /* file offset where the current frame / member / stream began */
    int in_unit;            /* a unit has begun and not ended */
    void *state;            /* the decoder's own state */
};

/* Refill zin when it is used up. 0, or -1 with err (read error). */
static int fill_input(dp_source *s, char *err, size_t errlen) {
    if (s->zin_pos < s->zin_len || s->file_eof) return 0;
    s->zin_off += s->zin_len;
    s->zin_len = fread(s->zin, 1, s->zin_cap, s->f);
    s->zin_pos = 0;
    if (s->zin_len < s->zin_cap) {
        if (ferror(s->f)) { snprintf(err, errlen, "%s: read error: %s", s->path, strerror(errno)); return -1; }
        if (s->zin_len == 0) s->file_eof = 1;
    }
    return 0;
}

static int alloc_input(dp_source *s, size_t cap, char *err, size_t errlen) {
    s->zin_cap = cap;
    s->zin = malloc(cap);
    if (!s->zin) { snprintf(err, errlen, "out of memory"); return -1; }
    return 0;
}

/* The end of the compressed file: an error when it is empty or ends inside a unit. */
static int check_end(dp_source *s, const char *what, const char *unit, char *err, size_t errlen) {
    if (s->zin_off == 0) {
        snprintf(err, errlen, "%s: 0 bytes, not a %s stream (it holds no %s)", s->path, what, unit);
        return -1;
    }
    if (s->in_unit) {
        snprintf(err, errlen, "%s: truncated %s %s starting at byte offset %llu (the file ends at byte %llu)",
                 s->path, what, unit, (unsigned long long)s->unit_start, (unsigned long long)s->zin_off);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ plain */

static int plain_open(dp_source *s, char *err, size_t errlen) { (void)s; (void)err; (void)errlen; return 0; }

static int plain_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err, size_t errlen) {
    size_t want = cap;
    if (s->remaining < want) want = (size_t)s->remaining;
    *got = 0;
    if (want == 0) return 0;
    size_t k = fread(dst, 1, want, s->f);
    if (k < want && ferror(s->f)) { snprintf(err, errlen, "%s: read error: %s", s->path, strerror(errno)); return -1; }
    s->remaining -= k;
    if (k == 0) s->remaining = 0;
    *got = k;
    return 0;
}

static void plain_close(dp_source *s) { (void)s; }

/* ------------------------------------------------------------------ zstd (frames, one after another) */

static int zstd_open(dp_source *s, char *err, size_t errlen) {
    s->state = ZSTD_createDCtx();
    if (!s->state) { snprintf(err, errlen, "out of memory"); return -1; }
    return alloc_input(s, ZSTD_DStreamInSize(), err, errlen);
}

static int zstd_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err, size_t errlen) {
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
        if (!s->in_unit) { s->unit_start = s->zin_off + s->zin_pos; s->in_unit = 1; }
        ZSTD_inBuffer in = {s->zin, s->zin_len, s->zin_pos};
        size_t ret = ZSTD_decompressStream(s->state, &out, &in);
        if (ZSTD_isError(ret)) {
            snprintf(err, errlen, "%s: corrupt zstd data (%s) in the frame starting at byte offset %llu", s->path,
                     ZSTD_getErrorName(ret), (unsigned long long)s->unit_start);
            return -1;
        }
        s->zin_pos = in.pos;
        if (ret == 0) s->in_unit = 0; /* a frame ended; the next starts at the next byte */
        if (out.pos == out.size) { *got = out.pos; return 0; }
        if (out.pos > 0 && s->zin_pos == s->zin_len) { *got = out.pos; return 0; }
    }
}

static void zstd_close(dp_source *s) { ZSTD_freeDCtx(s->state); }

/* ------------------------------------------------------------------ the table */

const dp_codec dp_codecs[DP_N_CODECS] = {
    [DP_CODEC_PLAIN] = {"plain", "", "", 0, plain_open, plain_read, plain_close},
    [DP_CODEC_ZSTD] = {"zstd", ".zst", "\x28\xb5\x2f\xfd", 4, zstd_open, zstd_read, zstd_close},
};

int dp_codec_detect(const uint8_t *head, size_t n) {
    for (int c = 0; c < DP_N_CODECS; c++) {
        size_t m = dp_codecs[c].magic_len;
        if (m && n >= m && memcmp(head, dp_codecs[c].magic, m) == 0) return c;
    }
    return -1;
}

dp_source *dp_source_open(const char *path, int codec, uint64_t start, uint64_t end, char *err, size_t errlen) {
    if (codec < 0 || codec >= DP_N_CODECS) { snprintf(err, errlen, "unknown codec %d", codec); return NULL; }
    if (start > end) { snprintf(err, errlen, "%s: byte range %llu..%llu is empty", path, (unsigned long long)start, (unsigned long long)end); return NULL; }
    if (codec != DP_CODEC_PLAIN && (start != 0 || end != UINT64_MAX)) {
        snprintf(err, errlen, "%s: a %s file is read whole, not as a byte range", path, dp_codecs[codec].name);
        return NULL;
    }
    dp_source *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->path = path;
    s->codec = &dp_codecs[codec];
    s->f = fopen(path, "rb");
    if (!s->f) { snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno)); free(s); return NULL; }
    if (start && fseeko(s->f, (off_t)start, SEEK_SET)) {
        snprintf(err, errlen, "%s: cannot seek to byte %llu: %s", path, (unsigned long long)start, strerror(errno));
        fclose(s->f);
        free(s);
        return NULL;
    }
    s->remaining = end == UINT64_MAX ? UINT64_MAX : end - start;
    if (s->codec->open(s, err, errlen)) { dp_source_close(s); return NULL; }
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
