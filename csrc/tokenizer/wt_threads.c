/* Multi-threaded encoding: many texts (wt_encode_batch) and one long text (wt_encode_parallel).
 * Threads are plain pthreads started per call; the calling thread is always one of the workers,
 * so a failed pthread_create only means fewer workers, never a failure or a different result. */
#include "tokenizer/wt_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define WT_MAX_THREADS 256

/* ---- batch: texts are handed out one at a time from a shared counter ---------------------- */

typedef struct {
    const wt_tokenizer *tok;
    size_t count;
    const uint8_t *const *texts;
    const size_t *lens;
    uint32_t *out;
    const size_t *out_off;
    size_t *n_out;
    atomic_size_t next;
} batch_job;

/* Texts are taken two at a time and walked together (wt_encode_pair): two independent chains
 * of loads per thread. */
static void *batch_worker(void *arg) {
    batch_job *job = arg;
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&job->next, 2, memory_order_relaxed);
        if (i >= job->count) break;
        if (i + 1 < job->count)
            wt_encode_pair(job->tok, job->texts[i], job->lens[i], job->out + job->out_off[i],
                           &job->n_out[i], job->texts[i + 1], job->lens[i + 1],
                           job->out + job->out_off[i + 1], &job->n_out[i + 1]);
        else
            job->n_out[i] =
                wt_encode(job->tok, job->texts[i], job->lens[i], job->out + job->out_off[i]);
    }
    return NULL;
}

int wt_encode_batch(const wt_tokenizer *tok, size_t count, const uint8_t *const *texts,
                    const size_t *lens, uint32_t *out, const size_t *out_off, size_t *n_out,
                    int n_threads) {
    batch_job job = {tok, count, texts, lens, out, out_off, n_out, 0};
    if (n_threads > WT_MAX_THREADS) n_threads = WT_MAX_THREADS;
    if ((size_t)n_threads > count) n_threads = (int)count;
    pthread_t th[WT_MAX_THREADS];
    int started = 0;
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&th[started], NULL, batch_worker, &job) != 0) break;
        started++;
    }
    batch_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    return started + 1;
}

/* ---- batch in the background: the caller does other work (builds Python lists) meanwhile ---- */

struct wt_batch_run {
    batch_job job;
    pthread_t th[WT_MAX_THREADS];
    int started;
};

wt_batch_run *wt_encode_batch_start(const wt_tokenizer *tok, size_t count,
                                    const uint8_t *const *texts, const size_t *lens, uint32_t *out,
                                    const size_t *out_off, size_t *n_out, int n_threads) {
    wt_batch_run *r = malloc(sizeof *r);
    if (!r) return NULL;
    r->job = (batch_job){tok, count, texts, lens, out, out_off, n_out, 0};
    if (n_threads < 1) n_threads = 1;
    if (n_threads > WT_MAX_THREADS) n_threads = WT_MAX_THREADS;
    if ((size_t)n_threads > count) n_threads = count ? (int)count : 1;
    r->started = 0;
    for (int i = 0; i < n_threads; i++) {
        if (pthread_create(&r->th[r->started], NULL, batch_worker, &r->job) != 0) break;
        r->started++;
    }
    if (r->started == 0) {
        free(r);
        return NULL;
    }
    return r;
}

void wt_encode_batch_wait(wt_batch_run *r) {
    if (!r) return;
    for (int i = 0; i < r->started; i++) pthread_join(r->th[i], NULL);
    free(r);
}

/* ---- one long text: encode pieces concurrently, then re-join at a shared token start ------ */

typedef struct {
    const wt_tokenizer *tok;
    const uint8_t *text;
    size_t n, start, stop; /* this piece: tokens that start in [start, stop) */
    uint32_t *out;         /* = final out + start: a piece has at most stop - start tokens */
    size_t count, end;     /* results: number of tokens, end of the last one */
} piece_job;

static void *piece_worker(void *arg) {
    piece_job *j = arg;
    j->count = wt_encode_span(j->tok, j->text, j->n, j->start, j->stop, j->out, &j->end);
    return NULL;
}

/* Tokens of piece k are correct only once the true (from-zero) encoding reaches one of its
 * token starts. The join below walks the true encoding forward from where it stands (r), one
 * token at a time into `tmp`, until r equals a token start of the piece; from there on the
 * piece's tokens are the true ones. Invariant: out[0..w) ++ tmp[0..f) is the true encoding of
 * text[0..r). Moves never overwrite a later piece: the true tokens that start before stop_k
 * number at most stop_k = start_{k+1}. */
size_t wt_encode_parallel(const wt_tokenizer *tok, const uint8_t *text, size_t n, uint32_t *out,
                          int n_threads) {
    /* Below ~256 KiB per thread the start-up cost outweighs the work. */
    size_t max_pieces = n / (256u << 10);
    if (n_threads > WT_MAX_THREADS) n_threads = WT_MAX_THREADS;
    if ((size_t)n_threads > max_pieces) n_threads = (int)max_pieces;
    if (n_threads <= 1) return wt_encode(tok, text, n, out);

    piece_job jobs[WT_MAX_THREADS];
    pthread_t th[WT_MAX_THREADS];
    int created[WT_MAX_THREADS];
    int T = n_threads;
    for (int k = 0; k < T; k++) {
        size_t a = n / T * k, b = k == T - 1 ? n : n / T * (k + 1);
        jobs[k] = (piece_job){tok, text, n, a, b, out + a, 0, 0};
    }
    for (int k = 1; k < T; k++)
        created[k] = pthread_create(&th[k], NULL, piece_worker, &jobs[k]) == 0;
    piece_worker(&jobs[0]);
    for (int k = 1; k < T; k++) {
        if (created[k])
            pthread_join(th[k], NULL);
        else
            piece_worker(&jobs[k]);
    }

    size_t cap = 4096, f = 0, w = jobs[0].count, r = jobs[0].end;
    uint32_t *tmp = malloc(cap * sizeof *tmp);
    if (!tmp) return (size_t)-1;
    for (int k = 1; k < T; k++) {
        const piece_job *j = &jobs[k];
        if (r >= j->end) continue; /* the true encoding already passed this whole piece */
        const uint32_t *seg = out + j->start;
        size_t i = 0, b = j->start; /* b: start of the piece's token i */
        for (;;) {
            while (i < j->count && b < r) {
                size_t len;
                wt_token_bytes(tok, seg[i++], &len);
                b += len;
            }
            if (b == r) { /* synchronised: piece tokens i.. are the true ones */
                memmove(out + w + f, seg + i, (j->count - i) * sizeof *out);
                memcpy(out + w, tmp, f * sizeof *out);
                w += f + (j->count - i);
                f = 0;
                r = j->end;
                break;
            }
            if (b < r) break; /* ran past the piece without meeting: carry tmp to the next piece */
            if (f == cap) {
                uint32_t *nt = realloc(tmp, 2 * cap * sizeof *tmp);
                if (!nt) {
                    free(tmp);
                    return (size_t)-1;
                }
                tmp = nt;
                cap *= 2;
            }
            size_t e;
            wt_encode_span(tok, text, n, r, r + 1, tmp + f, &e); /* exactly one token */
            f++;
            r = e;
        }
    }
    memcpy(out + w, tmp, f * sizeof *out);
    w += f;
    free(tmp);
    return w;
}
