/* Thread pool: nthreads-1 workers; a job is published by bumping a generation counter; pieces are
 * claimed with an atomic counter (dynamic scheduling); the caller works too and waits until every
 * worker has reported back.
 *
 * Waiting is spin-then-sleep on both sides. A model forward is a chain of short jobs (a recurrent
 * token of a 1.5B model is ~200 jobs of ~0.2 ms), and waking a sleeping thread costs tens of
 * microseconds on a VM (an inter-processor interrupt through the hypervisor), which measured as a
 * second thread that often joined late. So a worker that finished a job polls the generation for up
 * to `spin_ns` (RWKV5_SPIN_US, default 100 us) before it sleeps on the condition variable, and the
 * caller polls `pending` for as long before it sleeps. Between calls (Python code, sampling) the
 * workers are asleep after at most spin_ns; RWKV5_SPIN_US=0 gives pure sleeping.
 *
 * Invariants: `job_lock` is held by the caller for the whole of a job and for resizing, so at most
 * one job exists and the worker set never changes under a running job. The job fields are written
 * before the generation is bumped (release) and read after it is seen (acquire). */
#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256

typedef struct {
    pthread_mutex_t lock; /* with the condition variables, for sleeping and waking */
    pthread_cond_t wake;  /* workers sleep here until the generation changes */
    pthread_cond_t done;  /* the caller sleeps here until pending == 0 */
    pthread_t threads[MAX_THREADS];
    int n_workers;
    atomic_int stop;
    atomic_uint_fast64_t generation;
    atomic_int pending; /* workers that have not finished the current job */
    /* current job */
    rwkv5_range_fn fn;
    void *ctx;
    int64_t n, piece;
    atomic_int_fast64_t next; /* first index not yet claimed */
} pool_t;

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;
static pool_t pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};
static int configured = 0; /* under job_lock: has the pool been sized at least once */

static int64_t spin_ns =
    -1; /* read once from RWKV5_SPIN_US (under job_lock, before workers start) */

static void read_spin_setting(void) {
    if (spin_ns >= 0) return;
    const char *env = getenv("RWKV5_SPIN_US");
    long us = 100;
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 0 && v <= 100000) us = v;
    }
    spin_ns = (int64_t)us * 1000;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Poll until done(arg) or spin_ns have passed; returns done(arg). */
static int spin_until(int (*done)(uint64_t), uint64_t arg) {
    if (done(arg)) return 1;
    if (spin_ns <= 0) return 0;
    int64_t deadline = now_ns() + spin_ns;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            cpu_relax();
            if (done(arg)) return 1;
        }
        if (now_ns() > deadline) return done(arg);
    }
}

static int new_generation(uint64_t seen) {
    return atomic_load_explicit(&pool.generation, memory_order_acquire) != seen ||
           atomic_load_explicit(&pool.stop, memory_order_relaxed);
}
static int all_reported(uint64_t unused) {
    (void)unused;
    return atomic_load_explicit(&pool.pending, memory_order_acquire) == 0;
}

int rwkv5_available_cpus(void) {
#ifdef __linux__
    cpu_set_t set; /* the CPUs this process may run on (taskset, cgroups cpusets) */
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
 * a job published before the new thread first looks is not missed. */
static void *worker_main(void *arg) {
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    for (;;) {
        if (!spin_until(new_generation, seen)) {
            pthread_mutex_lock(
                &pool.lock); /* the publisher broadcasts under this lock: no lost wake */
            while (!new_generation(seen)) pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        if (atomic_load(&pool.stop)) break;
        seen = atomic_load_explicit(&pool.generation, memory_order_acquire);
        run_pieces();
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock); /* the caller may be asleep: wake it */
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

/* Both under job_lock. */
static void stop_workers(void) {
    pthread_mutex_lock(&pool.lock);
    atomic_store(&pool.stop, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.threads[i], NULL);
    pool.n_workers = 0;
    atomic_store(&pool.stop, 0);
}

static int start_workers(int n_threads) {
    int rc = 0;
    read_spin_setting();
    uintptr_t gen = (uintptr_t)atomic_load(&pool.generation);
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&pool.threads[i], NULL, worker_main, (void *)gen) != 0) {
            rc = -1;
            break;
        }
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
    atomic_store(&pool.stop, 0);
    atomic_store(&pool.pending, 0);
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
        pthread_mutex_unlock(&job_lock); /* inline: nothing shared is touched */
        fn(ctx, 0, n);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.piece = piece;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.pending, pool.n_workers);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_acq_rel); /* publish */
    pthread_mutex_lock(&pool.lock); /* wake the workers that went to sleep */
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_pieces();
    if (!spin_until(all_reported, 0)) {
        pthread_mutex_lock(&pool.lock);
        while (!all_reported(0)) pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
    }
    pthread_mutex_unlock(&job_lock);
}
