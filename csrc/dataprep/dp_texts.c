/* In-memory texts -> token and metadata parts: the path of inputs whose records are already cut
 * and decoded by another reader (Parquet and Arrow columns, Python iterables). The texts come as
 * one byte buffer and n+1 offsets (Arrow's string layout), so a batch of many documents costs one
 * call and no per-document object.
 *
 * Each text gets exactly what process_slot in dp_task.c gives a plain-text record: UTF-8 checked
 * (or repaired), empty texts skipped, tokens followed by a 0, a dp_doc_meta record. So the same
 * documents give the same bytes whichever reader produced them.
 *
 * Threads: the batch is cut into pieces of about 1 MiB handed out in order to n_threads workers;
 * the pieces are written in index order, so the output does not depend on the thread count.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataprep/dataprep.h"

typedef struct {
    size_t a, b; /* texts [a, b) */
    uint16_t *tok;
    size_t n_tok;
    dp_doc_meta *meta;
    size_t n_meta;
    uint64_t repaired;
    int oom;
} piece;

typedef struct {
    const dp_texts_opts *o;
    uint8_t *status;
    piece *pieces;
    size_t n_pieces, next;
    pthread_mutex_t mu;
} texts_job;

static void encode_piece(const dp_texts_opts *o, uint8_t *status, piece *p, uint8_t **scratch,
                         size_t *scap) {
    size_t max_tok = 0, n_ok = 0;
    for (size_t i = p->a; i < p->b; i++)
        if (status[i] == DP_OK) {
            /* ids never outnumber bytes; a repaired text is at most 3x its source */
            max_tok += (o->repair_utf8 ? 3 : 1) * (size_t)(o->offsets[i + 1] - o->offsets[i]) + 1;
            n_ok++;
        }
    p->tok = malloc((max_tok ? max_tok : 1) * sizeof *p->tok);
    p->meta = malloc((n_ok ? n_ok : 1) * sizeof *p->meta);
    if (!p->tok || !p->meta) {
        p->oom = 1;
        return;
    }
    for (size_t i = p->a; i < p->b; i++) {
        if (status[i] != DP_OK) continue;
        if (o->cancel && *o->cancel) {
            p->oom = 2;
            return;
        }
        const uint8_t *text = o->data + o->offsets[i];
        size_t tlen = (size_t)(o->offsets[i + 1] - o->offsets[i]);
        uint64_t nrep = 0;
        int script = dp_text_scan(text, tlen);
        if (script < 0) {
            if (!o->repair_utf8) {
                status[i] = DP_INVALID_UTF8;
                continue;
            }
            if (*scap < 3 * tlen + 1) {
                uint8_t *ns = realloc(*scratch, 3 * tlen + 1);
                if (!ns) {
                    p->oom = 1;
                    return;
                }
                *scratch = ns;
                *scap = 3 * tlen + 1;
            }
            tlen = dp_utf8_copy(*scratch, text, tlen, 1, &nrep);
            text = *scratch;
            script = dp_text_scan(text, tlen);
        }
        if (tlen == 0) {
            status[i] = DP_EMPTY;
            continue;
        }
        size_t n = o->encode(o->encode_ctx, text, tlen, p->tok + p->n_tok);
        p->tok[p->n_tok + n] = 0; /* end of document */
        p->n_tok += n + 1;
        dp_doc_meta *m = &p->meta[p->n_meta++];
        memset(m, 0, sizeof *m);
        m->n_bytes = tlen;
        dp_hash128(text, tlen, m->hash);
        m->n_tokens = (uint32_t)(n + 1);
        m->lang = o->lang ? o->lang[i] : 0;
        m->script = (uint8_t)script;
        m->repaired = nrep > 0;
        p->repaired += nrep > 0;
    }
}

static void *texts_worker(void *arg) {
    texts_job *j = arg;
    uint8_t *scratch = NULL;
    size_t scap = 0;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t k = j->next++;
        pthread_mutex_unlock(&j->mu);
        if (k >= j->n_pieces) break;
        encode_piece(j->o, j->status, &j->pieces[k], &scratch, &scap);
    }
    free(scratch);
    return NULL;
}

static int write_fd(int fd, const void *p, size_t n, char *err, size_t errlen) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            snprintf(err, errlen, "write failed: %s", strerror(w < 0 ? errno : ENOSPC));
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int dp_encode_texts(const dp_texts_opts *o, uint8_t *status, dp_texts_result *res, char *err,
                    size_t errlen) {
    memset(res, 0, sizeof *res);
    if (o->n_threads < 1 || o->n_threads > 1024) {
        snprintf(err, errlen, "n_threads must be in 1..1024, got %d", o->n_threads);
        return -1;
    }
    for (size_t i = 0; i < o->n; i++)
        if (o->offsets[i + 1] < o->offsets[i]) {
            snprintf(err, errlen, "offsets decrease at text %zu", i);
            return -1;
        }
    /* pieces of about 1 MiB of text (or 4096 texts), in order */
    size_t cap = 16, n_pieces = 0;
    piece *pieces = calloc(cap, sizeof *pieces);
    if (!pieces) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t a = 0; a < o->n;) {
        size_t b = a;
        while (b < o->n && b - a < 4096 && o->offsets[b] - o->offsets[a] < (1 << 20)) b++;
        if (n_pieces == cap) {
            piece *np = realloc(pieces, 2 * cap * sizeof *np);
            if (!np) {
                free(pieces);
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            memset(np + cap, 0, cap * sizeof *np);
            pieces = np;
            cap *= 2;
        }
        pieces[n_pieces].a = a;
        pieces[n_pieces].b = b;
        n_pieces++;
        a = b;
    }
    texts_job job = {o, status, pieces, n_pieces, 0, PTHREAD_MUTEX_INITIALIZER};
    int n_threads = o->n_threads < (int)n_pieces ? o->n_threads : (int)n_pieces;
    pthread_t th[1024];
    int started = 0, rc = -1;
    for (; started < n_threads - 1; started++)
        if (pthread_create(&th[started], NULL, texts_worker, &job)) break;
    texts_worker(&job); /* the calling thread works too */
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&job.mu);
    for (size_t k = 0; k < n_pieces; k++)
        if (pieces[k].oom) {
            snprintf(err, errlen,
                     pieces[k].oom == 2 ? "cancelled" : "out of memory while tokenizing");
            goto done;
        }
    for (size_t k = 0; k < n_pieces; k++) {
        piece *p = &pieces[k];
        if (write_fd(o->tok_fd, p->tok, p->n_tok * sizeof *p->tok, err, errlen)) goto done;
        if (write_fd(o->meta_fd, p->meta, p->n_meta * sizeof *p->meta, err, errlen)) goto done;
        res->docs += p->n_meta;
        res->tokens += p->n_tok;
        for (size_t m = 0; m < p->n_meta; m++) res->text_bytes += p->meta[m].n_bytes;
        res->repaired_docs += p->repaired;
    }
    rc = 0;
done:
    for (size_t k = 0; k < n_pieces; k++) {
        free(pieces[k].tok);
        free(pieces[k].meta);
    }
    free(pieces);
    return rc;
}
