/* Physical-limit probes for the benchmarks: memory read bandwidth and float32 FMA peak.
 *
 * Built at benchmark time by benchmarks/probes.py (`cc -O2 -shared -fPIC -pthread`) and called
 * through ctypes; it is not part of the rwkv5 package. No -march flag: the wide kernels are
 * compiled with __attribute__((target(...))) and chosen at run time with __builtin_cpu_supports,
 * with a scalar path for CPUs that have neither AVX2+FMA nor AVX-512F.
 *
 * ISA codes used by the interface: 0 = scalar, 1 = AVX2+FMA (256-bit), 2 = AVX-512F (512-bit).
 * Other CPUs (ARM64) get the portable probes only: probe_best_isa() is 0 there.
 */
#define _GNU_SOURCE
#include <errno.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PROBE_X86 1
#endif
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROBE_MAX_THREADS 256

/* Best ISA this CPU (and OS, via the cpuid/xgetbv checks GCC does) supports. */
int probe_best_isa(void)
{
#ifdef PROBE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- read kernels
 * Each returns the sum of x[0..n) (NumPy: np.sum(x)); the sum only keeps the loads alive.
 * Eight independent accumulators so the adds never wait on each other: the loop is limited by
 * the loads alone. x need not be aligned (unaligned wide loads cost nothing extra on a
 * cache-line-aligned stream, and the caller aligns the slices to 64 bytes). */

static float read_scalar(const float *x, size_t n)
{
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += x[i + 0]; a1 += x[i + 1]; a2 += x[i + 2]; a3 += x[i + 3];
        a4 += x[i + 4]; a5 += x[i + 5]; a6 += x[i + 6]; a7 += x[i + 7];
    }
    for (; i < n; i++)
        a0 += x[i];
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

#ifdef PROBE_X86
__attribute__((target("avx2,fma")))
static float read_avx2(const float *x, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {   /* 64 floats = 4 cache lines per iteration */
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i + 0));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
        a4 = _mm256_add_ps(a4, _mm256_loadu_ps(x + i + 32));
        a5 = _mm256_add_ps(a5, _mm256_loadu_ps(x + i + 40));
        a6 = _mm256_add_ps(a6, _mm256_loadu_ps(x + i + 48));
        a7 = _mm256_add_ps(a7, _mm256_loadu_ps(x + i + 56));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    float r = 0;
    for (int k = 0; k < 8; k++)
        r += lanes[k];
    return r + read_scalar(x + i, n - i);
}

__attribute__((target("avx512f")))
static float read_avx512(const float *x, size_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {  /* 128 floats = 8 cache lines per iteration */
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i + 0));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(x + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(x + i + 48));
        a4 = _mm512_add_ps(a4, _mm512_loadu_ps(x + i + 64));
        a5 = _mm512_add_ps(a5, _mm512_loadu_ps(x + i + 80));
        a6 = _mm512_add_ps(a6, _mm512_loadu_ps(x + i + 96));
        a7 = _mm512_add_ps(a7, _mm512_loadu_ps(x + i + 112));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    return _mm512_reduce_add_ps(s) + read_scalar(x + i, n - i);
}
#else   /* never chosen: probe_best_isa() is 0 */
#define read_avx2 read_scalar
#define read_avx512 read_scalar
#endif

/* ---------------------------------------------------------------- FMA kernels
 * acc_j = acc_j * a + b, repeated `iters` times on N_CHAINS independent registers: enough chains
 * to cover FMA latency (4-5 cycles) × throughput (2 per cycle), so the loop runs at the FMA
 * issue rate. a = 1 - 2^-20 and b small keep the values finite and normal. Flops counted:
 * 2 per lane per FMA. */
#define N_CHAINS 12

static float fma_scalar(long iters)
{
    float acc[N_CHAINS];
    for (int j = 0; j < N_CHAINS; j++)
        acc[j] = (float)j;
    const float a = 0.99999905f, b = 1e-3f;
    for (long it = 0; it < iters; it++)
        for (int j = 0; j < N_CHAINS; j++)
            acc[j] = acc[j] * a + b;
    float s = 0;
    for (int j = 0; j < N_CHAINS; j++)
        s += acc[j];
    return s;
}

#ifdef PROBE_X86
__attribute__((target("avx2,fma")))
static float fma_avx2(long iters)
{
    __m256 acc[N_CHAINS];
    for (int j = 0; j < N_CHAINS; j++)
        acc[j] = _mm256_set1_ps((float)j);
    const __m256 a = _mm256_set1_ps(0.99999905f), b = _mm256_set1_ps(1e-3f);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int j = 0; j < N_CHAINS; j++)
            acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    }
    __m256 s = acc[0];
    for (int j = 1; j < N_CHAINS; j++)
        s = _mm256_add_ps(s, acc[j]);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    float r = 0;
    for (int k = 0; k < 8; k++)
        r += lanes[k];
    return r;
}

__attribute__((target("avx512f")))
static float fma_avx512(long iters)
{
    __m512 acc[N_CHAINS];
    for (int j = 0; j < N_CHAINS; j++)
        acc[j] = _mm512_set1_ps((float)j);
    const __m512 a = _mm512_set1_ps(0.99999905f), b = _mm512_set1_ps(1e-3f);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int j = 0; j < N_CHAINS; j++)
            acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    }
    __m512 s = acc[0];
    for (int j = 1; j < N_CHAINS; j++)
        s = _mm512_add_ps(s, acc[j]);
    return _mm512_reduce_add_ps(s);
}
#else
#define fma_avx2 fma_scalar
#define fma_avx512 fma_scalar
#endif

static int lanes_of(int isa)
{
    return isa == 2 ? 16 : isa == 1 ? 8 : 1;
}

/* ---------------------------------------------------------------- threads
 * Every pass: all workers meet at a barrier, worker 0 reads the clock, each does its share,
 * all meet again, worker 0 reads the clock. The pass time is the slowest worker's; the best
 * (shortest) pass is reported. Worker k is pinned to CPU k mod ncpu when the OS allows it. */

typedef struct {
    int kind;               /* 0 = read, 1 = fma */
    int isa;
    int n_threads;
    int passes;
    const float *buf;       /* read: the whole buffer */
    size_t n;               /* read: floats in the buffer */
    long iters;             /* fma: iterations per pass per thread */
    pthread_barrier_t barrier;
    pthread_mutex_t gate_lock;  /* start gate: go = 1 run, -1 abort */
    pthread_cond_t gate;
    int go;
    double best;            /* shortest pass, seconds (written by worker 0) */
    volatile float sink[PROBE_MAX_THREADS];  /* keeps the results alive, one per worker */
} job_t;

typedef struct {
    job_t *job;
    int index;
} worker_arg_t;

static void *worker_main(void *p)
{
    worker_arg_t *wa = (worker_arg_t *)p;
    job_t *job = wa->job;
    int k = wa->index;

    pthread_mutex_lock(&job->gate_lock);
    while (job->go == 0)
        pthread_cond_wait(&job->gate, &job->gate_lock);
    int go = job->go;
    pthread_mutex_unlock(&job->gate_lock);
    if (go < 0)
        return NULL;

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)(k % ncpu), &set);
        (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  /* best effort */
    }

    /* This worker's slice of the buffer, its start rounded down to 16 floats (64 bytes). */
    size_t begin = 0, end = 0;
    if (job->kind == 0) {
        begin = (job->n * (size_t)k / (size_t)job->n_threads) & ~(size_t)15;
        end = k + 1 == job->n_threads ? job->n
                                      : (job->n * (size_t)(k + 1) / (size_t)job->n_threads) & ~(size_t)15;
    }
    float local = 0;
    for (int pass = 0; pass < job->passes; pass++) {
        double t0 = 0;
        pthread_barrier_wait(&job->barrier);
        if (k == 0)
            t0 = now_seconds();
        if (job->kind == 0) {
            const float *x = job->buf + begin;
            size_t n = end - begin;
            local += job->isa == 2 ? read_avx512(x, n) : job->isa == 1 ? read_avx2(x, n) : read_scalar(x, n);
        } else {
            local += job->isa == 2 ? fma_avx512(job->iters) : job->isa == 1 ? fma_avx2(job->iters)
                                                                            : fma_scalar(job->iters);
        }
        pthread_barrier_wait(&job->barrier);
        if (k == 0) {
            double dt = now_seconds() - t0;
            if (job->best <= 0 || dt < job->best)
                job->best = dt;
        }
    }
    job->sink[k] = local;   /* only there so the compiler keeps the work */
    return NULL;
}

/* Runs the job on n_threads new worker threads (the caller's thread keeps its CPU affinity);
 * returns 0 or EAGAIN.
 * Workers wait at a start gate until every thread exists, so a failed pthread_create can
 * still release (abort) the ones already started instead of leaving them at the barrier. */
static int run_job(job_t *job)
{
    pthread_t tids[PROBE_MAX_THREADS];
    worker_arg_t args[PROBE_MAX_THREADS];
    int started = 0;

    job->best = 0;
    job->go = 0;
    if (pthread_barrier_init(&job->barrier, NULL, (unsigned)job->n_threads) != 0)
        return EAGAIN;
    for (int k = 0; k < job->n_threads; k++) {
        args[k].job = job;
        args[k].index = k;
        if (pthread_create(&tids[k], NULL, worker_main, &args[k]) != 0)
            break;
        started++;
    }
    int ok = started == job->n_threads;
    pthread_mutex_lock(&job->gate_lock);
    job->go = ok ? 1 : -1;
    pthread_cond_broadcast(&job->gate);
    pthread_mutex_unlock(&job->gate_lock);
    for (int k = 0; k < started; k++)
        pthread_join(tids[k], NULL);
    pthread_barrier_destroy(&job->barrier);
    return ok ? 0 : EAGAIN;
}

/* The read kernel's result for buf[0..n) (NumPy: np.sum(buf)), to test the kernels themselves.
 * Returns NaN for bad arguments. */
double probe_read_sum(const float *buf, size_t n, int isa)
{
    if (buf == NULL || isa < 0 || isa > probe_best_isa())
        return __builtin_nan("");
    return isa == 2 ? read_avx512(buf, n) : isa == 1 ? read_avx2(buf, n) : read_scalar(buf, n);
}

/* Memory read bandwidth: `passes` full reads of buf[0..n) split over n_threads workers.
 * Returns the best pass in GB/s (1e9 bytes per second), or a negative errno on bad arguments. */
double probe_read_bw(const float *buf, size_t n, int n_threads, int passes, int isa)
{
    if (buf == NULL || n < 16 * (size_t)(n_threads > 0 ? n_threads : 1))
        return -EINVAL;
    if (n_threads < 1 || n_threads > PROBE_MAX_THREADS || passes < 1 || isa < 0 || isa > probe_best_isa())
        return -EINVAL;
    job_t job;
    memset(&job, 0, sizeof(job));
    pthread_mutex_init(&job.gate_lock, NULL);
    pthread_cond_init(&job.gate, NULL);
    job.kind = 0;
    job.isa = isa;
    job.n_threads = n_threads;
    job.passes = passes;
    job.buf = buf;
    job.n = n;
    int rc = run_job(&job);
    pthread_cond_destroy(&job.gate);
    pthread_mutex_destroy(&job.gate_lock);
    if (rc != 0)
        return -(double)rc;
    return (double)n * sizeof(float) / job.best / 1e9;
}

/* float32 FMA peak: each of n_threads workers runs `iters` iterations of N_CHAINS independent
 * vector FMAs per pass. Returns the best pass in GFLOP/s (all threads together), or -errno. */
double probe_fma_peak(int n_threads, long iters, int passes, int isa)
{
    if (n_threads < 1 || n_threads > PROBE_MAX_THREADS || iters < 1 || passes < 1 || isa < 0 ||
        isa > probe_best_isa())
        return -EINVAL;
    job_t job;
    memset(&job, 0, sizeof(job));
    pthread_mutex_init(&job.gate_lock, NULL);
    pthread_cond_init(&job.gate, NULL);
    job.kind = 1;
    job.isa = isa;
    job.n_threads = n_threads;
    job.passes = passes;
    job.iters = iters;
    int rc = run_job(&job);
    pthread_cond_destroy(&job.gate);
    pthread_mutex_destroy(&job.gate_lock);
    if (rc != 0)
        return -(double)rc;
    double flops = 2.0 * (double)lanes_of(isa) * N_CHAINS * (double)iters * n_threads;
    return flops / job.best / 1e9;
}
