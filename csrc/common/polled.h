/* Run a long computation on a helper thread while the calling thread polls at a fixed interval.
 *
 * Bindings use this so that Ctrl-C reaches a long C call: the poll callback (which belongs to the
 * binding and may take the GIL to run the interpreter's signal handlers) returns nonzero to ask for
 * cancellation; it is then the callback's job to raise the flag that `work` checks. `work` always
 * runs to its end (early, when cancelled) before this returns, so nothing is left running.
 * Pure C, no Python. */
#ifndef RWKV5_POLLED_H
#define RWKV5_POLLED_H

/* Returns 0 when work finished without the poll asking to stop, the poll's nonzero value when it
 * asked, or -1 when no helper thread could be started (then work ran on the calling thread,
 * unpolled). */
int rwkv5_run_polled(void (*work)(void *), void *arg, int (*poll)(void *), void *poll_arg,
                     int interval_ms);

#endif
