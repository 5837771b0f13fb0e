"""Unusual inputs at the C bindings: states and state dicts in another byte order or at an odd
address, ids beyond 2**64, too many positions, non-text given to the tokenizer, and the release
of everything on the error paths."""

import gc
import sys
import tracemalloc

import numpy as np
import pytest

import rwkv5
from rwkv5.dataprep import _dataprep
from rwkv5.testing import random_state_dict
from rwkv5.tokenizer import WorldTokenizer

V = 300


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(n_layer=2, n_embd=64, head_size=16, vocab_size=V, seed=11)


@pytest.fixture(scope="module")
def model(sd):
    return rwkv5.Model.from_state_dict(sd)


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


def _misaligned_like(a):
    """A C-contiguous float32 copy of `a` whose data starts 1 byte past an aligned address."""
    raw = np.zeros(a.nbytes + 8, np.uint8)
    off = (-raw.ctypes.data) % 8 + 1
    out = raw[off : off + a.nbytes].view(np.float32).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


def _some_state(model, seed=0):
    s = model.new_state()
    rng = np.random.default_rng(seed)
    return rwkv5.State(
        *(
            rng.standard_normal(a.shape).astype(np.float32) * 0.1
            for a in (s.att_x, s.att_kv, s.ffn_x)
        )
    )


# -- states: alignment and byte order ---------------------------------------------------------


@pytest.mark.parametrize("full", [False, True])
def test_misaligned_state_is_copied_not_refused(model, full):
    st = _some_state(model)
    want, want_st = model.forward([5, 6, 7], st, full_output=full)
    odd = rwkv5.State(*(_misaligned_like(a) for a in (st.att_x, st.att_kv, st.ffn_x)))
    got, got_st = model.forward([5, 6, 7], odd, full_output=full)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_st.att_kv, want_st.att_kv)
    np.testing.assert_array_equal(odd.att_kv, st.att_kv)  # the state passed in is untouched


def test_big_endian_state_is_converted(model):
    st = _some_state(model, 1)
    want, want_st = model.forward([1, 2, 3], st)
    be = rwkv5.State(*(a.astype(">f4") for a in (st.att_x, st.att_kv, st.ffn_x)))
    got, got_st = model.forward([1, 2, 3], be)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_st.ffn_x, want_st.ffn_x)
    with pytest.raises(TypeError, match=r"state.att_x: expected dtype float32, got float64"):
        model.forward([1], rwkv5.State(st.att_x.astype(np.float64), st.att_kv, st.ffn_x))


def test_big_endian_state_dict_is_converted(sd, model):
    be = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in sd.items()}
    assert all(not v.dtype.isnative for v in be.values())
    m = rwkv5.Model.from_state_dict(be)
    np.testing.assert_array_equal(m.forward([3, 4, 5])[0], model.forward([3, 4, 5])[0])


def test_transposed_embedding_is_the_one_blamed(sd):
    bad = dict(sd)
    bad["emb.weight"] = sd["emb.weight"].T
    with pytest.raises(
        ValueError, match=r"tensor 'emb.weight': expected shape \(V, 64\).*got \(64, 300\)"
    ):
        rwkv5.Model.from_state_dict(bad)


# -- token ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, where, value",
    [
        ([2**64], "0", 2**64),
        ([1, 2**64 + 5], "1", 2**64 + 5),
        ([[1, 2], [3, 2**70]], "1, 1", 2**70),
        ([-1, 2**63], "0", -1),
        ([5, 2**63], "1", 2**63),
    ],
)
def test_ids_beyond_int64_are_out_of_range(model, ids, where, value):
    with pytest.raises(
        ValueError, match=rf"tokens\[{where}\] = {value} is outside the vocabulary \[0, {V}\)"
    ):
        model.forward(ids)


def test_mixed_non_integers_are_still_type_errors(model):
    with pytest.raises(TypeError, match="mixed types"):
        model.forward([1, None])
    with pytest.raises(TypeError, match="float64"):
        model.forward([1.5, 2])


def test_too_many_positions_names_the_limit(model):
    huge = np.broadcast_to(np.int32(1), (40000, 30000))  # no memory behind it
    with pytest.raises(
        ValueError, match=r"1200000000 positions, more than the 1073741823 \(2\*\*30 - 1\)"
    ):
        model.forward(huge)
    # the C check says the same when called directly
    st = model.new_state(2)
    with pytest.raises(ValueError, match=r"positions, more than the 1073741823 \(2\*\*30 - 1\)"):
        model._c.forward(
            np.broadcast_to(np.int32(1), (2, 2**29 + 1)), st.att_x, st.att_kv, st.ffn_x, 1, False
        )


def test_c_forward_checks_its_own_copy_of_the_ids(model):
    st = model.new_state(1)
    for bad in (-5, V, 2**30):
        toks = np.array([[1, 2, bad, 3]], np.int32)
        with pytest.raises(
            ValueError, match=rf"tokens\[0, 2\] = {bad} is outside the vocabulary \[0, {V}\)"
        ):
            model._c.forward(toks, st.att_x, st.att_kv, st.ffn_x, 0, True)


# -- the tokenizer takes text only --------------------------------------------------------------


def test_encode_refuses_arrays_of_ids(tok):
    for call in (tok.encode, tok.encode_to_numpy, lambda x: tok.encode_batch(["a", x])):
        with pytest.raises(
            TypeError, match=r"must be str or bytes-like, not numpy.ndarray \(items of format 'i'"
        ):
            call(np.array([72, 101], np.int32))
    with pytest.raises(TypeError, match=r"must be str or bytes-like, not float"):
        tok.encode(1.5)


def test_encode_accepts_bytes_like_text(tok):
    want = tok.encode(b"Hello world")
    assert tok.encode(bytearray(b"Hello world")) == want
    assert tok.encode(memoryview(b"xHello world")[1:]) == want
    assert tok.encode(np.frombuffer(b"Hello world", np.uint8)) == want
    assert tok.encode_batch([bytearray(b"Hello world"), "Hello world"], num_threads=2) == [
        want,
        want,
    ]
    assert tok.encode_to_numpy(bytearray(b"Hello world")).tolist() == want


def test_decode_ids_beyond_int64(tok):
    with pytest.raises(
        ValueError, match=r"ids\[1\] = 18446744073709551616 is out of range, not in the vocab"
    ):
        tok.decode_bytes([33155, 2**64])
    with pytest.raises(ValueError, match=r"ids\[0\] = 18446744073709551616 is out of range"):
        tok.decode(np.array([2**64], object), errors="strict")
    assert tok.decode(np.array([33155, 40213], object)) == "Hello world"
    with pytest.raises(KeyError, match="18446744073709551616 has no token bytes"):
        tok.decode_single_token_bytes(2**64)
    with pytest.raises(ValueError, match="is negative"):
        tok.decode_single_token_bytes(-(2**64))


def test_dataprep_helpers_take_bytes_like_and_refuse_text():
    t = WorldTokenizer().capsule
    assert _dataprep.encode_batch_count(t, [b"Hello world"], 1) == 2
    frame = _dataprep.zstd_compress(bytearray(b"abc" * 100), 3)
    assert _dataprep.zstd_decompress(bytearray(frame), 300) == b"abc" * 100
    with pytest.raises(TypeError, match="data: expected a bytes-like object, got str"):
        _dataprep.zstd_compress("text", 3)
    with pytest.raises(TypeError, match="texts\\[0\\]: expected bytes"):
        _dataprep.encode_batch_count(t, ["text"], 1)


# -- nothing leaks on the error paths -------------------------------------------------------------


def _traced_growth(fn, iters=200):
    for _ in range(20):
        fn()
    gc.collect()
    tracemalloc.start()
    try:
        t0 = tracemalloc.get_traced_memory()[0]
        for _ in range(iters):
            fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - t0
    finally:
        tracemalloc.stop()


def test_forward_error_paths_release_everything(model):
    """Each call below fails after the logits (T x V floats, 76 KiB) or the copy of the ids were
    allocated, or succeeds through the copy of a misaligned state: 200 calls leave nothing behind."""
    T = 64
    toks = np.arange(T, dtype=np.int32).reshape(1, T) % V
    st = model.new_state(1)
    odd_src = tuple(_misaligned_like(a) for a in (st.att_x, st.att_kv, st.ffn_x))
    bad_toks = toks.copy()
    bad_toks[0, -1] = V

    def misaligned_src():  # the C check of the caller's state, reached directly
        with pytest.raises(ValueError, match=r"state.att_x: expected a C-contiguous aligned array"):
            model._c.forward(toks, st.att_x, st.att_kv, st.ffn_x, 1, True, False, odd_src)

    def bad_id():
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model._c.forward(bad_toks, st.att_x, st.att_kv, st.ffn_x, 1, True)

    def bad_src_tuple():
        with pytest.raises(TypeError, match="src: expected a tuple"):
            model._c.forward(toks, st.att_x, st.att_kv, st.ffn_x, 1, True, False, [1, 2, 3])

    one = model.new_state()
    odd = rwkv5.State(*(_misaligned_like(a) for a in (one.att_x, one.att_kv, one.ffn_x)))
    refs = sys.getrefcount(toks), sys.getrefcount(odd_src[1]), sys.getrefcount(odd.att_kv)
    for fn in (
        misaligned_src,
        bad_id,
        bad_src_tuple,
        lambda: model.forward(toks[0], odd, full_output=True),
    ):
        grew = _traced_growth(fn)
        assert grew < 64 * 1024, f"{fn.__name__}: traced memory grew by {grew} bytes over 200 calls"
    assert (sys.getrefcount(toks), sys.getrefcount(odd_src[1]), sys.getrefcount(odd.att_kv)) == refs


def test_dataprep_takes_the_tokenizers_capsule():
    """The data prep tokenizes with rwkv5.tokenizer's object (one vocab parser, one loaded copy):
    its C functions take WorldTokenizer.capsule, which keeps the tokenizer alive on its own, and
    refuse anything else by name."""
    import gc
    import types

    from rwkv5.dataprep.tasks import load_tokenizer

    tok = WorldTokenizer()
    assert isinstance(load_tokenizer(tok.vocab_path), WorldTokenizer)
    cap = tok.capsule
    want = len(tok.encode("Hello world, bonjour le monde"))
    del tok
    gc.collect()
    assert _dataprep.encode_batch_count(cap, [b"Hello world, bonjour le monde"], 1) == want
    import ctypes

    other = ctypes.pythonapi.PyCapsule_New
    other.restype, other.argtypes = (
        ctypes.py_object,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p],
    )
    for bad in (other(1, b"some.other.capsule", None), types.SimpleNamespace(), b"vocab"):
        with pytest.raises(TypeError, match="tokenizer: expected WorldTokenizer.capsule"):
            _dataprep.encode_batch_count(bad, [b"x"], 1)
