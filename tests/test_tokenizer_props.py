"""Property tests: the C tokenizer against the pure-Python twin (and the rwkv TRIE_TOKENIZER) on
arbitrary str and bytes, round trips, and the stream decoder against decode."""

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rwkv5.tokenizer import ReferenceTokenizer, WorldTokenizer

SAMPLE = (pathlib.Path(__file__).parent / "data" / "multilingual.txt").read_text(encoding="utf-8")

_TOK = WorldTokenizer()
_REF = ReferenceTokenizer()

# Text that looks like the vocab's: characters of the multilingual sample (so long tokens match),
# mixed with any code point except lone surrogates (which UTF-8 cannot encode).
sample_chars = st.sampled_from(sorted(set(SAMPLE)))
any_char = st.characters(blacklist_categories=("Cs",))
texts = st.lists(
    st.one_of(
        sample_chars, sample_chars, any_char, st.sampled_from([" " * 8, "\n\n", "the", " de"])
    ),
    max_size=300,
).map("".join)
# byte strings: random bytes, and UTF-8 text cut at arbitrary byte positions
raw_bytes = st.one_of(
    st.binary(max_size=600),
    st.tuples(texts, st.integers(0, 2000), st.integers(0, 2000)).map(
        lambda t: t[0].encode("utf-8")[min(t[1], t[2]) : max(t[1], t[2])]
    ),
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(texts)
def test_str_equals_reference(s):
    ids = _TOK.encode(s)
    assert ids == _REF.encode(s)
    assert _TOK.decode(ids) == s
    assert _TOK.encode_to_numpy(s).tolist() == ids


@SETTINGS
@given(raw_bytes)
def test_bytes_equal_reference_and_roundtrip(b):
    ids = _TOK.encode(b)
    assert ids == _REF.encode(b)
    assert _TOK.decode_bytes(ids) == b
    assert _TOK.decode(ids) == b.decode("utf-8", "replace")


@settings(max_examples=60, deadline=None)
@given(st.lists(raw_bytes, max_size=12), st.integers(1, 5))
def test_batch_equals_single(batch, n):
    assert _TOK.encode_batch(batch, num_threads=n) == [_TOK.encode(b) for b in batch]


def _ragged_to_lists(ids, offsets):
    return [ids[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(raw_bytes, texts), max_size=40), st.integers(1, 5))
def test_batch_as_numpy_equals_list(batch, n):
    ids, offsets = _TOK.encode_batch(batch, num_threads=n, as_numpy=True)
    assert ids.dtype.name == "uint16" and offsets.dtype.name == "int64"
    assert len(offsets) == len(batch) + 1 and offsets[0] == 0 and offsets[-1] == len(ids)
    assert _ragged_to_lists(ids, offsets) == _TOK.encode_batch(batch, num_threads=n)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 65540), max_size=60), st.sampled_from(["replace", "ignore", "strict"])
)
def test_stream_decoder_equals_decode(ids, errors):
    try:
        expected = _TOK.decode(ids, errors=errors)
    except (ValueError, UnicodeDecodeError) as e:
        expected = type(e)
    dec = _TOK.stream_decoder(errors)
    try:
        got = "".join(dec.feed(i) for i in ids) + dec.flush()
    except (ValueError, UnicodeDecodeError) as e:
        got = type(e)
    if expected is UnicodeDecodeError or got is UnicodeDecodeError:
        # strict: both must fail (the stream may see an unknown id first, or vice versa)
        assert isinstance(expected, type) and isinstance(got, type)
    else:
        assert got == expected


@settings(max_examples=100, deadline=None)
@given(texts)
def test_str_equals_rwkv_trie_tokenizer(s):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    global _TRIE
    try:
        trie = _TRIE
    except NameError:
        trie = _TRIE = TRIE_TOKENIZER(_TOK.vocab_path)
    assert _TOK.encode(s) == trie.encode(s)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(texts, raw_bytes.map(lambda b: b.decode("latin-1"))), min_size=1, max_size=8
    ),
    st.integers(9000, 30000),
)
def test_long_texts_equal_reference(parts, size):
    """Texts above 8 KiB take the two-stream path (two halves walked together, then re-joined)."""
    s = "".join(parts) or "x"
    s = s * (size // max(1, len(s.encode("utf-8"))) + 1)
    assert _TOK.encode(s) == _REF.encode(s)
    assert _TOK.encode_to_numpy(s).tolist() == _REF.encode(s)
