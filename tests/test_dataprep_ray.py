"""rwkv5.dataprep on Ray and other executors: byte-identical to the local engine, whatever the
engine, the number of workers or nodes, and through task exceptions, killed workers and a killed
driver (then resumed). Ray is started by these tests on this machine (one instance per module)."""

import concurrent.futures as cf
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from dataprep_helpers import gen_corpus, write_jsonl
from rwkv5.dataprep import DataprepError, build
from rwkv5.dataprep import engines
from rwkv5.dataprep.__main__ import main as cli_main

OPTS = dict(on_error="skip", lang_field="lang", shuffle=True, seed=7, task_size=30_000, ctx_len=64)
ZST_OPTS = dict(OPTS, format="zst", shard_size=20_000, dedup="exact", epochs=2)


def quiet(**kw):
    return build(log=lambda s: None, **kw)


@pytest.fixture(autouse=True, scope="module")
def _ray_temp_dir():
    """Ray keeps its session folders (logs, sockets) under $RAY_TMPDIR/ray (else $TMPDIR/ray or
    /tmp/ray) and never removes them: the Ray instances these tests start get a folder of their
    own, removed at the end. Short, because Ray's socket paths must fit in 107 bytes."""
    d = tempfile.mkdtemp(prefix="rwkv5-ray-")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = d
    try:
        yield d
    finally:
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three JSONL files (two split into several byte-range tasks) and one .txt file; 12+ tasks."""
    d = tmp_path_factory.mktemp("corpus")
    for i, n in enumerate((400, 250, 30)):
        lines, _ = gen_corpus(100 + i, n)
        if i == 0:
            lines += lines[:20]  # exact duplicates for --dedup
        write_jsonl(d / f"part{i}.jsonl", lines)
    (d / "notes.txt").write_text("Una nota in italiano.\nЗаметка по-русски.\n", encoding="utf-8")
    return d


def outputs(prefix):
    """{file name: bytes} of every output file of PREFIX, with the manifest parsed and its timing
    (wall-clock seconds, worker count) removed -- everything else must be byte-identical."""
    d, base = os.path.split(str(prefix))
    out = {}
    for name in sorted(os.listdir(d)):
        if not name.startswith(base) or os.path.isdir(os.path.join(d, name)):
            continue
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
        if name.endswith(".manifest.json"):
            m = json.loads(data)
            m.pop("timing")
            data = m
        out[name] = data
    return out


_REFS = {}


def local_reference(corpus, tmp_path_factory, opts_name):
    """The --engine local output (tasks run here, one after another, 2 threads each)."""
    if opts_name not in _REFS:
        d = tmp_path_factory.mktemp(f"local-{opts_name}")
        quiet(
            inputs=[str(corpus)],
            out=str(d / "o"),
            workers=2,
            **{"binidx": OPTS, "zst": ZST_OPTS}[opts_name],
        )
        ref = outputs(d / "o")
        # the comparisons with it would pass on two empty folders: it must hold a real set
        assert "o.manifest.json" in ref and ref["o.manifest.json"]["totals"]["tokens"] > 0, sorted(
            ref
        )
        assert any(n.endswith((".bin", ".zst")) for n in ref), sorted(ref)
        _REFS[opts_name] = ref
    return _REFS[opts_name]


def n_tasks(corpus):
    from rwkv5.dataprep.build import DEFAULTS, expand_inputs, plan_tasks

    return len(plan_tasks(expand_inputs([str(corpus)]), {**DEFAULTS, **OPTS}))


def attempts(workdir, task_id):
    with open(os.path.join(workdir, f"fault-task-{task_id:06d}.attempts")) as f:
        return [int(x) for x in f.read().split()]


# ----------------------------------------------------------------------------- without Ray


def test_reference_has_many_tasks_and_shards(corpus, tmp_path_factory):
    assert n_tasks(corpus) >= 10
    ref = local_reference(corpus, tmp_path_factory, "zst")
    assert sum(name.endswith(".zst") for name in ref) >= 2  # several shards


def test_process_pool_executor_matches_local(corpus, tmp_path, tmp_path_factory):
    for fmt, opts in (("binidx", OPTS), ("zst", ZST_OPTS)):
        os.makedirs(tmp_path / fmt)
        with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
            m = quiet(
                inputs=[str(corpus)], out=str(tmp_path / fmt / "o"), executor=ex, workers=1, **opts
            )
        assert m["totals"]["documents"] > 0
        assert outputs(tmp_path / fmt / "o") == local_reference(corpus, tmp_path_factory, fmt)


class _NodeLocalDisk(cf.Executor):
    """Runs each task here, then deletes its .tok part: what the driver sees when the worker wrote
    to a disk of its own instead of a shared filesystem."""

    def submit(self, fn, *args, **kwargs):
        fut = cf.Future()
        rec = fn(*args, **kwargs)
        os.remove(os.path.join(args[2], f"task-{args[0]['id']:06d}.tok"))
        fut.set_result(rec)
        return fut


def test_driver_rejects_parts_it_cannot_see(corpus, tmp_path):
    with pytest.raises(DataprepError, match="shared by all nodes"):
        quiet(inputs=[str(corpus)], out=str(tmp_path / "o"), executor=_NodeLocalDisk(), **OPTS)
    assert not (tmp_path / "o.manifest.json").exists()
    assert not (tmp_path / "o.bin").exists()


def test_verify_record_checks_size_and_sha(corpus, tmp_path):
    from rwkv5.dataprep.build import (
        DEFAULTS,
        default_vocab_path,
        expand_inputs,
        plan_tasks,
        run_task,
    )

    opts = {**DEFAULTS, **OPTS, "vocab": default_vocab_path()}
    task = plan_tasks(expand_inputs([str(corpus)]), opts)[0]
    rec = run_task(task, opts, str(tmp_path))
    assert engines.verify_record(str(tmp_path), task, rec) is rec
    other = dict(task, id=task["id"] + 1)
    with pytest.raises(DataprepError, match="another task"):
        engines.verify_record(str(tmp_path), other, rec)
    tok = tmp_path / f"task-{task['id']:06d}.tok"
    data = bytearray(tok.read_bytes())
    data[0] ^= 1  # same size, other content
    tok.write_bytes(bytes(data))
    with pytest.raises(DataprepError, match="SHA-256"):
        engines.verify_record(str(tmp_path), task, rec)
    tok.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataprepError, match="bytes"):
        engines.verify_record(str(tmp_path), task, rec)


def test_overlapping_attempts_of_one_task_do_not_collide(corpus, tmp_path):
    # a retry may start while a cut-off first attempt still writes to the shared folder
    from rwkv5.dataprep.build import (
        DEFAULTS,
        default_vocab_path,
        expand_inputs,
        load_done,
        plan_tasks,
    )

    opts = {**DEFAULTS, **OPTS, "task_size": 1 << 30, "vocab": default_vocab_path()}
    task = plan_tasks(expand_inputs([str(corpus)]), opts)[0]  # the largest file, whole
    with cf.ThreadPoolExecutor(4) as ex:
        recs = list(
            ex.map(lambda _: engines.run_task_isolated(task, opts, str(tmp_path), 1), range(8))
        )
    for rec in recs:
        assert engines.verify_record(str(tmp_path), task, rec) is rec
        assert rec["parts"] == recs[0]["parts"]
    assert load_done(str(tmp_path), task)["parts"] == recs[0]["parts"]
    assert sorted(os.listdir(tmp_path)) == [
        f"task-{task['id']:06d}.{e}" for e in ("done.json", "meta", "tok")
    ]


def test_fault_spec_parsing():
    assert engines.parse_fault("raise:3, kill:2:0.5") == {3: ("raise", 0.0), 2: ("kill", 0.5)}
    assert engines.parse_fault(None) == {}
    for bad in ("boom:1", "raise", "raise:x", "raise:1:2:3"):
        with pytest.raises(ValueError, match="MODE:TASK"):
            engines.parse_fault(bad)


def test_engine_ray_without_ray_says_how_to_install(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    rc = cli_main(
        ["build", str(corpus), "--out", str(tmp_path / "o"), "--engine", "ray", "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "pip install 'rwkv5[ray]'" in err[0]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "address,msg", [("127.0.0.1:1", "no Ray head answers"), ("nonsense", "HOST:PORT")]
)
def test_bad_ray_address_is_one_clear_line(corpus, tmp_path, capsys, address, msg):
    pytest.importorskip("ray")
    rc = cli_main(
        [
            "build",
            str(corpus),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "ray",
            "--ray-address",
            address,
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and msg in err[0] and address in err[0]
    assert os.listdir(tmp_path) == []


def test_cli_rejects_negative_retries(corpus, tmp_path, capsys):
    rc = cli_main(
        [
            "build",
            str(corpus),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "ray",
            "--max-retries",
            "-1",
            "--no-progress",
        ]
    )
    assert rc == 1 and "--max-retries" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one local Ray instance

try:
    import ray
except ImportError:  # the `ray` extra (also in `test`) is not installed
    ray = None


def _parent_pid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _ray_children():
    """PIDs of the Ray processes (GCS, raylets, workers, ...) this test process started."""
    me, pids = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and _parent_pid(int(name)) == me:
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            args = cmd.split(
                b"\0"
            )  # a "ray::" worker, or a Ray binary or script (not a forked pytest)
            if args[0].startswith(b"ray::") or any(b"/ray/" in a for a in args[:2]):
                pids.append(int(name))
    return pids


def _wait_ray_children_gone(timeout):
    deadline = time.monotonic() + timeout
    while _ray_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _ray_children():  # still there: stop them rather than start next to them
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _retry_ray_start(start, cleanup, tries=3):
    """start() Ray; Ray gives a raylet a fixed 30 s to register with the GCS, which on this 2-core
    machine under load (the ASan run preloads libasan into Ray's own C++ processes as well) is
    sometimes not enough: such a timeout is cleaned up and retried. Any other error, or the last
    timeout, fails the test."""
    for attempt in range(tries):
        _wait_ray_children_gone(30)  # an earlier instance's processes exit asynchronously
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == tries - 1:
                raise
            print(f"Ray start timed out (attempt {attempt + 1} of {tries}); retrying")
            cleanup()


@pytest.fixture(scope="module")
def ray_session():
    if ray is None:
        pytest.skip("Ray is not installed: pip install 'rwkv5[ray]'")
    _retry_ray_start(
        lambda: ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 << 20,
            logging_level="WARNING",
        ),
        ray.shutdown,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    if not ray.is_initialized():  # the two-node test ran before and shut it down
        pytest.fail("the module's Ray instance is gone; the two-node test must run last")
    return ray_session


@pytest.mark.parametrize("fmt", ["binidx", "zst"])
def test_ray_matches_local(corpus, tmp_path, tmp_path_factory, ray_local, fmt):
    ex = engines.RayExecutor()
    m = quiet(
        inputs=[str(corpus)],
        out=str(tmp_path / "o"),
        executor=ex,
        workers=1,
        **{"binidx": OPTS, "zst": ZST_OPTS}[fmt],
    )
    ex.shutdown()
    assert ray.is_initialized()  # not ours to stop
    assert m["totals"]["documents"] > 0
    assert outputs(tmp_path / "o") == local_reference(corpus, tmp_path_factory, fmt)
    assert not (tmp_path / "o.work").exists()


def test_more_cpus_per_task_than_a_node_has_fails_at_once(ray_local):
    """--engine ray --workers 4 on a 2-CPU cluster hung with no message (tasks pending forever)."""
    with pytest.raises(
        DataprepError,
        match=r"--workers 4: each Ray task reserves that many CPUs on one node, "
        r"but the largest of the cluster's 1 node\(s\) has 2 .*--workers 2 or less",
    ):
        engines.RayExecutor(num_cpus=4)
    assert ray.is_initialized()  # the module's instance is not ours to stop
    ex = engines.RayExecutor(num_cpus=2)  # what the cluster has is fine
    ex.shutdown()


def test_task_raising_once_is_retried(corpus, tmp_path, tmp_path_factory, ray_local):
    ex = engines.RayExecutor(max_retries=2, fault="raise:3,raise:7")
    quiet(
        inputs=[str(corpus)],
        out=str(tmp_path / "o"),
        executor=ex,
        workers=1,
        keep_work=True,
        **OPTS,
    )
    for k in (3, 7):
        assert len(attempts(tmp_path / "o.work", k)) == 2
    assert not os.path.exists(tmp_path / "o.work" / "fault-task-000004.attempts")
    assert outputs(tmp_path / "o") == local_reference(corpus, tmp_path_factory, "binidx")


def test_killed_workers_are_retried(corpus, tmp_path, tmp_path_factory, ray_local):
    # task 2: SIGKILL of the worker mid-task (after a half-written part); task 5: os._exit
    ex = engines.RayExecutor(max_retries=2, fault="kill:2:0.2,exit:5")
    quiet(
        inputs=[str(corpus)],
        out=str(tmp_path / "o"),
        executor=ex,
        workers=1,
        keep_work=True,
        **ZST_OPTS,
    )
    for k in (2, 5):
        pids = attempts(tmp_path / "o.work", k)
        assert len(pids) == 2 and pids[0] != pids[1]  # the first worker died; another ran it again
    assert outputs(tmp_path / "o") == local_reference(corpus, tmp_path_factory, "zst")


def test_retries_exhausted_is_a_clear_error_then_rerun_resumes(
    corpus, tmp_path, tmp_path_factory, ray_local
):
    ex = engines.RayExecutor(max_retries=0, fault="raise:4")
    with pytest.raises(DataprepError, match=r"task 4 .*injected failure"):
        quiet(inputs=[str(corpus)], out=str(tmp_path / "o"), executor=ex, workers=1, **OPTS)
    assert not (tmp_path / "o.manifest.json").exists()
    assert not (tmp_path / "o.bin").exists()
    done_before = {n for n in os.listdir(tmp_path / "o.work") if n.endswith(".done.json")}
    assert "task-000004.done.json" not in done_before
    log = []
    build(
        inputs=[str(corpus)],
        out=str(tmp_path / "o"),
        executor=engines.RayExecutor(),
        workers=1,
        progress=True,
        log=log.append,
        **OPTS,
    )
    resumed = {int(re.search(r"task (\d+) ", s).group(1)) for s in log if "(resumed)" in s}
    assert resumed == {int(n[5:11]) for n in done_before}
    assert outputs(tmp_path / "o") == local_reference(corpus, tmp_path_factory, "binidx")


def test_bad_record_under_fail_gives_the_local_error(corpus, tmp_path, ray_local):
    # on_error=fail: the corpus has bad records; the first one (file:line) is reported, not retried
    errs = []
    for name, ex in (("local", None), ("ray", engines.RayExecutor(max_retries=2))):
        with pytest.raises(DataprepError) as e:
            quiet(
                inputs=[str(corpus)],
                out=str(tmp_path / name),
                executor=ex,
                workers=1,
                **dict(OPTS, on_error="fail"),
            )
        errs.append(str(e.value))
        assert not (tmp_path / f"{name}.manifest.json").exists()
    assert errs[0] == errs[1]
    assert re.match(r".*part0\.jsonl:\d+: ", errs[0])


def _cli(corpus, out, *extra):
    return [
        sys.executable,
        "-m",
        "rwkv5.dataprep",
        "build",
        str(corpus),
        "--out",
        str(out),
        "--on-error",
        "skip",
        "--lang-field",
        "lang",
        "--shuffle",
        "--seed",
        "7",
        "--task-size",
        "30000",
        "--ctx-len",
        "64",
        *extra,
    ]


@pytest.mark.slow
def test_killed_driver_then_rerun_resumes(corpus, tmp_path, tmp_path_factory, ray_local):
    """The CLI driver joins the module's Ray instance; tasks 0-2 finish, later tasks hang; the driver
    is SIGKILLed; the same command without the hang resumes from tasks 0-2 only."""
    out = tmp_path / "o"
    cmd = _cli(corpus, out, "--engine", "ray", "--ray-address", ray_local, "--progress")
    hang = ",".join(f"sleep:{k}:60" for k in range(3, n_tasks(corpus)))
    env = dict(os.environ, **{engines.FAULT_ENV: hang})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out.parent / "o.work"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            names = set(os.listdir(work)) if work.is_dir() else set()
            if {f"task-{k:06d}.done.json" for k in range(3)} <= names and any(
                n.startswith("fault-task-") for n in names
            ):
                break
            assert proc.poll() is None, "the driver ended before it was killed"
            time.sleep(0.1)
        else:
            pytest.fail("tasks 0-2 did not finish within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not (tmp_path / "o.manifest.json").exists()
    done = sorted(n for n in os.listdir(work) if n.endswith(".done.json"))
    assert done == [f"task-{k:06d}.done.json" for k in range(3)]

    env.pop(engines.FAULT_ENV)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    resumed = sorted(
        int(x) for x in re.findall(r"task (\d+) \S+ part \d+: [^\n]*\(resumed\)", r.stderr)
    )
    assert resumed == [0, 1, 2]
    assert outputs(out) == local_reference(corpus, tmp_path_factory, "binidx")
    # and the CLI's --engine local gives the same bytes as build() did
    os.makedirs(tmp_path / "local")
    r = subprocess.run(
        _cli(corpus, tmp_path / "local" / "o", "--no-progress"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "local" / "o") == local_reference(corpus, tmp_path_factory, "binidx")


# ----------------------------------------------------------------------------- two nodes (runs last)


def _start_cluster(Cluster):
    """A head node and one worker node (one CPU each)."""
    made = []

    def start():
        made.append(
            Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 1,
                    "object_store_memory": 80 << 20,
                    "include_dashboard": False,
                },
            )
        )
        return made[-1], made[-1].add_node(num_cpus=1, object_store_memory=80 << 20)

    return _retry_ray_start(start, lambda: made and made[-1].shutdown())


@pytest.mark.slow
def test_two_node_cluster_matches_local(corpus, tmp_path, tmp_path_factory, ray_session):
    from ray.cluster_utils import Cluster

    for fmt in ("binidx", "zst"):
        local_reference(corpus, tmp_path_factory, fmt)
    ray.shutdown()  # the module's one-node instance; this test is the last one of the module
    cluster, worker = _start_cluster(Cluster)
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        assert sum(1 for n in ray.nodes() if n["Alive"]) == 2
        for fmt in ("binidx", "zst"):
            # task 1 hangs 1 s so that the other node takes some of the other tasks; task 6 dies once
            ex = engines.RayExecutor(fault="sleep:1:1,exit:6")
            os.makedirs(tmp_path / fmt)
            quiet(
                inputs=[str(corpus)],
                out=str(tmp_path / fmt / "o"),
                executor=ex,
                workers=1,
                keep_work=True,
                **{"binidx": OPTS, "zst": ZST_OPTS}[fmt],
            )
            assert len(attempts(tmp_path / fmt / "o.work", 6)) == 2
            assert outputs(tmp_path / fmt / "o") == local_reference(corpus, tmp_path_factory, fmt)

        # the worker node dies while it runs a task: the task is re-run on the head node
        raylet = worker.all_processes["raylet"][0].process.pid
        ex = engines.RayExecutor(fault=",".join(f"sleep:{k}:2" for k in range(8)))
        work, result = tmp_path / "dies" / "o.work", []
        os.makedirs(tmp_path / "dies")
        th = threading.Thread(
            target=lambda: result.append(
                quiet(
                    inputs=[str(corpus)],
                    out=str(tmp_path / "dies" / "o"),
                    executor=ex,
                    workers=1,
                    keep_work=True,
                    **OPTS,
                )
            )
        )
        th.start()
        victim, deadline = None, time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:  # a task starts on the worker node
            for k in range(8):
                for pid in (
                    attempts(work, k) if (work / f"fault-task-{k:06d}.attempts").exists() else []
                ):
                    if _parent_pid(pid) == raylet:
                        victim = k
            time.sleep(0.05)
        assert victim is not None, "no task ran on the worker node within 60 s"
        cluster.remove_node(worker, allow_graceful=False)
        th.join(180)
        assert result, "the build did not finish"
        assert len(attempts(work, victim)) == 2  # run again after its node died
        assert outputs(tmp_path / "dies" / "o") == local_reference(
            corpus, tmp_path_factory, "binidx"
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
