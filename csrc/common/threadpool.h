/* One process-wide pool of worker threads and a parallel-for over index ranges (pure C). */
#ifndef RWKV5_THREADPOOL_H
#define RWKV5_THREADPOOL_H

#include <stdint.h>

/* fn(ctx, begin, end) handles the indices [begin, end). It must not call rwkv5_parallel_for. */
typedef void (*rwkv5_range_fn)(void *ctx, int64_t begin, int64_t end);

/* Run fn over [0, n) split into pieces of at least `grain` indices (>= 1), on the calling thread
 * and the pool's workers; returns when every piece is done. Calls from several threads are
 * serialised (one job at a time). With one thread or a single piece, fn runs inline. */
void rwkv5_parallel_for(int64_t n, int64_t grain, rwkv5_range_fn fn, void *ctx);

/* Number of threads used by rwkv5_parallel_for (workers + the caller). Default: the CPUs available
 * to the process (sched_getaffinity). set clamps n to [1, 256]; returns 0 or -1 if threads could
 * not be started (the pool then runs with as many as it got). */
int rwkv5_get_num_threads(void);
int rwkv5_set_num_threads(int n);

/* CPUs this process may run on. */
int rwkv5_available_cpus(void);

#endif
