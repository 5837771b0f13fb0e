#include "common/polled.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef struct {
    void (*work)(void *);
    void *arg;
    int done; /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} polled_job;

static void *polled_main(void *p) {
    polled_job *j = p;
    j->work(j->arg);
    pthread_mutex_lock(&j->mu);
    j->done = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

int rwkv5_run_polled(void (*work)(void *), void *arg, int (*poll)(void *), void *poll_arg,
                     int interval_ms) {
    polled_job j = {.work = work, .arg = arg, .done = 0};
    pthread_t th;
    int asked = 0;
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    if (pthread_create(&th, NULL, polled_main, &j) != 0) {
        pthread_cond_destroy(&j.cv);
        pthread_mutex_destroy(&j.mu);
        work(arg);
        return -1;
    }
    pthread_mutex_lock(&j.mu);
    while (!j.done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)interval_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        int rc = pthread_cond_timedwait(&j.cv, &j.mu, &ts);
        if (rc == ETIMEDOUT && !j.done && !asked) {
            pthread_mutex_unlock(&j.mu);
            asked = poll(poll_arg); /* after a nonzero answer, just wait for work to stop */
            pthread_mutex_lock(&j.mu);
        }
    }
    pthread_mutex_unlock(&j.mu);
    pthread_join(th, NULL);
    pthread_cond_destroy(&j.cv);
    pthread_mutex_destroy(&j.mu);
    return asked;
}
