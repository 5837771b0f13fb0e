"""Crash safety: SIGKILL at random moments then rerun gives byte-identical output; a short write
(file size limit, like a full disk) is an error that leaves no completion record and no output."""

import glob
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest

zstandard = pytest.importorskip("zstandard")

from dataprep_helpers import gen_corpus, write_jsonl  # noqa: E402


def make_inputs(d):
    paths = []
    for i in range(3):
        lines, _ = gen_corpus(100 + i, 4000)
        p = os.path.join(d, f"part{i}.jsonl")
        data = write_jsonl(p, lines)
        paths.append(p)
    zp = os.path.join(d, "part9.jsonl.zst")
    with open(zp, "wb") as f:
        f.write(zstandard.ZstdCompressor(write_checksum=True).compress(data))
    return paths + [zp]


def cmd(inputs, out, *extra):
    return [
        sys.executable,
        "-m",
        "rwkv5.dataprep",
        "build",
        *inputs,
        "--out",
        out,
        "--on-error",
        "skip",
        "--task-size",
        "150000",
        "--workers",
        "2",
        "--shuffle",
        "--seed",
        "3",
        "--dedup",
        "exact",
        "--lang-field",
        "lang",
        "--no-progress",
        *extra,
    ]


def outputs(prefix):
    res = {}
    for p in sorted(glob.glob(prefix + "*")):
        if p.endswith(".work"):
            continue
        if p.endswith(".manifest.json"):
            m = json.load(open(p))
            m.pop("timing")
            res[os.path.basename(p)] = m
        else:
            res[os.path.basename(p)] = open(p, "rb").read()
    return res


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("resume"))
    inputs = make_inputs(d)
    ref = os.path.join(d, "ref", "o")
    os.makedirs(os.path.dirname(ref))
    t0 = time.perf_counter()
    subprocess.run(cmd(inputs, ref), check=True, capture_output=True)
    ref_out = outputs(ref)
    # the comparisons below would pass on two empty folders: the reference must hold a real set
    assert "o.manifest.json" in ref_out and ref_out["o.manifest.json"]["totals"]["tokens"] > 0, (
        sorted(ref_out)
    )
    assert any(n.endswith((".bin", ".zst")) for n in ref_out), sorted(ref_out)
    return d, inputs, ref_out, time.perf_counter() - t0


def test_kill_and_resume_is_byte_identical(corpus):
    d, inputs, ref, seconds = corpus
    rng = random.Random(1234)
    for trial in range(5):
        out = os.path.join(d, f"k{trial}", "o")
        os.makedirs(os.path.dirname(out))
        kills = 0
        for attempt in range(4):
            p = subprocess.Popen(
                cmd(inputs, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            if attempt < 3:
                time.sleep(rng.uniform(0.05, seconds * 1.1))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    kills += 1
                p.wait()
                # nothing half-written under a final name: any final file present is complete (a
                # killed write may leave NAME.tmp, which is renamed into place only when complete;
                # the successful run at the end must leave none, see the last assertion)
                for name, data in outputs(out).items():
                    if not name.endswith(".tmp"):
                        assert data == ref[name], f"trial {trial}: {name} differs after a kill"
                if p.returncode == 0:
                    break
            else:
                _, err = p.communicate()
                assert p.returncode == 0, err
        assert outputs(out) == ref, f"trial {trial} ({kills} kills)"
        assert not os.path.exists(out + ".work")


def test_short_write_leaves_no_completion_record(corpus):
    d, inputs, ref, _ = corpus
    out = os.path.join(d, "full", "o")
    os.makedirs(os.path.dirname(out))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    r = subprocess.run(cmd(inputs, out), capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode != 0
    assert "write failed" in r.stderr or "File too large" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    work = out + ".work"
    for rec in glob.glob(os.path.join(work, "task-*.done.json")):
        m = json.load(open(rec))
        for ext in ("tok", "meta"):
            part = rec.replace(".done.json", "." + ext)
            assert os.path.getsize(part) == m["parts"][ext]["bytes"]
    assert not glob.glob(out + ".bin*") and not os.path.exists(out + ".manifest.json")
    # without the limit the same command resumes and finishes with the reference bytes
    subprocess.run(cmd(inputs, out), check=True, capture_output=True)
    assert outputs(out) == ref


def test_corrupted_part_is_redone(corpus):
    d, inputs, ref, _ = corpus
    out = os.path.join(d, "corrupt", "o")
    os.makedirs(os.path.dirname(out))
    subprocess.run(cmd(inputs, out, "--keep-work"), check=True, capture_output=True)
    part = sorted(glob.glob(out + ".work/task-*.tok"))[1]
    with open(part, "r+b") as f:
        f.seek(5)
        b = f.read(1)
        f.seek(5)
        f.write(bytes([b[0] ^ 1]))
    os.remove(out + ".bin")
    os.remove(out + ".manifest.json")
    subprocess.run(cmd(inputs, out), check=True, capture_output=True)
    assert outputs(out) == ref


def test_ctrl_c_then_resume(corpus):
    d, inputs, ref, seconds = corpus
    out = os.path.join(d, "sigint", "o")
    os.makedirs(os.path.dirname(out))
    p = subprocess.Popen(
        cmd(inputs, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    # interrupt once the build is under way (a Ctrl-C during interpreter start-up is Python's business)
    while p.poll() is None and not os.path.exists(out + ".work/plan.json"):
        time.sleep(0.01)
    time.sleep(seconds * 0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate()
    if p.returncode != 0:  # it may have finished first on a fast machine
        assert p.returncode == 130 and "interrupted" in err, err
        # no task is recorded as done while its parts are still temporaries
        for tmp in glob.glob(out + ".work/task-*.tok.tmp"):
            assert not os.path.exists(tmp.replace(".tok.tmp", ".done.json"))
    subprocess.run(cmd(inputs, out), check=True, capture_output=True)
    assert outputs(out) == ref
