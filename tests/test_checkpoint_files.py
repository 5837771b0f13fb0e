"""Checkpoint files that change on disk after loading, files that are not regular files, and hostile
files that try to make a reader use far more memory or stack than the file's size.

The crash cases run in a subprocess: before the fixes they killed the interpreter (SIGBUS) or
blocked forever (a FIFO), which a test in this process could not report."""

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rwkv5
from rwkv5.formats._files import map_or_read, open_regular
from rwkv5.formats.pth import read_pth
from rwkv5.formats.safetensors import read_safetensors, write_safetensors
from rwkv5.formats.state_io import load_state

from _loaders_util import write_pth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(
    not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps"
)


def _run(script, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def checkpoints(tiny_files):
    """The shipped trained model in the three formats the issue names (rwkv.cpp .bin, fp32 and bf16
    RWKV-LM .pth), plus a safetensors file, written at test time (conftest.TinyFiles)."""
    return {n: tiny_files[n] for n in ("FP32.bin", "fp32.pth", "bf16.pth", "fp32.safetensors")}


# -- item 2: a checkpoint truncated or rewritten on disk after loading ---------------------------

_TRUNCATE_AFTER_LOAD = """
    import os, shutil, sys
    import rwkv5
    src, dst = sys.argv[1], sys.argv[2]
    for kw in eval(sys.argv[3]):
        shutil.copyfile(src, dst)
        model = rwkv5.load(dst, gn_eps=1e-5, **kw)
        with open("/proc/self/maps") as f:
            mapped = [line for line in f if line.rstrip().endswith(dst)]
        fds = [fd for fd in os.listdir("/proc/self/fd")
               if os.path.realpath(os.path.join("/proc/self/fd", fd)) == os.path.realpath(dst)]
        print(kw, "MAPPED" if mapped else "unmapped", "OPEN" if fds else "closed", flush=True)
        want = model.forward([34, 105, 110])[0]
        os.truncate(dst, 0)                       # a training run re-saving to the same path
        got = model.forward([34, 105, 110])[0]    # reads every weight again: SIGBUS if still mapped
        assert (got == want).all()
        os.unlink(dst)
    print("SURVIVED")
"""


@linux_only
@pytest.mark.parametrize("name", ["FP32.bin", "fp32.pth", "bf16.pth", "fp32.safetensors"])
def test_mmap_false_model_survives_truncation_of_its_file(checkpoints, tmp_path, name):
    """rwkv5.load(..., mmap=False): the file is read, closed and never mapped, so truncating it
    afterwards cannot touch the model, whatever the dtype/layout."""
    cases = [{"mmap": False}, {"mmap": False, "layout": "rows"}, {"mmap": False, "dtype": "bf16"}]
    dst = tmp_path / ("copy-" + name)
    p = _run(_TRUNCATE_AFTER_LOAD, checkpoints[name], dst, repr(cases))
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "SURVIVED" in p.stdout
    assert "MAPPED" not in p.stdout and "OPEN" not in p.stdout, p.stdout


@linux_only
@pytest.mark.parametrize(
    "name, cases",
    [
        ("FP32.bin", [{"layout": "blocked"}, {"dtype": "bf16"}, {"dtype": "int8"}]),
        ("fp32.pth", [{"dtype": "fp16"}, {"layout": "blocked"}]),
        (
            "bf16.pth",
            [{}, {"dtype": "bf16"}, {"dtype": "int8"}],
        ),  # bf16 -> blocked copies by default
    ],
)
def test_a_fully_converted_model_keeps_no_view_of_its_file(checkpoints, tmp_path, name, cases):
    """With the default mmap=True, a load whose dtype/layout copies every matrix used to keep the
    embedding (and fp32 vectors) as views of the mapping: the file stayed mapped and truncating it
    killed the process with SIGBUS. Now nothing stays mapped."""
    p = _run(_TRUNCATE_AFTER_LOAD, checkpoints[name], tmp_path / ("copy-" + name), repr(cases))
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "SURVIVED" in p.stdout and "MAPPED" not in p.stdout, p.stdout


@linux_only
def test_zero_copy_load_still_maps_the_file(checkpoints):
    """The default zero-copy path is kept (documented risk): an fp32 file loaded as fp32 rows is
    read straight from the mapping."""
    model = rwkv5.load(checkpoints["fp32.pth"], layout="rows")
    with open("/proc/self/maps") as f:
        assert any(os.path.realpath(checkpoints["fp32.pth"]) in line for line in f)
    del model


def test_load_mmap_argument_is_checked(checkpoints):
    with pytest.raises(TypeError, match="mmap must be"):
        rwkv5.load(checkpoints["fp32.pth"], mmap="no")


def test_mmap_false_gives_the_same_model(checkpoints):
    for name in ("FP32.bin", "bf16.pth", "fp32.safetensors"):
        a = rwkv5.load(checkpoints[name], gn_eps=1e-5).forward([1, 2, 3])[0]
        b = rwkv5.load(checkpoints[name], gn_eps=1e-5, mmap=False).forward([1, 2, 3])[0]
        np.testing.assert_array_equal(a, b)


def test_a_file_that_shrinks_while_being_read_is_an_error(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 1000)
    with open_regular(p) as f:
        with pytest.raises(ValueError, match="shrank to 1000 bytes while being read"):
            map_or_read(f, 5000, p, mmap=False)  # as if it had 5000 bytes when its size was taken


# -- item 6: things that are not regular files ---------------------------------------------------

_OPEN_FIFO = """
    import sys
    import rwkv5
    from rwkv5.formats.pth import read_pth
    from rwkv5.formats.rwkvcpp import read_rwkvcpp
    from rwkv5.formats.safetensors import read_safetensors
    from rwkv5.loading import read_checkpoint
    path = sys.argv[1]
    for name, fn in [("load", rwkv5.load), ("read_checkpoint", read_checkpoint), ("read_pth", read_pth),
                     ("read_safetensors", read_safetensors), ("read_rwkvcpp", read_rwkvcpp),
                     ("State.load", rwkv5.State.load)]:
        try:
            fn(path)
            print(name, "ACCEPTED")
        except ValueError as e:
            print(name, "ValueError", e)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_at_once(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: rwkv5.load hung forever. Every loader
    now refuses it (and anything else that is not a regular file) before reading."""
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    p = _run(_OPEN_FIFO, fifo, timeout=60)  # before the fix: subprocess.TimeoutExpired
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert len(lines) == 6, p.stdout
    for line in lines:
        assert "ValueError" in line and str(fifo) in line and "named pipe" in line, line
    # a folder of shards holding a FIFO names it too
    shards = tmp_path / "shards"
    shards.mkdir()
    os.mkfifo(shards / "model-00001.safetensors")
    p = _run(_OPEN_FIFO, shards, timeout=60)
    assert (
        "load ValueError" in p.stdout and "model-00001.safetensors: is a named pipe" in p.stdout
    ), p.stdout


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused():
    with pytest.raises(ValueError, match="character device; a checkpoint must be a regular file"):
        rwkv5.load("/dev/zero")


# -- item 6: JSON nested deeper than the recursion limit -------------------------------------------


def _safetensors_with_header(path, header: bytes, data=b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(
    "template",
    [
        b'{"a": %s}',
        b'{"__metadata__": %s}',
        b'{"a": {"dtype": "F32", "shape": %s, "data_offsets": [0, 0]}}',
    ],
)
def test_safetensors_header_nested_200000_deep(tmp_path, template):
    deep = b"[" * 200_000 + b"]" * 200_000
    p = _safetensors_with_header(tmp_path / "deep.safetensors", template % deep)
    with pytest.raises(ValueError, match="deep.safetensors: safetensors header nests JSON"):
        read_safetensors(p)
    with pytest.raises(ValueError, match="deep.safetensors"):
        rwkv5.load(p)


def test_safetensors_values_quoted_in_errors_are_bounded(tmp_path):
    """A value nested just under the recursion limit parses; quoting it in the error must neither
    recurse nor print a megabyte. A non-string dtype is a ValueError (it used to be TypeError)."""
    depth = sys.getrecursionlimit() - 60
    nested = b"[" * depth + b"]" * depth
    for field, msg in (
        (b'{"a": %s}', "entry must be an object"),
        (b'{"a": {"dtype": "F32", "shape": %s, "data_offsets": [0, 0]}}', "shape"),
        (b'{"a": {"dtype": %s, "shape": [], "data_offsets": [0, 0]}}', "unknown dtype"),
    ):
        p = _safetensors_with_header(tmp_path / "n.safetensors", field % nested)
        with pytest.raises(ValueError, match=msg) as e:
            read_safetensors(p)
        assert len(str(e.value)) < 400
    p = _safetensors_with_header(
        tmp_path / "d.safetensors",
        b'{"a": {"dtype": {"F32": 1}, "shape": [], "data_offsets": [0, 0]}}',
    )
    with pytest.raises(ValueError, match="unknown dtype"):
        read_safetensors(p)


def test_state_file_with_deeply_nested_shapes_metadata(tmp_path):
    p = tmp_path / "s.safetensors"
    write_safetensors(
        p,
        {
            "att_x": np.zeros((1, 4), np.float32),
            "att_kv": np.zeros((1, 1, 2, 2), np.float32),
            "ffn_x": np.zeros((1, 4), np.float32),
        },
        metadata={"format": "rwkv5-state", "version": "1", "shapes": "[" * 200_000 + "]" * 200_000},
    )
    with pytest.raises(
        ValueError, match="s.safetensors: metadata 'shapes' is missing or malformed"
    ):
        load_state(p)


# -- item 5: the .pth pickle interpreter's memory is bounded by the file's size --------------------

_PICKLE_PEAK = """
    import resource, sys
    from rwkv5.formats.pth import read_pth
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_pth(sys.argv[1])
        print("ACCEPTED")
    except ValueError as e:
        print("REFUSED", e)
    print("GROWTH_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""

_N = 4 << 20  # 4 M opcodes: before the fix each of these built 250-600 MiB of objects


@pytest.mark.parametrize(
    "body",
    [
        b"}" * _N,  # 4 M empty dicts on the stack
        b"(" * _N,  # 4 M MARKs: a list each on the meta-stack
        b"]" + b"}a" * (_N // 2),  # one list of 2 M dicts: the stack stays small
        b"]"
        + b"".join(
            b"}r" + struct.pack("<I", i) + b"a" for i in range(_N // 7)
        ),  # 600 K memo entries
    ],
    ids=["dicts", "marks", "list", "memo"],
)
def test_pickle_that_builds_far_more_than_the_file_is_stopped(tmp_path, body):
    p = tmp_path / "bomb.pth"
    write_pth(p, b"\x80\x02" + body + b".", {"0": np.zeros(4, np.float32).tobytes()})
    size = os.path.getsize(p)
    r = _run(_PICKLE_PEAK, p)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REFUSED" in r.stdout and "bytes of objects" in r.stdout and "bomb.pth" in r.stdout, (
        r.stdout
    )
    growth = int(r.stdout.split("GROWTH_KIB")[1]) * 1024
    # the pickle itself is read into memory (and mapped): allow 2x the file for that, 4x for objects
    assert growth < 6 * size + (32 << 20), (growth, size)


def test_real_pickles_stay_far_below_the_object_budget(tiny_files):
    from rwkv5.formats import pth as pthmod

    seen = []
    orig = pthmod._Interpreter.run

    def run(self):
        out = orig(self)
        seen.append((self.used, self.budget))
        return out

    pthmod._Interpreter.run = run
    try:
        read_pth(tiny_files["bf16.pth"])  # as torch.save writes it
    finally:
        pthmod._Interpreter.run = orig
    ((used, budget),) = seen
    assert 0 < used < budget / 10


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_as_vocab_is_refused(tmp_path):
    fifo = tmp_path / "vocab.txt"
    os.mkfifo(fifo)
    p = _run(
        """
        import sys
        from rwkv5.tokenizer import WorldTokenizer
        try:
            WorldTokenizer(sys.argv[1])
        except ValueError as e:
            print("ValueError", e)
    """,
        fifo,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (
        "ValueError" in p.stdout
        and "named pipe (FIFO); a vocab file must be a regular file" in p.stdout
    )
