"""Where the data-prep tasks run: here (``--engine local``), in any ``concurrent.futures.Executor``,
or on a Ray cluster (``--engine ray``).

The contract that makes every engine give byte-identical output:

* the plan (``plan_tasks``) is a function of the sorted inputs and the options only;
* ``run_task(task, options, workdir, n_threads)`` is a pure function of (task, options) that
  writes ``task-NNNNNN.tok/.meta`` by rename from temporary files and then its completion record
  ``task-NNNNNN.done.json`` (part sizes and SHA-256). Running it twice, or a second time after a
  crash that left temporary files behind, gives the same bytes;
* each attempt runs in a private sub-folder and renames its results into the work folder
  (:func:`run_task_isolated`), so overlapping attempts of one task cannot mix temporary files;
* the driver verifies every completion record it receives against the part files (sizes and
  SHA-256, :func:`verify_record`), then merges the parts in task-id order, whatever order the
  tasks finished in.

So a task may run anywhere and any number of times (Ray retries it after an exception or the
death of its worker) without losing or duplicating a document. The work directory
``PREFIX.work/`` must be on a filesystem that every node sees at the same path (NFS, a cluster
filesystem, or one machine) -- the driver checks the parts it is told about and says so when it
cannot see them -- or on an object store (remote.StoreWorkArea): each task then runs in a private
local folder and uploads its parts and record (remote.run_task_on_store), and the driver pulls and
checks them (remote.pull_task).

:class:`RayExecutor` is a ``concurrent.futures.Executor`` whose ``submit`` runs the function as a
Ray remote task (``max_retries`` on worker death, ``retry_exceptions`` on exceptions) and returns
a ``concurrent.futures.Future`` of its result, so ``build(..., executor=RayExecutor(...))`` uses
the same code path as a process pool or ``dask.distributed.Client.get_executor()``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import signal
import threading
import time
import uuid

from .. import storage
from . import remote
from .errors import DataprepError
from .formats import sha256_file
from .tasks import check_record_task, check_workers, collect_resumed, run_task

RAY_INSTALL_HINT = "the Ray engine needs Ray: pip install 'rwkv5[ray]' (or pip install 'ray>=2.9')"
FAULT_ENV = "RWKV5_DATAPREP_FAULT"
SETTLE_SECONDS = 60  # how long a failing run waits for its tasks that are still running


def _error(msg: str):
    return DataprepError(msg)


def import_ray():
    """``import ray`` or a DataprepError saying how to install it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise _error(RAY_INSTALL_HINT) from None
    return ray


# ----------------------------------------------------------------------------- driver side


def verify_record(workdir: str, task: dict, rec) -> dict:
    """Check a completion record returned by a worker against the part files the driver sees.

    Raises DataprepError (naming the task and file) when the record is not for this task, or a
    part is missing or differs in size or SHA-256 -- typically because the work directory is not
    on a filesystem shared by all nodes."""
    check_record_task(task, rec)
    if rec.get("error"):
        return rec  # a bad input record under --on-error fail: build() reports it with its line
    stem = os.path.join(workdir, f"task-{task['id']:06d}")
    for ext in ("tok", "meta"):
        path = f"{stem}.{ext}"
        want = rec["parts"][ext]
        if not os.path.exists(path):
            raise _error(
                f"task {task['id']}: part {path} does not exist on the driver although the worker "
                f"reported it done; the output folder must be on a filesystem shared by all nodes "
                f"(or put the work area on an object store: --work-dir URL)"
            )
        size = os.path.getsize(path)
        if size != want["bytes"]:
            raise _error(
                f"task {task['id']}: part {path} has {size} bytes, the worker wrote {want['bytes']}; "
                f"the output folder must be on a filesystem shared by all nodes"
            )
        if sha256_file(path) != want["sha256"]:
            raise _error(
                f"task {task['id']}: part {path} does not match the SHA-256 of its completion record"
            )
    return rec


def run_task_isolated(task: dict, options: dict, workdir: str, n_threads: int = 1) -> dict:
    """run_task in a private folder WORKDIR/attempt-NNNNNN-RANDOM, then its two parts and its
    completion record renamed into WORKDIR (the record last); what the executors run.

    Two attempts of one task that overlap in time (a node cut off from the cluster but still
    writing to the shared filesystem while the task is retried elsewhere) then never share a
    temporary file; both rename byte-identical parts, so whichever lands last is correct. A dead
    attempt leaves only its private folder, removed with the work folder."""
    private = os.path.join(workdir, f"attempt-{task['id']:06d}-{uuid.uuid4().hex[:12]}")
    os.mkdir(private)
    try:
        rec = run_task(task, options, private, n_threads)
        if not rec.get("error"):
            stem = f"task-{task['id']:06d}"
            for ext in ("tok", "meta", "done.json"):
                os.replace(
                    os.path.join(private, f"{stem}.{ext}"), os.path.join(workdir, f"{stem}.{ext}")
                )
        return rec
    finally:
        shutil.rmtree(private, ignore_errors=True)


def run_tasks(
    executor: cf.Executor,
    tasks: list,
    options: dict,
    workdir: str,
    n_threads: int,
    report,
    store=None,
) -> list:
    """Run the tasks in `executor`; return their verified completion records in task order.

    Tasks whose valid completion record already exists (a resumed run) are not submitted.
    `report(i, rec)` is called on the driver as each task finishes, in completion order.

    store: a remote.StoreWorkArea when the work area is on an object store: each task then runs
    remote.run_task_on_store (its parts and record uploaded by the worker), and the driver pulls
    the parts into `workdir` and checks them (remote.pull_task) instead of reading a shared folder."""
    records = [None] * len(tasks)
    pending = {}
    collect_resumed(tasks, workdir, records, report)
    if store is not None:
        so = {**storage.default_options(), **store.storage_options}

        def submit(task):
            return executor.submit(
                remote.run_task_on_store, task, options, store.url, n_threads, so
            )

        def verify(task, rec):
            return remote.pull_task(store.url, workdir, task, rec, so)
    else:

        def submit(task):
            return executor.submit(run_task_isolated, task, options, workdir, n_threads)

        def verify(task, rec):
            return verify_record(workdir, task, rec)

    try:
        for i, task in enumerate(tasks):
            if records[i] is None:
                pending[submit(task)] = i
        for fut in cf.as_completed(list(pending)):
            i = pending.pop(fut)
            try:
                rec = fut.result()
            except (OSError, DataprepError):
                raise
            except Exception as e:  # retries exhausted, worker lost, broken pool...
                t = tasks[i]
                raise DataprepError(
                    f"task {t['id']} ({t['path']} part {t['part']}) failed: "
                    f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                ) from e
            records[i] = verify(tasks[i], rec)
            report(i, records[i])
    finally:
        # on an error (or ^C): cancel what has not started and let the running tasks settle, so that no
        # task of this run still writes into the work directory when build() returns or is rerun
        for fut in pending:
            fut.cancel()
        cf.wait(list(pending), timeout=SETTLE_SECONDS)
    return records


# ----------------------------------------------------------------------------- fault injection (tests)


def parse_fault(spec):
    """'MODE:TASK[:SECONDS][,...]' -> {task_id: (mode, seconds)}; MODE is raise, exit, kill or sleep.

    raise/exit/kill act on the first attempt of the task only (the attempts are counted in
    WORKDIR/fault-task-NNNNNN.attempts, one line per attempt), sleep on every attempt. Used by the
    tests through the RWKV5_DATAPREP_FAULT environment variable of the driver."""
    out = {}
    if not spec:
        return out
    for item in str(spec).split(","):
        bits = item.strip().split(":")
        if (
            len(bits) not in (2, 3)
            or bits[0] not in ("raise", "exit", "kill", "sleep")
            or not bits[1].isdigit()
        ):
            raise ValueError(
                f"{FAULT_ENV}={spec!r}: expected MODE:TASK[:SECONDS] with MODE raise, exit, kill "
                f"or sleep, got {item!r}"
            )
        out[int(bits[1])] = (bits[0], float(bits[2]) if len(bits) == 3 else 0.0)
    return out


def _inject(fault: dict, task: dict, workdir: str) -> None:
    if task["id"] not in fault:
        return
    mode, seconds = fault[task["id"]]
    marker = os.path.join(workdir, f"fault-task-{task['id']:06d}.attempts")
    with open(marker, "a+", encoding="ascii") as f:
        f.seek(0)
        first = f.read() == ""
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    if mode == "sleep":
        time.sleep(seconds)
    elif first and mode == "raise":
        raise RuntimeError(f"injected failure in task {task['id']} (first attempt)")
    elif first and mode == "exit":
        os._exit(17)
    elif first and mode == "kill":
        # die in the middle of the task: a half-written temporary part, then SIGKILL of this worker
        stem = os.path.join(workdir, f"task-{task['id']:06d}")
        with open(stem + ".tok.tmp", "wb") as f:
            f.write(b"\x01\x02half-written")
        threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL)).start()
        time.sleep(seconds + 60)


def call_with_faults(fault: dict, fn, args, kwargs):
    """Run fn(*args, **kwargs) on a worker, after the injected fault of its task if any."""
    if fault and args and isinstance(args[0], dict) and "id" in args[0] and len(args) > 2:
        _inject(fault, args[0], args[2])
    return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- Ray


def check_reachable(address, timeout: float = 5.0) -> None:
    """For a HOST:PORT address, fail fast with a clear error when nothing listens there (ray.init
    itself retries such an address for a very long time). 'auto', 'local', ray:// and None pass."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise _error(
            f"--ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), 'auto' or ray://HOST:PORT"
        )
    import socket

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise _error(
            f"--ray-address {address!r}: no Ray head answers there ({e.strerror or e}); start one with "
            f"`ray start --head --port {port}` or check the address"
        ) from None


def check_cluster_cpus(ray, num_cpus: float) -> None:
    """Fail at once when no alive node of the cluster has num_cpus CPUs: Ray would keep such tasks
    pending forever (a task's CPUs must all be on one node)."""
    nodes = [n for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
    biggest = max(cpus, default=0.0)
    if biggest < num_cpus:
        fix = (
            f"use --workers {int(biggest)} or less (the threads of each task; tasks run in parallel "
            f"on the cluster's CPUs)"
            if biggest >= 1
            else "add nodes with CPUs to the cluster"
        )
        raise _error(
            f"--workers {num_cpus:g}: each Ray task reserves that many CPUs on one node, but the "
            f"largest of the cluster's {len(nodes)} node(s) has {biggest:g} (the cluster has "
            f"{sum(cpus):g} in all); {fix}"
        )


class RayExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` running each submitted call as a Ray remote task.

    address: None starts a new local Ray instance (or joins $RAY_ADDRESS when set), unless Ray is
    already initialised in this process, whose instance is then used; "auto" joins the cluster that ``ray start`` runs on this node; "HOST:PORT" joins that
    cluster. max_retries: re-runs of a task after its worker died or it raised (Ray's
    ``max_retries`` with ``retry_exceptions=True``). num_cpus: CPUs each task reserves (match it to
    the tokenizer threads per task); when no node of the cluster has that many, the constructor
    raises DataprepError at once instead of leaving the tasks pending forever. Only a Ray instance started here is shut down by
    ``shutdown()``.
    """

    def __init__(
        self,
        address=None,
        *,
        max_retries: int = 3,
        num_cpus: float = 1,
        fault=None,
        init_kwargs: dict = None,
    ):
        ray = import_ray()
        if int(max_retries) < 0:
            raise ValueError(f"max_retries: expected >= 0, got {max_retries}")
        if not float(num_cpus) > 0:
            raise ValueError(f"num_cpus: expected > 0, got {num_cpus}")
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            check_reachable(address)
            kw = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
            kw.update(init_kwargs or {})
            if (
                address is None
            ):  # RAY_ADDRESS if set, else a new local instance (never a stale cluster file)
                address = os.environ.get("RAY_ADDRESS") or "local"
            try:
                ray.init(address=address, **kw)
            except ConnectionError as e:
                raise _error(
                    f"--ray-address {address!r}: cannot connect to a Ray cluster ({e}); if the cluster "
                    f"uses token authentication (Ray >= 2.59 `ray start`), set RAY_AUTH_MODE=token and "
                    f"the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token) here too"
                ) from None
            self._owned = True
        try:
            check_cluster_cpus(ray, float(num_cpus))
        except BaseException:
            if self._owned:
                ray.shutdown()
            raise
        self._fault = parse_fault(os.environ.get(FAULT_ENV) if fault is None else fault)

        def _remote_call(fault, fn, args, kwargs):
            return call_with_faults(fault, fn, args, kwargs)

        self._remote = ray.remote(_remote_call).options(
            max_retries=int(max_retries), retry_exceptions=True, num_cpus=float(num_cpus)
        )
        self._shutdown = False
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a RayExecutor after shutdown()")
            ref = self._remote.remote(self._fault, fn, args, kwargs)
        return _RayFuture(ref.future(), ref, self._ray)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False):
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()


class _RayFuture(cf.Future):
    """A concurrent.futures.Future mirroring Ray's future of one task; cancel() cancels the Ray task."""

    def __init__(self, inner: cf.Future, ref, ray):
        super().__init__()
        self._inner, self._ref, self._rayapi = inner, ref, ray
        self.set_running_or_notify_cancel()
        inner.add_done_callback(self._copy)

    def _copy(self, inner):
        if self.done():
            return
        try:
            exc = inner.exception()
        except cf.CancelledError as e:
            exc = e
        try:
            if exc is not None:
                self.set_exception(_unwrap(exc))
            else:
                self.set_result(inner.result())
        except cf.InvalidStateError:
            pass

    def cancel(self):
        try:
            self._rayapi.cancel(self._ref, force=False)
        except Exception:  # the task may be finished or the cluster gone
            pass
        return False


def _unwrap(exc):
    """Ray wraps a task's exception in a RayTaskError that is also an instance of the original type;
    return the original (cause) when there is one, so OSError etc. reach build() as themselves."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def executor_for_cli(args):
    """(executor, workers) for `build --engine local|ray`: None and --workers for local; for ray a
    RayExecutor whose tasks each reserve --workers CPUs (default 1) and run that many threads."""
    if getattr(args, "engine", "local") != "ray":
        return None, args.workers
    if args.max_retries < 0:
        raise _error(f"--max-retries: expected >= 0, got {args.max_retries}")
    workers = 1 if args.workers is None else check_workers(args.workers)
    return RayExecutor(args.ray_address, max_retries=args.max_retries, num_cpus=workers), workers
