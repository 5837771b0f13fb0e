"""rwkv5.tokenizer.WorldTokenizer: compatibility with the reference, API, error policies."""

import hashlib
import pathlib
import threading

import numpy as np
import pytest

from rwkv5.tokenizer import ReferenceTokenizer, StreamDecoder, WorldTokenizer, default_vocab_path

DATA = pathlib.Path(__file__).parent / "data" / "multilingual.txt"
WORLD_SHA256 = "e6dee3d4e31b4d5c40ac99508ac6c701ceef4bed681bf2167ce9a908552bca89"


def sections():
    """{language: text} of tests/data/multilingual.txt (sections start with '=== name ===')."""
    out, name = {}, None
    for line in DATA.read_text(encoding="utf-8").split("\n"):
        if line.startswith("=== ") and line.endswith(" ==="):
            name = line[4:-4]
            out[name] = []
        else:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


@pytest.fixture(scope="module")
def trie():
    """The `rwkv` package's own TRIE_TOKENIZER (only this submodule: no torch)."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(default_vocab_path())


# ---- the vocab we load by default ---------------------------------------------------------------


def test_default_vocab_is_the_world_vocab(tok):
    data = pathlib.Path(default_vocab_path()).read_bytes()
    # the `rwkv` wheel ships the CRLF copy (SHA-256 8324476023347dec...); same content
    assert hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest() == WORLD_SHA256
    assert tok.n_vocab == 65530 and tok.n_tokens == 65529 and tok.max_token_len == 128
    assert tok.eot_token == 0


def test_fixture_vocab_equals_package_vocab(fixtures_dir, tok):
    other = WorldTokenizer(fixtures_dir / "rwkv_vocab_v20230424.txt")
    text = DATA.read_text(encoding="utf-8")
    assert other.encode(text) == tok.encode(text)


def test_missing_rwkv_package_says_pip_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rwkv" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install rwkv"):
        WorldTokenizer()


def test_dataprep_finds_the_vocab_with_the_tokenizer_lookup(monkeypatch, tmp_path):
    """One default_vocab_path: data prep uses the tokenizer's lookup (same path, same advice when
    `rwkv` is missing, with the data-prep option named) instead of a second copy of its own."""
    import importlib
    import importlib.util

    from rwkv5.dataprep import DataprepError, build

    build_mod = importlib.import_module("rwkv5.dataprep.build")

    assert build_mod.default_vocab_path is default_vocab_path
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rwkv" else real(name, *a)
    )
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DataprepError, match=r"run `pip install rwkv` \(or pass --vocab PATH\)"):
        build([str(tmp_path / "a.txt")], str(tmp_path / "out"))
    assert not list(tmp_path.glob("out*"))


# ---- compatibility with the reference encoders ----------------------------------------------------


@pytest.mark.parametrize(
    "text, ids",
    [("Hello world", [33155, 40213]), ("\n\nUser: hi", [261, 24281, 59, 4571]), (b"\xe6", [231])],
)
def test_spec_examples(tok, text, ids):
    assert tok.encode(text) == ids


def test_multilingual_sections_equal_trie_tokenizer(tok, trie):
    secs = sections()
    assert len(secs) >= 17
    for name, text in secs.items():
        assert tok.encode(text) == trie.encode(text), name
        assert tok.decode(tok.encode(text)) == text, name


def test_whole_file_and_scripts_present(tok, trie):
    text = DATA.read_text(encoding="utf-8")
    # the scripts the task asks for are really in the sample
    for lo, hi, script in [
        (0x0400, 0x04FF, "Cyrillic"),
        (0x0370, 0x03FF, "Greek"),
        (0x0600, 0x06FF, "Arabic"),
        (0x0590, 0x05FF, "Hebrew"),
        (0x0900, 0x097F, "Devanagari"),
        (0x0E00, 0x0E7F, "Thai"),
        (0x4E00, 0x9FFF, "CJK"),
        (0x3040, 0x30FF, "Kana"),
        (0xAC00, 0xD7AF, "Hangul"),
        (0x1F300, 0x1FAFF, "emoji"),
    ]:
        assert any(lo <= ord(c) <= hi for c in text), script
    assert " " * 64 in text and "\n\n\n\n" in text
    assert tok.encode(text) == trie.encode(text)
    ref = ReferenceTokenizer()
    assert tok.encode(text) == ref.encode(text)


def test_runs_of_whitespace(tok, trie):
    for n in (1, 2, 3, 63, 64, 127, 128, 129, 300, 1000):
        for ch in (" ", "\n", "\t", "\r\n", " \n"):
            s = ch * n
            assert tok.encode(s) == trie.encode(s), (ch, n)


def test_text_at_every_offset_near_the_end(tok, trie):
    """The encoder switches from its unchecked walk to a bounds-checked one in the last
    max_token_len + 1 bytes: cut a text at every length around that switch."""
    text = (sections()["en"] + " " * 130 + sections()["zh"]).encode("utf-8")
    for n in range(0, 400):
        assert tok.encode(text[:n]) == trie.encodeBytes(text[:n]), n


def test_encode_accepts_bytes_like(tok):
    b = "Grüße, 世界".encode("utf-8")
    ids = tok.encode(b)
    assert tok.encode(bytearray(b)) == ids
    assert tok.encode(memoryview(b)) == ids
    assert tok.encode("Grüße, 世界") == ids
    assert tok.encode("") == [] and tok.encode(b"") == []


def test_invalid_utf8_bytes_roundtrip(tok, trie):
    b = bytes(range(256)) * 3 + b"\xff\xfe\xc3(\xe6\x97"
    ids = tok.encode(b)
    assert ids == trie.encodeBytes(b)
    assert tok.decode_bytes(ids) == b


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [123, None, 1.5, ["a"], object()])
def test_encode_rejects_non_text(tok, bad):
    with pytest.raises(TypeError, match="text must be str or bytes"):
        tok.encode(bad)


def test_lone_surrogate_raises_naming_position(tok):
    with pytest.raises(UnicodeEncodeError) as e:
        tok.encode("ab\ud800cd")
    assert e.value.start == 2 and "surrogates not allowed" in str(e.value)
    with pytest.raises(UnicodeEncodeError):
        tok.encode_batch(["ok", "x\udfff"])
    with pytest.raises(UnicodeEncodeError):
        tok.encode_to_numpy("\ud83d")
    # the documented way to tokenize them anyway: surrogatepass bytes
    assert (
        tok.decode_bytes(tok.encode("a\ud800".encode("utf-8", "surrogatepass"))) == b"a\xed\xa0\x80"
    )


def test_encode_batch_type_errors(tok):
    with pytest.raises(TypeError, match="not a single str"):
        tok.encode_batch("abc")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str or bytes"):
        tok.encode_batch(["a", 5])
    with pytest.raises(TypeError):
        tok.encode_batch(5)
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=0)
    with pytest.raises(TypeError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=1.5)


# ---- numpy and batch ------------------------------------------------------------------------


def test_encode_to_numpy(tok):
    text = DATA.read_text(encoding="utf-8")
    arr = tok.encode_to_numpy(text)
    assert arr.dtype == np.uint16 and arr.ndim == 1
    assert arr.tolist() == tok.encode(text)
    assert tok.encode_to_numpy("").shape == (0,)


def test_encode_to_numpy_threads_equal_one_thread(tok):
    # > 512 KiB so that the text really is cut into pieces, with piece boundaries inside
    # multi-byte characters and inside runs of spaces
    text = (DATA.read_text(encoding="utf-8") + " " * 333) * 150
    one = tok.encode_to_numpy(text, num_threads=1)
    assert one.tolist() == tok.encode(text)
    for n in (2, 3, 4, 7, None):
        assert np.array_equal(tok.encode_to_numpy(text, num_threads=n), one), n
    spaces = " " * 3_000_000
    assert np.array_equal(tok.encode_to_numpy(spaces, num_threads=4), tok.encode_to_numpy(spaces))


def test_encode_batch_equals_encode(tok):
    secs = list(sections().values())
    texts = secs + [t.encode("utf-8") for t in secs] + ["", b"\xff\xfe", "x" * 5000]
    expected = [tok.encode(t) for t in texts]
    for n in (1, 2, 3, 8, None):
        assert tok.encode_batch(texts, num_threads=n) == expected, n
    assert tok.encode_batch([]) == []
    assert tok.encode_batch(iter(secs)) == [tok.encode(t) for t in secs]


def test_encode_batch_with_a_big_text(tok):
    """A text >= 4 MiB in a batch is split across threads (the re-join must be exact)."""
    big = DATA.read_text(encoding="utf-8") * 600
    texts = ["first", big, "last"]
    out = tok.encode_batch(texts, num_threads=2)
    assert out[0] == tok.encode("first") and out[2] == tok.encode("last")
    assert out[1] == tok.encode(big)


def test_encode_batch_in_several_rounds(tok):
    """More than 4 MB of texts: encoded in rounds, the next round in worker threads while this
    thread builds the lists of the previous one."""
    unit = DATA.read_text(encoding="utf-8")
    texts = [unit[i % 900 :] + str(i) for i in range(1400)]  # ~10 MB, every text different
    assert sum(len(t.encode("utf-8")) for t in texts) > 9_000_000
    expected = [tok.encode(t) for t in texts]
    for n in (1, 2, 3):
        assert tok.encode_batch(texts, num_threads=n) == expected, n
        ids, offsets = tok.encode_batch(texts, num_threads=n, as_numpy=True)
        assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == expected, n


def test_encode_batch_as_numpy(tok):
    """The ragged result: one uint16 array of all ids and int64 offsets (len(texts) + 1), equal to
    the list result, for empty texts, bytes, a text >= 4 MiB (split across threads) and no text."""
    big = DATA.read_text(encoding="utf-8") * 600
    texts = ["", "Hello world", b"\xff\xfe", "", big, "x" * 5000, ""]
    expected = tok.encode_batch(texts, num_threads=1)
    for n in (1, 2, None):
        ids, offsets = tok.encode_batch(texts, num_threads=n, as_numpy=True)
        assert (
            ids.dtype == np.uint16
            and offsets.dtype == np.int64
            and offsets.shape == (len(texts) + 1,)
        )
        assert offsets[0] == 0 and offsets[-1] == len(ids) == sum(len(e) for e in expected)
        assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == expected, n
    ids, offsets = tok.encode_batch(iter(["a", "b"]), as_numpy=True)
    assert ids.tolist() == tok.encode("a") + tok.encode("b") and offsets.tolist() == [0, 1, 2]
    ids, offsets = tok.encode_batch([], as_numpy=True)
    assert ids.shape == (0,) and offsets.tolist() == [0]
    with pytest.raises(TypeError, match="texts\\[1\\] must be str or bytes-like, not int"):
        tok.encode_batch(["a", 5], as_numpy=True)
    with pytest.raises(TypeError, match="as_numpy must be True or False"):
        tok.encode_batch(["a"], as_numpy="yes")


def test_python_threads_share_a_tokenizer(tok):
    texts = list(sections().values())
    expected = [tok.encode(t) for t in texts]
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append([tok.encode(t) for t in texts] == expected)
                results.append(tok.encode_batch(texts, num_threads=2) == expected)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results) and len(results) == 160


def test_large_string_encodes(tok):
    """20 MB in one string: linear time (no quadratic buffer growth), numpy and list agree."""
    unit = DATA.read_text(encoding="utf-8")
    text = unit * (20_000_000 // len(unit.encode("utf-8")) + 1)
    arr = tok.encode_to_numpy(text)
    assert np.array_equal(tok.encode_to_numpy(text, num_threads=2), arr)
    assert arr.tolist() == tok.encode(text)
    assert tok.decode_bytes(arr) == text.encode("utf-8")


@pytest.mark.slow
def test_100mb_string_encodes(tok):
    text = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸。\n" * 1_500_000
    assert len(text.encode("utf-8")) > 100_000_000
    arr = tok.encode_to_numpy(text, num_threads=2)
    unit = tok.encode("The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸。\n")
    assert arr[: len(unit) * 3].tolist() == tok.encode(text[: 3 * 54])[: len(unit) * 3]
    assert len(tok.encode(text)) == len(arr)


# ---- decoding -------------------------------------------------------------------------------


def test_decode_roundtrip(tok):
    text = DATA.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.uint16)) == text
    assert tok.decode(np.array(ids, dtype=np.int64)) == text
    assert tok.decode(tuple(ids)) == text
    assert tok.decode(iter(ids)) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_decode_errors_policy_for_ids_without_entry(tok):
    hello = tok.encode("Hello")
    ids = hello + [0] + hello + [70000] + hello + [2**70]
    with pytest.raises(ValueError, match=r"ids\[1\] = 0 is the end-of-text token"):
        tok.decode(ids, errors="strict")
    with pytest.raises(ValueError, match=rf"ids\[{2 * len(hello)}\] = 70000 is not in the vocab"):
        tok.decode(hello + hello + [70000], errors="strict")
    with pytest.raises(ValueError, match="not in the vocab"):
        tok.decode_bytes([2**70])
    assert tok.decode(ids) == "Hello\ufffdHello\ufffdHello\ufffd"
    assert tok.decode(ids, errors="ignore") == "HelloHelloHello"
    assert tok.decode_bytes(ids, errors="replace") == "Hello\ufffdHello\ufffdHello\ufffd".encode(
        "utf-8"
    )
    assert tok.decode_bytes(ids, errors="ignore") == b"HelloHelloHello"
    with pytest.raises(ValueError, match="errors must be"):
        tok.decode(ids, errors="backslashreplace")


def test_decode_invalid_utf8_follows_errors(tok):
    ids = tok.encode(b"ab\xe6cd")
    assert tok.decode(ids) == "ab\ufffdcd"
    assert tok.decode(ids, errors="ignore") == "abcd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids, errors="strict")
    assert tok.decode_bytes(ids) == b"ab\xe6cd"


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        ([1, -1], ValueError, r"ids\[1\] = -1 is negative"),
        ([-(2**80)], ValueError, "negative"),
        ([1, 2.0], TypeError, r"ids\[1\] is a float"),
        ([1, "a"], TypeError, r"ids\[1\] must be an int"),
        ([None], TypeError, r"ids\[0\] must be an int"),
        (5, TypeError, "sequence"),
        ("abc", TypeError, "ids must be a sequence of ints"),
        (b"abc", TypeError, "ids must be a sequence of ints"),
        (np.array([1.0, 2.0]), TypeError, "floats"),
        (np.array([[1, 2]]), ValueError, "one-dimensional"),
        (np.array([5, -3], dtype=np.int32), ValueError, r"ids\[1\] = -3 is negative"),
    ],
)
def test_decode_bad_ids(tok, bad, exc, msg):
    for errors in ("strict", "replace", "ignore"):
        with pytest.raises(exc, match=msg):
            tok.decode(bad, errors=errors)
        with pytest.raises(exc, match=msg):
            tok.decode_bytes(bad, errors=errors)


def test_decode_numpy_dtypes(tok):
    ids = tok.encode("Grüße 世界")
    for dt in (np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64):
        assert tok.decode(np.array(ids, dtype=dt)) == "Grüße 世界"
    assert tok.decode(np.array(ids)[::2]) == tok.decode(ids[::2])  # non-contiguous view
    assert tok.decode([np.int64(i) for i in ids]) == "Grüße 世界"


def test_token_lookup(tok):
    for i in range(1, tok.n_vocab):
        b = tok.decode_single_token_bytes(i)
        assert tok.token_to_id(b) == i
        assert tok.id_to_token(i) == b
    assert (
        tok.decode_single_token_bytes(1) == b"\x00"
        and tok.decode_single_token_bytes(231) == b"\xe6"
    )
    assert tok.token_to_id(" world") == 40213
    for bad in (0, tok.n_vocab, 2**40):
        with pytest.raises(KeyError):
            tok.decode_single_token_bytes(bad)
    with pytest.raises(ValueError, match="negative"):
        tok.decode_single_token_bytes(-1)
    with pytest.raises(TypeError):
        tok.decode_single_token_bytes(1.0)
    with pytest.raises(KeyError):
        tok.token_to_id("this is certainly not one token")
    with pytest.raises(KeyError):
        tok.token_to_id(b"")


# ---- streaming decode -----------------------------------------------------------------------


def test_stream_decoder_waits_for_complete_characters(tok):
    dec = tok.stream_decoder()
    # "日" is E6 97 A5: feed it as three single-byte tokens (id = byte + 1)
    assert dec.feed(0xE6 + 1) == ""
    assert dec.pending == b"\xe6"
    assert dec.feed(0x97 + 1) == ""
    assert dec.feed(0xA5 + 1) == "日"
    assert dec.feed(tok.token_to_id("Hello")) == "Hello"
    assert dec.feed(0xE6 + 1) == ""
    assert dec.flush() == "\ufffd"
    assert dec.flush() == ""


def test_stream_decoder_matches_decode(tok):
    text = DATA.read_text(encoding="utf-8")
    ids = tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.feed(i) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    # no piece ever ends inside a character: each is valid on its own
    assert all(p.encode("utf-8").decode("utf-8") == p for p in pieces)


def test_stream_decoder_errors(tok):
    dec = tok.stream_decoder(errors="strict")
    with pytest.raises(ValueError, match="end-of-text"):
        dec.feed(0)
    assert tok.stream_decoder(errors="ignore").feed(0) == ""
    assert tok.stream_decoder().feed(0) == "\ufffd"
    with pytest.raises(ValueError, match="errors must be"):
        tok.stream_decoder(errors="nope")


def test_reachable_from_the_package():
    import rwkv5

    assert rwkv5.tokenizer.WorldTokenizer is WorldTokenizer
