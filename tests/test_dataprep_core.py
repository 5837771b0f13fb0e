"""The C pieces of rwkv5.dataprep against Python's own json / UTF-8 decoder / unicodedata."""

import collections
import json
import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv5.dataprep import _dataprep as C

# ----------------------------------------------------------------------------- UTF-8


@given(st.binary(max_size=64))
@settings(max_examples=400, deadline=None)
def test_utf8_repair_matches_python_replace(data):
    assert C.utf8_copy(data, True) == data.decode("utf-8", "replace").encode("utf-8")
    try:
        want = data.decode("utf-8").encode("utf-8")
    except UnicodeDecodeError:
        want = None
    assert C.utf8_copy(data, False) == want


@pytest.mark.parametrize(
    "data",
    [
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xf4\x90\x80\x80",
        b"\xf0\x9f\x98",
        b"a\xe2\x82",
        b"\xff",
        b"\x80abc",
        b"\xf0\x9f\x98\x80",
    ],
)
def test_utf8_edge_cases(data):
    assert C.utf8_copy(data, True) == data.decode("utf-8", "replace").encode("utf-8")


# ----------------------------------------------------------------------------- JSON


def python_extract(line: bytes, field="text"):
    """What Python's json makes of a line: (status, text bytes)."""
    raw_surrogates = False
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        # the only invalid UTF-8 the strategies below make: lone surrogates written raw by
        # json.dumps(ensure_ascii=False). Invalid inside the text value, not looked at elsewhere.
        s = line.decode("utf-8", "surrogatepass")
        raw_surrogates = True
    try:
        obj = json.loads(s)
    except ValueError:
        return "malformed_json", None
    if not isinstance(obj, dict):
        return "malformed_json", None
    if field not in obj:
        return "missing_field", None
    v = obj[field]
    if not isinstance(v, str):
        return "field_not_string", None
    try:
        return "ok", v.encode("utf-8")
    except UnicodeEncodeError:
        return ("invalid_utf8" if raw_surrogates else "lone_surrogate"), None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=5), ch, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    st.one_of(st.text(max_size=40), json_values),
    st.booleans(),
    st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_json_extract_matches_python(obj, text, ensure_ascii, present):
    if present:
        obj = dict(obj)
        obj["text"] = text
    line = json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    want = python_extract(line)
    status, got, _lang, _n = C.json_extract(line, "text")
    assert (status, got) == want


@given(st.text(max_size=30), st.integers(0, 10_000))
@settings(max_examples=400, deadline=None)
def test_json_mutations_agree_with_python(text, seed):
    """Random ASCII edits of valid lines: the C validator accepts exactly what json.loads accepts."""
    rng = random.Random(seed)
    line = bytearray(json.dumps({"a": [1, {"b": None}], "text": text, "z": -1.5e3}).encode())
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        pos = rng.randrange(len(line) + 1)
        ch = rng.choice(b'{}[]",:\\ 0123456789.eE+-tfnaxu\t')
        if op < 0.4 and pos < len(line):
            line[pos] = ch
        elif op < 0.7:
            line.insert(pos, ch)
        elif pos < len(line):
            del line[pos]
    line = bytes(line)
    want = python_extract(line)
    status, got, _, _ = C.json_extract(line, "text")
    assert (status, got) == want, line


def test_json_specifics():
    # surrogate pairs, escapes, duplicate keys (last wins, like Python), lang field
    line = rb'{"text": "a\u00e9\ud83d\ude00\n\t\"\\\/", "lang": "fr", "text": "second"}'
    assert C.json_extract(line, "text", "lang") == ("ok", b"second", "fr", 0)
    line = rb'{"text": "a\u00e9\ud83d\ude00\n\t\"\\\/"}'
    assert C.json_extract(line, "text")[1] == 'a\u00e9\U0001f600\n\t"\\/'.encode()
    assert C.json_extract(rb'{"text": "x\ud800"}', "text")[0] == "lone_surrogate"
    assert (
        C.json_extract(rb'{"text": "x\ud800\u0041"}', "text", None, True)[1] == "x\ufffdA".encode()
    )
    assert C.json_extract(rb'{"text": "x\udc00\ud800"}', "text", None, True)[1:] == (
        "x\ufffd\ufffd".encode(),
        "",
        2,
    )
    assert (
        C.json_extract(b'{"text": "tab\there"}', "text")[0] == "malformed_json"
    )  # raw control char
    assert C.json_extract(b'{"text": "x"} {"text": "y"}', "text")[0] == "malformed_json"
    assert C.json_extract(b'["text"]', "text")[0] == "malformed_json"
    assert C.json_extract(b'{"text": "x", "n": NaN, "m": -Infinity}', "text")[0] == "ok"
    assert C.json_extract(b'  {"t\\u0065xt" : "escaped key"}\r', "text")[:2] == (
        "ok",
        b"escaped key",
    )
    deep = b'{"a": ' + b"[" * 600 + b"]" * 600 + b', "text": "x"}'
    assert C.json_extract(deep, "text")[0] == "malformed_json"  # nesting limit 512
    ok = b'{"a": ' + b"[" * 500 + b"]" * 500 + b', "text": "x"}'
    assert C.json_extract(ok, "text")[0] == "ok"
    long_lang = '{"text": "x", "lang": "' + "é" * 40 + '"}'
    assert (
        C.json_extract(long_lang.encode(), "text", "lang")[2] == "é" * 31
    )  # 62 bytes, cut at a character


# ----------------------------------------------------------------------------- scripts

UNICODE_PREFIX = {
    "LATIN": "Latin",
    "GREEK": "Greek",
    "CYRILLIC": "Cyrillic",
    "ARMENIAN": "Armenian",
    "HEBREW": "Hebrew",
    "ARABIC": "Arabic",
    "DEVANAGARI": "Devanagari",
    "BENGALI": "Bengali",
    "TAMIL": "Tamil",
    "THAI": "Thai",
    "GEORGIAN": "Georgian",
    "HANGUL": "Hangul",
    "HIRAGANA": "Kana",
    "KATAKANA": "Kana",
    "CJK": "Han",
}


def test_script_of_letters_matches_unicode_names():
    """Every assigned letter (category L*) whose Unicode name starts with a script we track is
    classified as that script; letters of other scripts are Other; non-letters of ASCII are Common."""
    names = C.SCRIPT_NAMES
    checked = 0
    for cp in range(0x41, 0x30000):
        ch = chr(cp)
        if not unicodedata.category(ch).startswith("L"):
            continue
        if 0x2000 <= cp <= 0x2BFF or 0x1D400 <= cp <= 0x1D7FF or cp == 0x2C7:
            continue  # letters in symbol blocks (superscripts, letterlike, math alphanumerics): Common by design
        name = unicodedata.name(ch, "")
        first = name.split(" ")[0]
        got = names[C.script_of(cp)]
        if first in UNICODE_PREFIX:
            if first == "CJK" and "IDEOGRAPH" not in name:
                continue
            assert got == UNICODE_PREFIX[first], (hex(cp), name, got)
            checked += 1
        elif (
            first in ("MODIFIER", "IPA") or unicodedata.category(ch) != "Lo" and not first.isalpha()
        ):
            continue
        else:
            assert got != "Common", (hex(cp), name)
    assert checked > 100_000
    for cp in b" 0123456789!?.,;:'\"()[]{}@#$%^&*-_=+/\\|<>~`":
        assert names[C.script_of(cp)] == "Common"


def test_dominant_script():
    names = C.SCRIPT_NAMES
    assert names[C.dominant_script("Hello мир мир мир")] == "Cyrillic"
    assert names[C.dominant_script("日本語のテキストです")] == "Kana"  # 5 kana vs 4 han
    assert names[C.dominant_script("12345 !!! 🙂")] == "Common"
    assert names[C.dominant_script("")] == "Common"
    assert names[C.dominant_script("ᎣᏏᏲ")] == "Other"  # Cherokee


# ----------------------------------------------------------------------------- readers on bad files


def test_readers_reject_garbage(tmp_path):
    import numpy as np
    from rwkv5.dataprep import BinIdx, FormatError, ZstShard
    from rwkv5.dataprep.formats import write_idx, write_zst_shard

    sizes = np.array([3, 5, 1], dtype=np.int64)
    toks = np.array([5, 6, 0, 7, 8, 9, 10, 0, 0], dtype="<u2")
    (tmp_path / "s.tok").write_bytes(toks.tobytes())
    write_zst_shard(str(tmp_path / "s.zst"), str(tmp_path / "s.tok"), sizes, 65530, frame_tokens=4)
    write_idx(str(tmp_path / "b.idx"), sizes)
    (tmp_path / "b.bin").write_bytes(toks.tobytes())
    with ZstShard(str(tmp_path / "s.zst")) as z:
        assert [d.tolist() for d in z] == [[5, 6, 0], [7, 8, 9, 10, 0], [0]]
    assert [d.tolist() for d in BinIdx(str(tmp_path / "b"))] == [[5, 6, 0], [7, 8, 9, 10, 0], [0]]
    good_z = (tmp_path / "s.zst").read_bytes()
    good_i = (tmp_path / "b.idx").read_bytes()
    original = [[5, 6, 0], [7, 8, 9, 10, 0], [0]]
    rejected, accepted = collections.Counter(), collections.Counter()
    rng = random.Random(5)
    for trial in range(300):
        for name, good in (("s.zst", good_z), ("b.idx", good_i)):
            data = bytearray(good)
            op = trial % 3
            if op == 0:
                data = data[: rng.randrange(len(data))]
            elif op == 1:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
            (tmp_path / name).write_bytes(bytes(data))
            try:
                if name == "s.zst":
                    with ZstShard(str(tmp_path / name)) as z:
                        docs = [d.tolist() for d in z]
                else:
                    docs = [d.tolist() for d in BinIdx(str(tmp_path / "b"))]
            except (FormatError, ValueError):
                rejected[name, op] += 1
                continue
            # a change the reader does not see (a flipped bit in the .idx doc_idx array, which
            # readers do not use) must not change a single token
            assert docs == original, (name, op, trial)
            accepted[name, op] += 1
        (tmp_path / "b.idx").write_bytes(good_i)
    # truncation and appended bytes are always caught; the zst shard's checksums catch every bit flip
    assert set(accepted) <= {("b.idx", 1)}, accepted
    assert all(rejected[name, op] > 0 for name in ("s.zst", "b.idx") for op in range(3)), rejected
