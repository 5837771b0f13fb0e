"""Many Python threads sharing one Model / one WorldTokenizer get exactly the serial results;
the GIL is released while C computes; Ctrl-C during long calls ends in KeyboardInterrupt with a
clean exit and no half-written output."""

import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rwkv5
from rwkv5.testing import random_state_dict
from rwkv5.tokenizer import WorldTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model():
    return rwkv5.Model.from_state_dict(
        random_state_dict(n_layer=2, n_embd=64, head_size=16, vocab_size=300, seed=3)
    )


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["hello", "мир", "世界", "🙂", "naïve", "\n", "  ", "the", "tokenizer", "ألف", "12345"]
    return ["".join(rng.choice(words, size=int(rng.integers(1, 200)))) for _ in range(n)]


def test_threads_share_one_model(model):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 300, size=int(rng.integers(1, 80))).tolist() for _ in range(24)]
    serial = [model.forward(s)[0] for s in seqs]
    with ThreadPoolExecutor(8) as ex:
        for _ in range(3):
            par = list(ex.map(lambda s: model.forward(s)[0], seqs))
            for a, b in zip(serial, par):
                np.testing.assert_array_equal(a, b)


def test_threads_share_one_model_with_states(model):
    # each thread carries its own State through several calls; the shared model holds no per-call state
    rng = np.random.default_rng(2)
    seqs = [rng.integers(0, 300, size=40).tolist() for _ in range(8)]

    def run(s):
        st = model.new_state()
        outs = []
        for k in range(0, 40, 10):
            out, st = model.forward(s[k : k + 10], st)
            outs.append(out)
        return np.stack(outs), st.att_kv.copy()

    serial = [run(s) for s in seqs]
    with ThreadPoolExecutor(8) as ex:
        par = list(ex.map(run, seqs))
    for (a, ka), (b, kb) in zip(serial, par):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ka, kb)


def test_threads_share_one_tokenizer(tok):
    texts = _texts(64)
    serial = [tok.encode(t) for t in texts]
    serial_batch = tok.encode_batch(texts, num_threads=1)
    assert serial_batch == serial
    with ThreadPoolExecutor(8) as ex:
        par = list(ex.map(tok.encode, texts))
        batches = list(
            ex.map(lambda k: tok.encode_batch(texts[k : k + 16], num_threads=2), range(0, 64, 16))
        )
        dec = list(ex.map(tok.decode, serial))
    assert par == serial
    assert sum(batches, []) == serial
    assert dec == texts


def _gil_released_during(call):
    """True when a pure-Python counter thread advances while `call()` runs. With a long switch
    interval the counter can only run when the calling thread blocks or releases the GIL, so an
    advance during the call means C released the GIL."""
    count = [0]
    stop = threading.Event()
    ready = threading.Event()

    def counter():
        ready.set()
        while not stop.is_set():
            count[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.25)
    t = threading.Thread(target=counter)
    try:
        t.start()
        ready.wait()
        before = count[0]
        call()
        after = count[0]
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    return after > before


def test_gil_released_by_forward(model):
    toks = list(range(300)) * 20
    assert _gil_released_during(lambda: model.forward(toks))


def test_gil_released_by_encode_batch(tok):
    # Texts of several MiB are encoded with the GIL released for the whole text (tens of ms
    # each). Small texts are encoded in background rounds while the caller builds the previous
    # round's lists with the GIL held; the GIL is released only while waiting for a round, which
    # can be too short for the counter thread to be scheduled on a loaded machine, so a check on
    # them alone would be flaky.
    texts = ["".join(_texts(400, seed=5)) * 32] * 3
    assert len(texts[0].encode()) > 4 << 20
    assert _gil_released_during(lambda: tok.encode_batch(texts, num_threads=2))


def test_gil_released_by_dataprep_build(tmp_path):
    from rwkv5.dataprep import build

    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for i, t in enumerate(_texts(3000, seed=7)):
            f.write('{"text": %s}\n' % __import__("json").dumps(t))
    (tmp_path / "out").mkdir()
    assert _gil_released_during(
        lambda: build([str(src)], str(tmp_path / "out" / "train"), workers=1)
    )


# -- Ctrl-C ------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import os, sys, signal, time, threading
    import numpy as np
    what, outdir = sys.argv[1], sys.argv[2]
    def fire():
        time.sleep(0.05 if what == "encode_batch" else 0.3)
        os.kill(os.getpid(), signal.SIGINT)
    if what == "forward":
        import rwkv5
        from rwkv5.testing import random_state_dict
        m = rwkv5.Model.from_state_dict(random_state_dict(n_layer=4, n_embd=256, head_size=64, vocab_size=1000))
        work = lambda: [m.forward(list(range(1000)) * 4) for _ in range(1000)]
    elif what == "encode_batch":
        from rwkv5.tokenizer import WorldTokenizer
        tok = WorldTokenizer()
        text = "hello world мир 世界 some english words and more 12345. " * 2000
        per_text = len(tok.encode(text))
        texts = [text] * 5000   # one call: ~600 MB of input in 16 MiB rounds, one shared str
        full_kib = 5000 * per_text * 8 // 1024   # list slots of the whole result
        import resource
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        def work():
            try:
                tok.encode_batch(texts, num_threads=2)
            finally:
                grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
                print("GREW", grown, "FULL", full_kib)
    else:
        from rwkv5.dataprep import build
        src = os.path.join(outdir, "in.jsonl")
        os.makedirs(os.path.join(outdir, "out"))
        with open(src, "w") as f:  # ~70 MB: far more than is done before the signal
            f.write('{"text": "a document with some words in it, и немного текста"}\\n' * 1000000)
        work = lambda: build([src], os.path.join(outdir, "out", "train"), workers=1)
        def fire():  # once the build is under way (its plan is written before the C tasks run)
            while not os.path.exists(os.path.join(outdir, "out", "train.work", "plan.json")):
                time.sleep(0.01)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=fire, daemon=True).start()
    try:
        work()
        print("FINISHED")
    except KeyboardInterrupt:
        print("INTERRUPTED")
        sys.exit(3)
""")


@pytest.mark.parametrize("what", ["forward", "encode_batch", "build"])
def test_ctrl_c_raises_keyboard_interrupt(tmp_path, what):
    # The work loops far longer than any test timeout, so FINISHED would mean the signal was lost.
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, what, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "INTERRUPTED" in p.stdout
    if what == "encode_batch":
        # Interrupted inside the one call, between rounds: only a small part of the result was
        # ever built (uninterrupted, the call would build all of it before the signal is seen).
        w = p.stdout.split()
        grew, full = int(w[w.index("GREW") + 1]), int(w[w.index("FULL") + 1])
        assert grew < full // 4, (grew, full)
    if what == "build":
        out = tmp_path / "out"
        # no final output appears half-written: only the work folder (resumable) may exist
        finals = [f for f in os.listdir(out)] if out.exists() else []
        assert not any(f.endswith((".bin", ".idx", ".zst")) for f in finals), finals


_CHILD_ONE_CALL = textwrap.dedent("""
    import os, sys, signal, time, threading
    import numpy as np
    import rwkv5
    from rwkv5.testing import random_state_dict
    m = rwkv5.Model.from_state_dict(random_state_dict(n_layer=4, n_embd=256, head_size=64, vocab_size=1000))
    t0 = time.perf_counter()
    m.forward(list(range(200)), mode="recurrent")
    rate = 200 / (time.perf_counter() - t0)
    T = int(rate * 30)                    # one call that would run for about 30 s
    fired = []
    def fire():
        time.sleep(0.5)
        fired.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=fire, daemon=True).start()
    state = m.new_state()
    try:
        m.forward(np.arange(T) % 1000, state, mode="recurrent")
        print("FINISHED")
    except KeyboardInterrupt:
        late = time.perf_counter() - fired[0]
        # the state passed in is untouched and the model still computes the same as before
        ok = not state.att_kv.any() and np.array_equal(m.forward([1, 2, 3])[0], m.forward([1, 2, 3])[0])
        print("INTERRUPTED", f"{late:.3f}", "OK" if ok else "BROKEN")
        sys.exit(3)
""")


def test_ctrl_c_interrupts_one_long_forward_call():
    """SIGINT during a single ~30 s forward call ends it (between layers) with KeyboardInterrupt,
    within seconds rather than at the end of the call, and leaves the model usable."""
    p = subprocess.run(
        [sys.executable, "-c", _CHILD_ONE_CALL],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr[-2000:])
    words = p.stdout.split()
    assert words[0] == "INTERRUPTED" and words[2] == "OK", p.stdout
    assert float(words[1]) < 10.0, p.stdout  # the uninterrupted call would run ~30 s more


_CHILD_SIGNAL_AFTER_LAST_CHECK = textwrap.dedent("""
    import sys, tracemalloc
    import numpy as np
    import rwkv5
    from rwkv5 import _model
    from rwkv5.testing import random_state_dict
    m = rwkv5.Model.from_state_dict(random_state_dict(n_layer=2, n_embd=64, head_size=16, vocab_size=2000))
    st = m.new_state()
    st.att_kv[...] = 0.5
    want = m.forward(list(range(64)), st, full_output=True)[0]
    _model._test_signal_after_forward(True)   # SIGINT once each forward is past its last cancel check
    outcomes = {}
    tracemalloc.start()
    t0 = None
    for i in range(60):
        if i == 10:
            t0 = tracemalloc.get_traced_memory()[0]
        kw = [dict(full_output=True), dict(full_output=False), dict(full_output=True, mode="recurrent")][i % 3]
        try:
            (m.hidden_states if i % 4 == 3 else m.forward)(list(range(64)), st, **kw)
            outcomes["result"] = outcomes.get("result", 0) + 1
        except KeyboardInterrupt:
            outcomes["KeyboardInterrupt"] = outcomes.get("KeyboardInterrupt", 0) + 1
        except BaseException as e:
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
    grew = tracemalloc.get_traced_memory()[0] - t0
    _model._test_signal_after_forward(False)
    untouched = bool((st.att_kv == 0.5).all() and not st.att_x.any())
    same = np.array_equal(m.forward(list(range(64)), st, full_output=True)[0], want)
    print(sorted(outcomes.items()), grew, untouched, same)
""")


def test_ctrl_c_after_the_last_cancel_check_raises_keyboard_interrupt():
    """Issue 13: SIGINT that the poll turns into KeyboardInterrupt after the forward passed its last
    cancel check (the head GEMM of full_output) must raise it, never return logits with the
    exception set (SystemError). A test hook makes that timing certain on every call; each
    interrupted call releases its logits and leaves the state passed in untouched."""
    p = subprocess.run(
        [sys.executable, "-c", _CHILD_SIGNAL_AFTER_LAST_CHECK],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert p.returncode == 0, (p.stdout, p.stderr[-2000:])
    outcomes, grew, untouched, same = p.stdout.rsplit(None, 3)
    assert outcomes == "[('KeyboardInterrupt', 60)]", p.stdout
    assert int(grew) < 256 * 1024, p.stdout  # 50 calls x 64 x 2000 floats if the logits leaked
    assert untouched == "True" and same == "True", p.stdout


# -- other threads writing to the arrays a forward reads ---------------------------------------

_CHILD_MUTATORS = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import rwkv5
    from rwkv5.testing import random_state_dict
    V = 300
    m = rwkv5.Model.from_state_dict(random_state_dict(n_layer=2, n_embd=64, head_size=16, vocab_size=V, seed=5))
    T = 3000
    toks = [np.arange(T, dtype=np.int32) % V for _ in range(4)]    # C-contiguous int32: no copy in Python
    states = [m.new_state() for _ in range(2)]
    in_call = [0] * 4          # worker k: number of the call under way, 0 between calls
    stop = threading.Event()
    counts = {"result": 0, "ValueError": 0}
    failures = []
    lock = threading.Lock()

    def forwards(k):
        for i in range(12):
            mode = ["recurrent", "parallel"][(i + k) % 2]
            in_call[k] = i + 1
            try:
                out, st = m.forward(toks[k], states[k % 2], mode=mode, full_output=bool(i % 2))
                assert out.shape == ((T, V) if i % 2 else (V,)) and st.att_kv.shape == states[0].att_kv.shape
                what = "result"
            except ValueError as e:          # a clean error: an id outside the vocabulary when checked
                assert "outside the vocabulary" in str(e), e
                what = "ValueError"
            except BaseException as e:
                failures.append(repr(e))
                return
            finally:
                in_call[k] = 0
            with lock:
                counts[what] += 1

    def mutate_tokens(j):
        # once a call on one of its arrays is under way (past the checks, in C with the GIL
        # released), write an id outside the vocabulary where the call reads last, then restore it
        rng = np.random.default_rng(100 + j)
        done = set()
        while not stop.is_set():
            for k in (2 * j, 2 * j + 1):
                call = in_call[k]
                if call and (k, call) not in done:
                    done.add((k, call))
                    time.sleep(float(rng.uniform(0.0, 0.004)))
                    a = toks[k]
                    bad = [2**30, -5, V, 2**31 - 1][int(rng.integers(4))]
                    a[-1] = a[int(rng.integers(T))] = bad
                    while in_call[k] == call and not stop.is_set():
                        time.sleep(0.0005)
                    a[...] = np.arange(T, dtype=np.int32) % V
            time.sleep(0.0002)

    def mutate_states(j):
        rng = np.random.default_rng(200 + j)
        s = states[j]
        while not stop.is_set():
            s.att_kv.reshape(-1)[int(rng.integers(s.att_kv.size))] = [np.nan, np.inf, 1e30, 0.0][int(rng.integers(4))]
            s.att_x[...] = rng.standard_normal(s.att_x.shape)
            s.ffn_x.fill(np.nan if rng.integers(2) else 0.0)
            time.sleep(0.0005)

    workers = [threading.Thread(target=forwards, args=(k,)) for k in range(4)]
    mutators = [threading.Thread(target=f, args=(j,)) for j in range(2) for f in (mutate_tokens, mutate_states)]
    for t in mutators + workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in mutators:
        t.join()
    # the model is unharmed: the same ids give the same logits as a fresh copy of the model
    ref = rwkv5.Model.from_state_dict(random_state_dict(n_layer=2, n_embd=64, head_size=16, vocab_size=V, seed=5))
    same = np.array_equal(m.forward([1, 2, 3])[0], ref.forward([1, 2, 3])[0])
    print("FAILURES", len(failures), failures[:3])
    print("COUNTS", counts["result"], counts["ValueError"], "SAME", same)
""")


def test_threads_mutating_tokens_and_states_during_forward():
    """Issue 20: 8 threads — 4 running forwards (recurrent and parallel, 3,000 tokens) on
    C-contiguous int32 token arrays and shared states, 4 writing into them meanwhile: ids outside
    the vocabulary (2**30, -5, V) while a call is under way, NaN/inf into the states. Every call ends in a result or a clean ValueError; the
    interpreter never crashes and never reads past the embedding. Bounded: 48 forwards."""
    p = subprocess.run(
        [sys.executable, "-c", _CHILD_MUTATORS],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    words = p.stdout.split()
    assert words[words.index("FAILURES") + 1] == "0", p.stdout
    results, errors = int(words[words.index("COUNTS") + 1]), int(words[words.index("COUNTS") + 2])
    assert results + errors == 48, p.stdout
    assert words[words.index("SAME") + 1] == "True", p.stdout
