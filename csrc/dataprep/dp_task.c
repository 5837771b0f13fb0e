/* One data-prep task: read one input (or a byte range of one), cut it into documents, tokenize
 * them on N worker threads, and write the kept documents' tokens and metadata in input order.
 *
 * Threads: the calling thread reads, batches and writes; n_threads workers parse + tokenize.
 * Batches live in a ring of K slots and are written strictly in sequence order, so the output
 * bytes do not depend on the number of workers or on scheduling.
 *
 *   slot state:  FREE --(reader fills)--> FILLED --(a worker)--> DONE --(writer)--> FREE
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataprep/dataprep.h"

/* ------------------------------------------------------------------ line reader */

typedef struct {
    dp_source *src;
    uint8_t *buf;
    size_t cap, pos, len;
    int eof;
    int last_nl;     /* the last line returned ended with '\n' */
    uint64_t total;  /* bytes read from the source */
    uint64_t lineno; /* 1-based number of the last line returned */
} line_reader;

/* Next line without its '\n' (valid until the next call). Returns 1, 0 at end, -1 on error. */
static int next_line(line_reader *r, const uint8_t **line, size_t *n, char *err, size_t errlen) {
    for (;;) {
        uint8_t *nl = r->len > r->pos ? memchr(r->buf + r->pos, '\n', r->len - r->pos) : NULL;
        if (nl) {
            *line = r->buf + r->pos;
            *n = (size_t)(nl - (r->buf + r->pos));
            r->pos = (size_t)(nl - r->buf) + 1;
            r->lineno++;
            r->last_nl = 1;
            return 1;
        }
        if (r->eof) {
            if (r->pos < r->len) {
                *line = r->buf + r->pos;
                *n = r->len - r->pos;
                r->pos = r->len;
                r->lineno++;
                r->last_nl = 0;
                return 1;
            }
            return 0;
        }
        if (r->pos > 0) { /* keep the partial line at the front */
            memmove(r->buf, r->buf + r->pos, r->len - r->pos);
            r->len -= r->pos;
            r->pos = 0;
        }
        if (r->cap - r->len < (1u << 16)) { /* a long line: grow (bounded by the longest line) */
            size_t nc = r->cap * 2;
            uint8_t *nb = realloc(r->buf, nc);
            if (!nb) {
                snprintf(err, errlen, "out of memory (a line longer than %zu bytes)", r->cap);
                return -1;
            }
            r->buf = nb;
            r->cap = nc;
        }
        size_t got;
        if (dp_source_read(r->src, r->buf + r->len, r->cap - r->len, &got, err, errlen)) return -1;
        if (got == 0) r->eof = 1;
        r->len += got;
        r->total += got;
    }
}

/* ------------------------------------------------------------------ batches */

typedef struct {
    size_t off, len; /* the record's bytes in slot->raw */
    uint64_t line;   /* local 1-based line number */
    int status;
    char lang[64];
} item;

enum { FREE = 0, FILLED, WORKING, DONE };

typedef struct {
    int state;
    uint64_t seq;
    uint8_t *raw;
    size_t raw_len, raw_cap;
    item *items;
    size_t n_items, items_cap;
    uint16_t *tok;
    size_t tok_len, tok_cap;
    dp_doc_meta *meta;
    size_t n_meta, meta_cap;
    uint64_t repaired_docs;
    int oom;
} slot;

typedef struct {
    const dp_task_opts *opt;
    slot *slots;
    int k;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    uint64_t fill_seq, work_seq, write_seq;
    int stop;
} pipeline;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap && *p) return 0; /* a NULL buffer is allocated even for need 0: no NULL + 0 */
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np) return -1;
    *p = np;
    *cap = nc;
    return 0;
}

/* Parse, validate, tokenize every record of one slot (a worker, without the lock). */
static void process_slot(const dp_task_opts *opt, slot *s, uint8_t **scratch, size_t *scratch_cap) {
    const dp_record_format *fmt = &dp_record_formats[opt->record_format];
    s->tok_len = 0;
    s->n_meta = 0;
    s->repaired_docs = 0;
    for (size_t i = 0; i < s->n_items; i++) {
        item *it = &s->items[i];
        /* decoded/repaired text never exceeds 3x its source; valid plain text needs no copy */
        size_t need = (fmt->json || opt->repair_utf8) ? 3 * it->len + 1 : 1, tlen = 0;
        uint64_t nrep = 0, line_add = 0;
        if (grow((void **)scratch, scratch_cap, need, 1)) {
            s->oom = 1;
            return;
        }
        it->lang[0] = 0;
        const uint8_t *text = NULL;
        int script = 0;
        it->status = fmt->text(opt, s->raw + it->off, it->len, *scratch, &text, &tlen, it->lang,
                               &nrep, &script, &line_add);
        it->line += line_add;
        if (opt->lang) snprintf(it->lang, sizeof it->lang, "%s", opt->lang);
        if (it->status == DP_OK && tlen == 0) it->status = DP_EMPTY;
        if (it->status != DP_OK) continue;
        if (grow((void **)&s->tok, &s->tok_cap, s->tok_len + tlen + 1, sizeof(uint16_t)) ||
            grow((void **)&s->meta, &s->meta_cap, s->n_meta + 1, sizeof(dp_doc_meta))) {
            s->oom = 1;
            return;
        }
        size_t n = opt->encode(opt->encode_ctx, text, tlen, s->tok + s->tok_len);
        s->tok[s->tok_len + n] = 0; /* end of document */
        s->tok_len += n + 1;
        dp_doc_meta *m = &s->meta[s->n_meta];
        memset(m, 0, sizeof *m);
        m->n_bytes = tlen;
        dp_hash128(text, tlen, m->hash);
        m->n_tokens = (uint32_t)(n + 1);
        m->script = (uint8_t)script;
        m->repaired = nrep > 0;
        s->repaired_docs += nrep > 0;
        m->lang = (uint16_t)i; /* item index for now; the writer maps it to the language id */
        s->n_meta++;
    }
}

typedef struct {
    pipeline *pl;
} worker_arg;

static void *worker_main(void *arg) {
    pipeline *pl = ((worker_arg *)arg)->pl;
    uint8_t *scratch = NULL;
    size_t scratch_cap = 0;
    pthread_mutex_lock(&pl->mu);
    for (;;) {
        while (!pl->stop && pl->work_seq >= pl->fill_seq) pthread_cond_wait(&pl->work_cv, &pl->mu);
        if (pl->stop && pl->work_seq >= pl->fill_seq) break;
        if (pl->stop) break;
        slot *s = &pl->slots[pl->work_seq % (uint64_t)pl->k];
        pl->work_seq++;
        s->state = WORKING;
        pthread_mutex_unlock(&pl->mu);
        process_slot(pl->opt, s, &scratch, &scratch_cap);
        pthread_mutex_lock(&pl->mu);
        s->state = DONE;
        pthread_cond_broadcast(&pl->done_cv);
    }
    pthread_mutex_unlock(&pl->mu);
    free(scratch);
    return NULL;
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    FILE *tok, *meta;
    const dp_task_opts *opt;
    dp_task_result *res;
    int fail_status;
    uint64_t fail_line;
    int32_t *lang_slots;   /* open-addressing index of res->langs: slot -> id, -1 empty */
    size_t lang_slots_cap; /* a power of two, at least twice the ids held */
    int langs_cap;         /* rows allocated in res->langs */
} writer;

static uint64_t lang_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Insert id (whose name is res->langs[id]) into the index. */
static void lang_index_put(writer *w, int id) {
    size_t mask = w->lang_slots_cap - 1, i = (size_t)lang_hash(w->res->langs[id]) & mask;
    while (w->lang_slots[i] >= 0) i = (i + 1) & mask;
    w->lang_slots[i] = id;
}

/* Id of a language name in the task's table, adding it when new. The table holds up to
 * DP_MAX_LANGS - 1 names; beyond that every new name gets the last id, "(more languages)".
 * Returns -1 when out of memory. */
static int lang_id(writer *w, const char *lang) {
    dp_task_result *res = w->res;
    if (!w->lang_slots || (size_t)res->n_langs * 2 >= w->lang_slots_cap) { /* (re)build the index */
        size_t cap = w->lang_slots_cap ? 2 * w->lang_slots_cap : 1024;
        int32_t *slots = malloc(cap * sizeof *slots);
        if (!slots) return -1;
        free(w->lang_slots);
        w->lang_slots = slots;
        w->lang_slots_cap = cap;
        for (size_t i = 0; i < cap; i++) slots[i] = -1;
        for (int id = 0; id < res->n_langs; id++) lang_index_put(w, id);
    }
    size_t mask = w->lang_slots_cap - 1;
    for (size_t i = (size_t)lang_hash(lang) & mask; w->lang_slots[i] >= 0; i = (i + 1) & mask)
        if (strcmp(res->langs[w->lang_slots[i]], lang) == 0) return w->lang_slots[i];
    if (res->n_langs >= DP_MAX_LANGS - 1) lang = "(more languages)";
    if (res->n_langs == DP_MAX_LANGS) return DP_MAX_LANGS - 1;
    if (res->n_langs == w->langs_cap) {
        int cap = 2 * w->langs_cap;
        char(*grown)[DP_LANG_MAX + 1] = realloc(res->langs, (size_t)cap * sizeof *grown);
        if (!grown) return -1;
        res->langs = grown;
        w->langs_cap = cap;
    }
    snprintf(res->langs[res->n_langs], DP_LANG_MAX + 1, "%s", lang);
    lang_index_put(w, res->n_langs);
    return res->n_langs++;
}

static int write_all(FILE *f, const void *p, size_t n, const char *path, char *err, size_t errlen) {
    if (n && fwrite(p, 1, n, f) != n) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno ? errno : EIO));
        return -1;
    }
    return 0;
}

/* Write one finished slot. Returns 0, or -1 (error in res->err, or a bad record in fail-fast mode).
 */
static int write_slot(writer *w, slot *s) {
    dp_task_result *res = w->res;
    if (s->oom) {
        snprintf(res->err, sizeof res->err, "out of memory while tokenizing");
        return -1;
    }
    for (size_t i = 0; i < s->n_items; i++) {
        item *it = &s->items[i];
        if (it->status == DP_OK) continue;
        if (w->opt->fail_fast && it->status != DP_EMPTY) {
            w->fail_status = it->status;
            w->fail_line = it->line;
            if (it->status == DP_MISSING_FIELD) { /* say what was looked for and what is there */
                char keys[320];
                size_t nk = dp_json_keys(s->raw + it->off, it->len, keys, sizeof keys);
                snprintf(res->err, sizeof res->err,
                         "%s:%llu: %s: no member \"%.100s\" (the record has %s%s)", w->opt->path,
                         (unsigned long long)it->line, dp_status_names[it->status],
                         w->opt->text_field, nk ? "" : "no members", keys);
            } else {
                snprintf(res->err, sizeof res->err, "%s:%llu: %s", w->opt->path,
                         (unsigned long long)it->line, dp_status_names[it->status]);
            }
            return -1;
        }
        res->skipped[it->status]++;
        if (res->n_listed < DP_MAX_LISTED) {
            res->listed_line[res->n_listed] = it->line;
            res->listed_status[res->n_listed] = it->status;
            res->n_listed++;
        }
    }
    for (size_t j = 0; j < s->n_meta; j++) {
        dp_doc_meta *m = &s->meta[j];
        int id = lang_id(w, s->items[m->lang].lang);
        if (id < 0) {
            snprintf(res->err, sizeof res->err, "out of memory (language table)");
            return -1;
        }
        m->lang = (uint16_t)id;
        res->docs++;
        res->tokens += m->n_tokens;
        res->text_bytes += m->n_bytes;
    }
    res->repaired_docs += s->repaired_docs;
    if (write_all(w->tok, s->tok, s->tok_len * sizeof(uint16_t), w->opt->tok_path, res->err,
                  sizeof res->err))
        return -1;
    if (write_all(w->meta, s->meta, s->n_meta * sizeof(dp_doc_meta), w->opt->meta_path, res->err,
                  sizeof res->err))
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ the task */

static int close_file(FILE **f, int sync, const char *path, char *err, size_t errlen) {
    int bad = fflush(*f) != 0 || ferror(*f);
    int e = errno;
    if (!bad && sync && fsync(fileno(*f)) != 0 && errno != EINVAL) {
        bad = 1;
        e = errno;
    }
    if (fclose(*f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    *f = NULL;
    if (bad) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(e ? e : EIO));
        return -1;
    }
    return 0;
}

/* Hand the slot being filled to the workers; get the next free one (writing finished slots in
 * order while waiting). */
static int submit_and_next(pipeline *pl, writer *w, slot **cur) {
    int rc = 0;
    pthread_mutex_lock(&pl->mu);
    if (*cur) {
        (*cur)->state = FILLED;
        pl->fill_seq++;
        pthread_cond_signal(&pl->work_cv);
    }
    *cur = NULL;
    for (;;) {
        /* write whatever is done, in order */
        while (pl->write_seq < pl->fill_seq &&
               pl->slots[pl->write_seq % (uint64_t)pl->k].state == DONE) {
            slot *s = &pl->slots[pl->write_seq % (uint64_t)pl->k];
            pthread_mutex_unlock(&pl->mu);
            rc = write_slot(w, s);
            pthread_mutex_lock(&pl->mu);
            s->state = FREE;
            pl->write_seq++;
            if (rc) goto out;
        }
        if (pl->fill_seq - pl->write_seq < (uint64_t)pl->k) break;
        pthread_cond_wait(&pl->done_cv, &pl->mu);
    }
    slot *s = &pl->slots[pl->fill_seq % (uint64_t)pl->k];
    s->seq = pl->fill_seq;
    s->raw_len = 0;
    s->n_items = 0;
    s->oom = 0;
    *cur = s;
out:
    pthread_mutex_unlock(&pl->mu);
    return rc;
}

static int drain(pipeline *pl, writer *w) {
    int rc = 0;
    pthread_mutex_lock(&pl->mu);
    while (pl->write_seq < pl->fill_seq) {
        slot *s = &pl->slots[pl->write_seq % (uint64_t)pl->k];
        if (s->state != DONE) {
            pthread_cond_wait(&pl->done_cv, &pl->mu);
            continue;
        }
        pthread_mutex_unlock(&pl->mu);
        rc = write_slot(w, s);
        pthread_mutex_lock(&pl->mu);
        s->state = FREE;
        pl->write_seq++;
        if (rc) break;
    }
    pthread_mutex_unlock(&pl->mu);
    return rc;
}

static int add_item(slot *s, const uint8_t *p, size_t n, uint64_t line) {
    if (grow((void **)&s->raw, &s->raw_cap, s->raw_len + n, 1) ||
        grow((void **)&s->items, &s->items_cap, s->n_items + 1, sizeof(item)))
        return -1;
    memcpy(s->raw + s->raw_len, p, n);
    item *it = &s->items[s->n_items++];
    it->off = s->raw_len;
    it->len = n;
    it->line = line;
    it->status = DP_OK;
    s->raw_len += n;
    return 0;
}

static int is_blank(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') return 0;
    return 1;
}

/* ------------------------------------------------------------------ record formats */

struct dp_records {
    slot *cur;     /* the batch records go to */
    uint8_t *para; /* text formats: the document being assembled */
    size_t para_len, para_cap;
    uint64_t para_line;   /* its first line */
    uint64_t blank_lines; /* JSONL: whitespace-only lines */
};

/* JSON lines: each non-blank line is one record. */
static int jsonl_line(dp_records *r, const uint8_t *line, size_t n, uint64_t lineno) {
    if (is_blank(line, n)) {
        r->blank_lines++;
        return 0;
    }
    return add_item(r->cur, line, n, lineno);
}

static int jsonl_end(dp_records *r, int last_nl) {
    (void)r;
    (void)last_nl;
    return 0;
}

static int jsonl_text(const dp_task_opts *opt, const uint8_t *rec, size_t n, uint8_t *scratch,
                      const uint8_t **text, size_t *text_len, char *lang, uint64_t *n_repaired,
                      int *script, uint64_t *line_add) {
    *text = scratch;
    *line_add = 0;
    return dp_json_extract(rec, n, opt->text_field, opt->lang_field, opt->repair_utf8, scratch,
                           text_len, lang, n_repaired, script);
}

static int para_append(dp_records *r, const uint8_t *line, size_t n, int sep) {
    if (grow((void **)&r->para, &r->para_cap, r->para_len + n + 1, 1)) return -1;
    if (sep) r->para[r->para_len++] = '\n';
    memcpy(r->para + r->para_len, line, n);
    r->para_len += n;
    return 0;
}

/* A text file: the whole file is one document; lines are re-joined with the '\n' they had. */
static int txt_file_line(dp_records *r, const uint8_t *line, size_t n, uint64_t lineno) {
    r->para_line = 1;
    return para_append(r, line, n, lineno > 1);
}

static int txt_file_end(dp_records *r, int last_nl) {
    /* keep the file's final newline: the document is the file as it is */
    if (last_nl && para_append(r, (const uint8_t *)"", 0, 1)) return -1;
    return add_item(r->cur, r->para ? r->para : (const uint8_t *)"", r->para_len, 1);
}

/* Blank-line-separated blocks: lines joined with '\n', a CR before the '\n' dropped. */
static int txt_blank_line(dp_records *r, const uint8_t *line, size_t n, uint64_t lineno) {
    if (n && line[n - 1] == '\r') n--;
    if (is_blank(line, n)) {
        if (r->para_len && add_item(r->cur, r->para, r->para_len, r->para_line)) return -1;
        r->para_len = 0;
        return 0;
    }
    if (!r->para_len) r->para_line = lineno;
    return para_append(r, line, n, r->para_len > 0);
}

static int txt_blank_end(dp_records *r, int last_nl) {
    (void)last_nl;
    return r->para_len ? add_item(r->cur, r->para, r->para_len, r->para_line) : 0;
}

/* Plain text: tokenized in place when valid UTF-8, else repaired into scratch (or reported at the
 * line holding the first invalid byte). */
static int txt_text(const dp_task_opts *opt, const uint8_t *rec, size_t n, uint8_t *scratch,
                    const uint8_t **text, size_t *text_len, char *lang, uint64_t *n_repaired,
                    int *script, uint64_t *line_add) {
    (void)lang;
    *text = rec;
    *text_len = n;
    *line_add = 0;
    *script = dp_text_scan(rec, n);
    if (*script >= 0) return DP_OK;
    if (opt->repair_utf8) {
        *text_len = dp_utf8_copy(scratch, rec, n, 1, n_repaired);
        *text = scratch;
        *script = dp_text_scan(scratch, *text_len);
        return DP_OK;
    }
    /* the record's lines were joined with one '\n' each: count those before the bad byte */
    size_t off = 0, sub;
    while (off < n) {
        int k = dp_utf8_seq(rec + off, n - off, &sub);
        if (!k) break;
        off += (size_t)k;
    }
    for (size_t b = 0; b < off; b++) *line_add += rec[b] == '\n';
    *script = 0;
    return DP_INVALID_UTF8;
}

const dp_record_format dp_record_formats[DP_N_RECORD_FORMATS] = {
    [DP_REC_JSONL] = {"jsonl", 1, 1, jsonl_line, jsonl_end, jsonl_text},
    [DP_REC_TXT_FILE] = {"txt-file", 0, 0, txt_file_line, txt_file_end, txt_text},
    [DP_REC_TXT_BLANK] = {"txt-blank", 0, 0, txt_blank_line, txt_blank_end, txt_text},
};

void dp_task_result_free(dp_task_result *res) {
    free(res->langs);
    res->langs = NULL;
}

int dp_run_task(const dp_task_opts *opt, dp_task_result *res) {
    pipeline pl;
    writer w;
    line_reader rd;
    dp_records recs;
    pthread_t *threads = NULL;
    worker_arg warg;
    int n_started = 0, rc = -1, sync_ok = 0;
    size_t batch = opt->batch_bytes ? opt->batch_bytes : (1u << 20);
    const dp_record_format *fmt = NULL;

    memset(res, 0, sizeof *res);
    memset(&pl, 0, sizeof pl);
    memset(&w, 0, sizeof w);
    memset(&rd, 0, sizeof rd);
    memset(&recs, 0, sizeof recs);
    w.langs_cap = 64;
    res->langs = calloc((size_t)w.langs_cap, sizeof *res->langs);
    if (!res->langs) {
        snprintf(res->err, sizeof res->err, "out of memory");
        return -1;
    }
    res->n_langs = 1; /* id 0 = no language */
    if (opt->n_threads < 1 || opt->n_threads > 1024) {
        snprintf(res->err, sizeof res->err, "n_threads must be in 1..1024, got %d", opt->n_threads);
        return -1;
    }
    if (opt->record_format < 0 || opt->record_format >= DP_N_RECORD_FORMATS) {
        snprintf(res->err, sizeof res->err, "unknown record format %d", opt->record_format);
        return -1;
    }
    if (opt->codec < 0 || opt->codec >= DP_N_CODECS) {
        snprintf(res->err, sizeof res->err, "unknown codec %d", opt->codec);
        return -1;
    }
    fmt = &dp_record_formats[opt->record_format];
    if (fmt->json && (!opt->text_field || !opt->text_field[0])) {
        snprintf(res->err, sizeof res->err, "text_field must be a non-empty string");
        return -1;
    }

    w.opt = opt;
    w.res = res;
    w.tok = fopen(opt->tok_path, "wb");
    if (!w.tok) {
        snprintf(res->err, sizeof res->err, "%s: cannot create: %s", opt->tok_path,
                 strerror(errno));
        goto done;
    }
    w.meta = fopen(opt->meta_path, "wb");
    if (!w.meta) {
        snprintf(res->err, sizeof res->err, "%s: cannot create: %s", opt->meta_path,
                 strerror(errno));
        goto done;
    }
    rd.src = dp_source_open(opt->path, opt->codec, opt->start, opt->end, res->err, sizeof res->err);
    if (!rd.src) goto done;
    rd.cap = 1u << 20;
    rd.buf = malloc(rd.cap);
    if (!rd.buf) {
        snprintf(res->err, sizeof res->err, "out of memory");
        goto done;
    }

    pl.opt = opt;
    pl.k = 2 * opt->n_threads + 2;
    pl.slots = calloc((size_t)pl.k, sizeof(slot));
    threads = calloc((size_t)opt->n_threads, sizeof(pthread_t));
    if (!pl.slots || !threads) {
        snprintf(res->err, sizeof res->err, "out of memory");
        goto done;
    }
    pthread_mutex_init(&pl.mu, NULL);
    pthread_cond_init(&pl.work_cv, NULL);
    pthread_cond_init(&pl.done_cv, NULL);
    sync_ok = 1;
    warg.pl = &pl;
    for (; n_started < opt->n_threads; n_started++)
        if (pthread_create(&threads[n_started], NULL, worker_main, &warg)) {
            snprintf(res->err, sizeof res->err, "cannot start worker thread");
            goto done;
        }

    if (submit_and_next(&pl, &w, &recs.cur)) goto done;
    const uint8_t *line;
    size_t n;
    int got;
    while ((got = next_line(&rd, &line, &n, res->err, sizeof res->err)) == 1) {
        if (opt->cancel && *opt->cancel) {
            snprintf(res->err, sizeof res->err, "cancelled");
            goto done;
        }
        res->lines++;
        if (rd.lineno == 1 && opt->start == 0 && n >= 3 && line[0] == 0xEF && line[1] == 0xBB &&
            line[2] == 0xBF) {
            line += 3; /* UTF-8 byte order mark */
            n -= 3;
        }
        if (fmt->line(&recs, line, n, rd.lineno)) {
            snprintf(res->err, sizeof res->err, "out of memory");
            goto done;
        }
        if (recs.cur->raw_len >= batch || recs.cur->n_items >= 16384)
            if (submit_and_next(&pl, &w, &recs.cur)) goto done;
    }
    if (got < 0) goto done;
    res->input_bytes = rd.total;
    if (fmt->end(&recs, rd.last_nl)) {
        snprintf(res->err, sizeof res->err, "out of memory");
        goto done;
    }
    res->blank_lines = recs.blank_lines;
    if (recs.cur->n_items) {
        pthread_mutex_lock(&pl.mu);
        recs.cur->state = FILLED;
        pl.fill_seq++;
        pthread_cond_signal(&pl.work_cv);
        pthread_mutex_unlock(&pl.mu);
    }
    recs.cur = NULL;
    if (drain(&pl, &w)) goto done;
    if (close_file(&w.tok, opt->fsync, opt->tok_path, res->err, sizeof res->err)) goto done;
    if (close_file(&w.meta, opt->fsync, opt->meta_path, res->err, sizeof res->err)) goto done;
    rc = 0;

done:
    if (sync_ok) {
        pthread_mutex_lock(&pl.mu);
        pl.stop = 1;
        pthread_cond_broadcast(&pl.work_cv);
        pthread_mutex_unlock(&pl.mu);
    }
    for (int i = 0; i < n_started; i++) pthread_join(threads[i], NULL);
    if (sync_ok) {
        pthread_mutex_destroy(&pl.mu);
        pthread_cond_destroy(&pl.work_cv);
        pthread_cond_destroy(&pl.done_cv);
    }
    if (pl.slots)
        for (int i = 0; i < pl.k; i++) {
            free(pl.slots[i].raw);
            free(pl.slots[i].items);
            free(pl.slots[i].tok);
            free(pl.slots[i].meta);
        }
    free(pl.slots);
    free(w.lang_slots);
    free(threads);
    free(recs.para);
    free(rd.buf);
    dp_source_close(rd.src);
    if (w.tok) fclose(w.tok);
    if (w.meta) fclose(w.meta);
    return rc;
}

/* ------------------------------------------------------------------ copy ranges */

/* Sources are opened as ranges reach them and kept in a small direct-mapped table of at most
 * DP_COPY_OPEN descriptors (slot = source index % DP_COPY_OPEN), so any number of sources works
 * under a low `ulimit -n`: ranges that walk the sources in order open each one once; shuffled
 * ranges reopen a source only when another one took its slot. */
#define DP_COPY_OPEN 32

int dp_copy_ranges(int out_fd, const char *const *src_paths, int n_src, const int64_t *ranges,
                   size_t k, char *err, size_t errlen) {
    int fds[DP_COPY_OPEN],
        owner[DP_COPY_OPEN]; /* owner[slot]: source index whose fd sits there, -1 none */
    size_t bufcap = 1u << 20;
    uint8_t *buf = malloc(bufcap);
    int rc = -1;
    for (int i = 0; i < DP_COPY_OPEN; i++) {
        fds[i] = -1;
        owner[i] = -1;
    }
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (size_t r = 0; r < k; r++) {
        int64_t si = ranges[3 * r], off = ranges[3 * r + 1], len = ranges[3 * r + 2];
        if (si < 0 || si >= n_src || off < 0 || len < 0) {
            snprintf(err, errlen, "bad range row %zu", r);
            goto done;
        }
        int slot = (int)(si % DP_COPY_OPEN);
        if (owner[slot] != (int)si) {
            if (fds[slot] >= 0) close(fds[slot]);
            owner[slot] = -1;
            fds[slot] = open(src_paths[si], O_RDONLY | O_CLOEXEC);
            if (fds[slot] < 0) {
                snprintf(err, errlen, "%s: cannot open: %s", src_paths[si], strerror(errno));
                goto done;
            }
            owner[slot] = (int)si;
        }
        int in = fds[slot];
        /* in-kernel copy first (no trip through user space; a reflink on file systems that can) */
        {
            loff_t in_off = (loff_t)off;
            while (len > 0) {
                ssize_t c = copy_file_range(in, &in_off, out_fd, NULL, (size_t)len, 0);
                if (c <= 0)
                    break; /* unsupported here, or EOF: the read/write loop below takes over */
                len -= c;
                off += c;
            }
        }
        while (len > 0) {
            size_t want = (size_t)len < bufcap ? (size_t)len : bufcap;
            ssize_t got = pread(in, buf, want, (off_t)off);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) {
                snprintf(err, errlen, "%s: short read at byte %lld%s%s", src_paths[si],
                         (long long)off, got < 0 ? ": " : "", got < 0 ? strerror(errno) : "");
                goto done;
            }
            size_t done_w = 0;
            while (done_w < (size_t)got) {
                ssize_t wr = write(out_fd, buf + done_w, (size_t)got - done_w);
                if (wr < 0 && errno == EINTR) continue;
                if (wr <= 0) {
                    snprintf(err, errlen, "write failed: %s", strerror(wr < 0 ? errno : ENOSPC));
                    goto done;
                }
                done_w += (size_t)wr;
            }
            len -= (int64_t)got;
            off += (int64_t)got;
        }
    }
    rc = 0;
done:
    for (int i = 0; i < DP_COPY_OPEN; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(buf);
    return rc;
}
