"""The exit status of the command-line tools, whenever Ctrl-C arrives.

``run(main, name)`` calls ``main()`` and returns what the process should exit with:

- ``main``'s own return value once it has returned. From that moment SIGINT is ignored for the
  rest of the process: the work is done (or its failure reported), and a Ctrl-C that lands while
  the interpreter tears down must not turn a finished run's status into "killed by SIGINT"
  (Python restores the default SIGINT action during finalization, so without this such a Ctrl-C
  kills the process with -SIGINT after the output was complete).
- 130 (128 + SIGINT, the shell's convention) with one line ``NAME: interrupted`` on stderr if a
  Ctrl-C reached ``main`` and ``main`` did not handle it itself — no traceback.
"""

from __future__ import annotations

import signal
import sys
import threading


def _ignore_sigint() -> None:
    # A KeyboardInterrupt pending from a SIGINT that arrived just before this call is raised at the
    # call itself; take it and try again until SIG_IGN is in place.
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def run(main, name: str, argv=None) -> int:
    status = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    try:
        try:
            status = int(main(argv) or 0)
        finally:
            if in_main_thread:
                _ignore_sigint()
    except KeyboardInterrupt:
        if status is None:
            print(f"{name}: interrupted", file=sys.stderr)
            status = 130
    return status
