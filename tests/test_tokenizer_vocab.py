"""The C vocab parser: World format, CRLF, escapes, custom vocabs, and errors that name the line."""

import pytest

from rwkv5.tokenizer import ReferenceTokenizer, WorldTokenizer, default_vocab_path


def byte_lines():
    """The 256 single-byte tokens (ids 1..256), which every vocab must contain."""
    return [f"{b + 1} b'\\x{b:02x}' 1" for b in range(256)]


def write_vocab(tmp_path, lines, name="vocab.txt", newline="\n"):
    p = tmp_path / name
    p.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return p


@pytest.fixture(scope="module")
def world():
    return WorldTokenizer()


def test_crlf_equals_lf(tmp_path, world):
    data = open(default_vocab_path(), "rb").read()
    lf = tmp_path / "lf.txt"
    crlf = tmp_path / "crlf.txt"
    lf.write_bytes(data.replace(b"\r\n", b"\n"))
    crlf.write_bytes(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    a, b = WorldTokenizer(lf), WorldTokenizer(crlf)
    assert a.n_vocab == b.n_vocab == 65530
    for i in range(1, 65530):
        assert (
            a.decode_single_token_bytes(i)
            == b.decode_single_token_bytes(i)
            == world.decode_single_token_bytes(i)
        )
    text = "CRLF or LF:\r\n the same tokens — 同じ トークン\n"
    assert a.encode(text) == b.encode(text) == world.encode(text)


def test_every_token_matches_the_python_parser(world):
    """Each of the 65,529 literals decoded by C equals ast.literal_eval's reading (reference.py)."""
    ref = ReferenceTokenizer()
    assert len(ref.idx2token) == world.n_tokens
    for i, b in ref.idx2token.items():
        assert world.decode_single_token_bytes(i) == b, i


def test_escapes_and_literal_kinds(tmp_path):
    lines = byte_lines() + [
        "300 '\\x80' 2",  # str \x is a code point: C2 80
        "301 '\\u2002' 3",
        '302 "it\'s" 4',
        "303 '\\\\\\'\\\"\\n\\r\\t' 6",
        "304 'été' 5",  # raw UTF-8
        "305 '   ' 3",  # spaces inside the literal
        "306 b'\\xe6\\x97' 2",  # bytes literal: raw bytes
        "307 'tab\\there' 8",
        "308 '\\U0001F600' 4",
    ]
    tok = WorldTokenizer(write_vocab(tmp_path, lines))
    expect = {
        300: b"\xc2\x80",
        301: "\u2002".encode(),
        302: b"it's",
        303: b"\\'\"\n\r\t",
        304: "été".encode(),
        305: b"   ",
        306: b"\xe6\x97",
        307: b"tab\there",
        308: "\U0001f600".encode(),
    }
    ref = ReferenceTokenizer(write_vocab(tmp_path, lines, "ref.txt"))
    for i, b in expect.items():
        assert tok.decode_single_token_bytes(i) == b == ref.decode_single_token_bytes(i), i
    assert tok.encode("it's   été") == [302, 305, 304]


def test_custom_vocab_with_gaps(tmp_path):
    lines = byte_lines() + ["1000 'hello' 5", "70000 ' world' 6"]
    tok = WorldTokenizer(write_vocab(tmp_path, lines))
    assert tok.n_vocab == 70001 and tok.n_tokens == 258
    assert tok.encode("hello world") == [1000, 70000]
    arr = tok.encode_to_numpy("hello world")
    assert arr.dtype.name == "uint32" and arr.tolist() == [1000, 70000]
    ids, offsets = tok.encode_batch(
        ["hello world", "", " world"], as_numpy=True
    )  # wide ids: uint32
    assert ids.dtype.name == "uint32" and ids.tolist() == [1000, 70000, 70000]
    assert offsets.tolist() == [0, 2, 2, 3]
    assert tok.decode([1000, 500, 70000]) == "hello\ufffd world"
    with pytest.raises(ValueError, match=r"ids\[1\] = 500 is not in the vocab"):
        tok.decode([1000, 500], errors="strict")
    with pytest.raises(KeyError):
        tok.decode_single_token_bytes(500)


def test_custom_vocab_long_tokens_use_the_wide_layout(tmp_path):
    """Tokens > 255 bytes do not fit the compact node layout: the wide one must give the same ids."""
    long_tok = "ab" * 200
    lines = byte_lines() + [f"300 '{long_tok}' 400", "301 'ab' 2", "302 'abab' 4"]
    tok = WorldTokenizer(write_vocab(tmp_path, lines))
    ref = ReferenceTokenizer(write_vocab(tmp_path, lines, "ref.txt"))
    assert tok.max_token_len == 400
    for text in ("ab" * 450 + "a", "x" + "ab" * 199 + "b", "ab" * 200):
        assert tok.encode(text) == ref.encode(text), text[:20]


def test_duplicate_bytes_later_line_wins_like_the_reference(tmp_path):
    lines = byte_lines() + ["300 'ab' 2", "301 'ab' 2"]
    p = write_vocab(tmp_path, lines)
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    assert WorldTokenizer(p).encode("abab") == TRIE_TOKENIZER(str(p)).encode("abab") == [301, 301]


@pytest.mark.parametrize(
    "line, message",
    [
        ("300 'ab' 3", "line 257: token is 2 bytes but the length column says 3"),
        ("300 'ab 2", "line 257: literal is not closed"),
        ("300 ab 2", "line 257: expected a quoted"),
        ("300 'a\\qb' 3", "line 257: unsupported escape"),
        ("300 '\\x4' 1", "line 257: truncated"),
        ("300 '\\ud800' 3", "line 257: surrogate"),
        ("300 b'é' 2", "line 257: non-ASCII character in a bytes literal"),
        ("x300 'ab' 2", "line 257: the id is not a decimal number"),
        ("-5 'ab' 2", "line 257: the id is not a decimal number"),
        ("300 'ab' 2.0", "line 257: the byte length"),
        ("300", "line 257: expected '<id> <literal> <byte length>'"),
        ("300 '' 0", "line 257: empty token"),
        ("12 'ab' 2", "line 257: id 12 is already defined on line 12"),
        ("99999999 'ab' 2", "line 257: id 99999999 is out of range"),
        ("300 'a' + 'b' 2", "line 257"),
        ("300 __import__('os').system('true') 1", "line 257: expected a quoted"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, line, message):
    p = write_vocab(tmp_path, byte_lines() + [line, "301 'ok' 2"])
    with pytest.raises(ValueError) as e:
        WorldTokenizer(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_invalid_utf8_in_the_file(tmp_path):
    p = tmp_path / "v.txt"
    p.write_bytes(("\n".join(byte_lines()) + "\n").encode() + b"300 '\xc3' 1\n")
    with pytest.raises(ValueError, match="line 257: invalid UTF-8"):
        WorldTokenizer(p)


def test_missing_single_bytes_and_empty_files(tmp_path):
    with pytest.raises(ValueError, match="no token for the single byte 0x00"):
        WorldTokenizer(write_vocab(tmp_path, ["1 'a' 1"]))
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        WorldTokenizer(tmp_path / "empty.txt")
    with pytest.raises(OSError):
        WorldTokenizer(tmp_path / "does-not-exist.txt")


def test_blank_lines_and_bom_are_accepted(tmp_path):
    p = tmp_path / "v.txt"
    p.write_bytes(b"\xef\xbb\xbf" + ("\n".join(byte_lines()) + "\n\n300 'ab' 2\n   \n").encode())
    assert WorldTokenizer(p).encode("ab") == [300]


def test_halves_that_never_meet(tmp_path):
    """Long texts are encoded as two interleaved halves re-joined at a shared token start. With
    tokens "a" and "aa", a run of 'a' cut at an odd offset never shares a token start with the
    true encoding: the join must fall back and still be exact."""
    tok = WorldTokenizer(write_vocab(tmp_path, byte_lines() + ["300 'aa' 2"]))
    aa = tok.token_to_id("aa")
    for n in (20_002, 20_003, 600_002):
        expect = [aa] * (n // 2) + [ord("a") + 1] * (n % 2)
        assert tok.encode("a" * n) == expect
        assert tok.encode_to_numpy("a" * n, num_threads=3).tolist() == expect
        assert tok.encode_batch(["a" * n, "a" * (n + 1)], num_threads=2)[0] == expect
