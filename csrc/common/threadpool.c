/* Thread pool: nthreads-1 workers sleep on a condition variable; a job is published by bumping a
 * generation counter; pieces are claimed with an atomic counter (dynamic scheduling); the caller
 * works too and waits until every worker has reported back.
 *
 * Invariants: `job_lock` is held by the caller for the whole of a job and for resizing, so at most
 * one job exists and the worker set never changes under a running job. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 256

typedef struct {
    pthread_mutex_t lock;      /* protects everything below except `next` */
    pthread_cond_t wake;       /* workers wait here for a new generation */
    pthread_cond_t done;       /* the caller waits here for pending == 0 */
    pthread_t threads[MAX_THREADS];
    int n_workers;
    int stop;
    uint64_t generation;
    int pending;               /* workers that have not finished the current job */
    /* current job */
    rwkv5_range_fn fn;
    void *ctx;
    int64_t n, piece;
    atomic_int_fast64_t next;  /* first index not yet claimed */
} pool_t;

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;
static pool_t pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER,
};
static int configured = 0;     /* under job_lock: has the pool been sized at least once */

int rwkv5_available_cpus(void) {
#ifdef __linux__
    cpu_set_t set;   /* the CPUs this process may run on (taskset, cgroups cpusets) */
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void run_pieces(void) {
    for (;;) {
        int64_t b = atomic_fetch_add(&pool.next, pool.piece);
        if (b >= pool.n) break;
        int64_t e = b + pool.piece < pool.n ? b + pool.piece : pool.n;
        pool.fn(pool.ctx, b, e);
    }
}

/* arg: the generation current when the worker was created (no job runs while workers start), so
 * a job published before the new thread first takes the lock is not missed. */
static void *worker_main(void *arg) {
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.stop && pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        if (pool.stop) break;
        seen = pool.generation;
        pthread_mutex_unlock(&pool.lock);
        run_pieces();
        pthread_mutex_lock(&pool.lock);
        if (--pool.pending == 0) pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Both under job_lock. */
static void stop_workers(void) {
    pthread_mutex_lock(&pool.lock);
    pool.stop = 1;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.threads[i], NULL);
    pool.n_workers = 0;
    pool.stop = 0;
}

static int start_workers(int n_threads) {
    int rc = 0;
    pthread_mutex_lock(&pool.lock);
    uintptr_t gen = (uintptr_t)pool.generation;
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&pool.threads[i], NULL, worker_main, (void *)gen) != 0) { rc = -1; break; }
        pool.n_workers++;
    }
    return rc;
}

/* In a forked child only the forking thread exists: forget the parent's workers and locks. */
static void after_fork_child(void) {
    pthread_mutex_init(&job_lock, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.n_workers = 0;
    pool.stop = 0;
    pool.pending = 0;
    configured = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

static void configure_default(void) {
    pthread_once(&atfork_once, register_atfork);
    if (!configured) {
        int n = rwkv5_available_cpus();
        start_workers(n > MAX_THREADS ? MAX_THREADS : n);
        configured = 1;
    }
}

int rwkv5_set_num_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&job_lock);
    stop_workers();
    int rc = start_workers(n);
    configured = 1;
    pthread_mutex_unlock(&job_lock);
    return rc;
}

int rwkv5_get_num_threads(void) {
    pthread_mutex_lock(&job_lock);
    configure_default();
    int n = pool.n_workers + 1;
    pthread_mutex_unlock(&job_lock);
    return n;
}

void rwkv5_parallel_for(int64_t n, int64_t grain, rwkv5_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    pthread_mutex_lock(&job_lock);
    configure_default();
    int nt = pool.n_workers + 1;
    /* about 4 pieces per thread for balance, never below the grain */
    int64_t piece = (n + 4 * (int64_t)nt - 1) / (4 * (int64_t)nt);
    if (piece < grain) piece = grain;
    if (nt == 1 || piece >= n) {
        pthread_mutex_unlock(&job_lock);   /* inline: nothing shared is touched */
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&pool.lock);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.piece = piece;
    atomic_store(&pool.next, 0);
    pool.pending = pool.n_workers;
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_pieces();
    pthread_mutex_lock(&pool.lock);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&job_lock);
}
