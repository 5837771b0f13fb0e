"""rwkv5.dataprep inputs as a codec around a record format: the tables come from the C core (no
copy of their names or numbers in Python); every codec (gzip from the `gzip` command and from
Python, multi-member gzip, bzip2, xz, zstd) gives the same output bytes as the plain file of the
same documents; damaged files give one line naming the file and an offset; the language of a
document from its path (--lang-from-path)."""

import bz2
import gzip
import importlib
import lzma
import os
import shutil
import subprocess
import sys

import pytest

from dataprep_helpers import gen_corpus
from rwkv5.dataprep import DataprepError, _dataprep, build, verify

build_mod = importlib.import_module("rwkv5.dataprep.build")


def test_tables_are_read_from_c():
    names = [c["name"] for c in _dataprep.CODECS]
    assert names[0] == "plain" and "zstd" in names and len(set(names)) == len(names)
    assert list(build_mod.CODECS) == names
    assert [f["name"] for f in _dataprep.RECORD_FORMATS] == list(build_mod.RECORD_FORMATS)
    assert {"jsonl", "txt-file", "txt-blank"} <= set(build_mod.RECORD_FORMATS)
    for c in _dataprep.CODECS:
        assert isinstance(c["magic"], bytes) and (c["magic"] == b"") == (c["name"] == "plain")


@pytest.mark.parametrize(
    "name,txt_mode,want",
    [
        ("a.jsonl", "file", ("jsonl", "plain")),
        ("a.NDJSON.zst", "file", ("jsonl", "zstd")),
        ("a.json.zst", "file", ("jsonl", "zstd")),
        ("a.zst", "file", ("jsonl", "zstd")),
        ("a.txt", "file", ("txt-file", "plain")),
        ("a.txt.zst", "blank", ("txt-blank", "zstd")),
    ],
)
def test_input_type_from_name(name, txt_mode, want):
    assert build_mod.input_type(name, txt_mode) == want


def test_run_task_names_its_table_rows(tmp_path):
    """An unknown record format or codec is a ValueError listing the known names (it used to be
    a number checked against a hand-copied '0..3')."""
    tok = build_mod.load_tokenizer(build_mod.default_vocab_path()).capsule
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "x"}\n')
    args = (
        tok,
        str(p),
        "jsonl",
        0,
        2**64 - 1,
        "text",
        None,
        False,
        True,
        1,
        str(tmp_path / "t"),
        str(tmp_path / "m"),
    )
    assert _dataprep.run_task(*args)["docs"] == 1
    with pytest.raises(
        ValueError, match="record_format: expected one of jsonl, txt-file, txt-blank, got 'csv'"
    ):
        _dataprep.run_task(*(args[:2] + ("csv",) + args[3:]))
    with pytest.raises(ValueError, match="codec: expected one of plain, zstd.*got 'rar'"):
        _dataprep.run_task(*args, codec="rar")
    # the cancel flag: None or a writable, int-aligned buffer of at least 4 bytes
    assert _dataprep.run_task(*args, cancel=bytearray(4))["docs"] == 1
    for bad, err in (
        (bytearray(2), ValueError),
        (memoryview(bytearray(8))[1:5], ValueError),
        (bytes(4), BufferError),
    ):
        with pytest.raises(err):
            _dataprep.run_task(*args, cancel=bad)


# ----------------------------------------------------------------------------- same bytes from every codec


def quiet(inputs, out, **kw):
    m = build(inputs, str(out), log=lambda s: None, **kw)
    verify(str(out))
    return m


def set_bytes(prefix):
    return tuple(open(f"{prefix}{ext}", "rb").read() for ext in (".bin", ".idx"))


@pytest.fixture(scope="module")
def corpus():
    lines, _ = gen_corpus(7, 600, bad=False)
    return b"\n".join(lines) + b"\n"


def gzip_cmd(data: bytes) -> bytes:
    return subprocess.run(["gzip", "-c", "-6"], input=data, capture_output=True, check=True).stdout


def multi_member_gzip(data: bytes) -> bytes:
    """Three gzip members cut mid-line (as `cat a.gz b.gz c.gz` or pigz/bgzip write)."""
    a, b = len(data) // 3, len(data) // 3 + 7
    return gzip.compress(data[:a]) + gzip.compress(data[a:b], 1) + gzip.compress(data[b:], 9)


def zstd(data: bytes) -> bytes:
    return _dataprep.zstd_compress(data[: len(data) // 2], 3) + _dataprep.zstd_compress(
        data[len(data) // 2 :], 5
    )


PACKERS = {
    "gzip-command.jsonl.gz": gzip_cmd,
    "python.jsonl.gz": gzip.compress,
    "multi-member.jsonl.gz": multi_member_gzip,
    "madlad.json.gz": gzip.compress,
    "x.jsonl.bz2": bz2.compress,
    "multi-stream.jsonl.bz2": lambda d: bz2.compress(d[:1000]) + bz2.compress(d[1000:]),
    "x.jsonl.xz": lzma.compress,
    "multi-stream.jsonl.xz": lambda d: lzma.compress(d[:999]) + lzma.compress(d[999:]),
    # stream padding (zero bytes, a multiple of 4) between streams and after the last
    "padded-multi-stream.jsonl.xz": lambda d: (
        lzma.compress(d[:500])
        + b"\0" * 4
        + lzma.compress(d[500:2000])
        + b"\0" * 8
        + lzma.compress(d[2000:])
        + b"\0" * 4
    ),
    "x.ndjson.zst": zstd,
}


@pytest.mark.parametrize("name", sorted(PACKERS))
def test_every_codec_gives_the_plain_files_bytes(tmp_path, corpus, name):
    if name.startswith("gzip-command") and not shutil.which("gzip"):
        pytest.skip("no gzip command")
    (tmp_path / "plain.jsonl").write_bytes(corpus)
    (tmp_path / name).write_bytes(PACKERS[name](corpus))
    m0 = quiet([str(tmp_path / "plain.jsonl")], tmp_path / "plain", lang_field="lang")
    m1 = quiet([str(tmp_path / name)], tmp_path / "packed", lang_field="lang", workers=2)
    assert set_bytes(tmp_path / "plain") == set_bytes(tmp_path / "packed")
    assert m0["statistics"] == m1["statistics"] and m0["totals"] == m1["totals"]


@pytest.mark.parametrize(
    "suffix,pack",
    [
        (".txt.zst", lambda d: _dataprep.zstd_compress(d, 3)),
        (".txt.gz", gzip.compress),
        (".txt.xz", lzma.compress),
        (".txt.bz2", bz2.compress),
    ],
)
@pytest.mark.parametrize("txt_mode", ["file", "blank"])
def test_compressed_text_reads_as_text(tmp_path, suffix, pack, txt_mode):
    text = "Erste Zeile\r\nzweite Zeile\n\n  \nNächster Absatz, 狐狸\nEnde\n\n".encode() * 50
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / ("b" + suffix)).write_bytes(pack(text))
    m0 = quiet([str(tmp_path / "a.txt")], tmp_path / "plain", txt_mode=txt_mode)
    quiet([str(tmp_path / ("b" + suffix))], tmp_path / "packed", txt_mode=txt_mode)
    assert set_bytes(tmp_path / "plain") == set_bytes(tmp_path / "packed")
    assert m0["totals"]["documents"] == (1 if txt_mode == "file" else 100)


def test_folder_search_reads_every_codec(tmp_path, corpus):
    """A folder is searched for every record suffix with every codec's suffix (and .json only
    compressed: a plain .json may be a manifest); the documents come in sorted path order, so the
    set equals the one from the concatenated plain file."""
    d = tmp_path / "in"
    d.mkdir()
    lines = corpus.splitlines(keepends=True)
    names = ["a.jsonl.gz", "b.json.gz", "c.jsonl.bz2", "d.ndjson.xz", "e.jsonl.zst", "f.jsonl"]
    packs = [gzip.compress, gzip.compress, bz2.compress, lzma.compress, zstd, lambda x: x]
    k = len(lines) // len(names) + 1
    for i, (n, p) in enumerate(zip(names, packs)):
        (d / n).write_bytes(p(b"".join(lines[i * k : (i + 1) * k])))
    (d / "notes.json").write_text("{}")
    (tmp_path / "all.jsonl").write_bytes(corpus)
    m = quiet([str(d)], tmp_path / "folder")
    quiet([str(tmp_path / "all.jsonl")], tmp_path / "plain")
    assert [os.path.basename(i["path"]) for i in m["inputs"]] == names
    assert m["inputs_not_read"]["count"] == 1
    assert set_bytes(tmp_path / "folder") == set_bytes(tmp_path / "plain")


def test_codec_from_magic_bytes_before_the_name(tmp_path, corpus):
    """The content decides: gzip data named .jsonl (or .jsonl.zst) is read as gzip; a name that
    promises a codec the content does not have is an error naming the file and the offset."""
    (tmp_path / "plain.jsonl").write_bytes(corpus)
    (tmp_path / "really-gzip.jsonl").write_bytes(gzip.compress(corpus))
    (tmp_path / "really-xz.jsonl.zst").write_bytes(lzma.compress(corpus))
    quiet([str(tmp_path / "plain.jsonl")], tmp_path / "plain")
    for n in ("really-gzip.jsonl", "really-xz.jsonl.zst"):
        quiet([str(tmp_path / n)], tmp_path / "x")
        assert set_bytes(tmp_path / "x") == set_bytes(tmp_path / "plain")
    (tmp_path / "not-gzip.jsonl.gz").write_bytes(corpus)
    with pytest.raises(
        OSError,
        match=r"not-gzip\.jsonl\.gz: corrupt gzip data \(incorrect header check\) at byte "
        r"offset \d+, in the member starting at byte offset 0$",
    ):
        quiet([str(tmp_path / "not-gzip.jsonl.gz")], tmp_path / "y")


# ----------------------------------------------------------------------------- damaged files

DAMAGE_PACKERS = {
    ".jsonl.gz": gzip.compress,
    ".jsonl.bz2": bz2.compress,
    ".jsonl.xz": lzma.compress,
    ".jsonl.zst": lambda d: _dataprep.zstd_compress(d, 3),
}


@pytest.mark.parametrize("suffix", sorted(DAMAGE_PACKERS))
def test_truncated_and_corrupted_files_name_file_and_offset(tmp_path, corpus, suffix):
    """Cut, or with a byte changed, at several offsets: an error of one line naming the file and a
    byte offset (the C unit test sweeps ~40 offsets per codec), never a crash or a hang; a
    changed byte no check covers (a gzip header's time stamp) reads the same documents."""
    z = DAMAGE_PACKERS[suffix](corpus)
    (tmp_path / "plain.jsonl").write_bytes(corpus)
    quiet([str(tmp_path / "plain.jsonl")], tmp_path / "plain")
    p = tmp_path / ("in" + suffix)
    for off in (0, 5, len(z) // 2, len(z) - 1):
        p.write_bytes(z[:off])
        with pytest.raises(OSError) as e:
            quiet([str(p)], tmp_path / "cut")
        msg = str(e.value)
        assert (
            msg.startswith(str(p) + ": ")
            and "\n" not in msg
            and ("truncated" in msg or "0 bytes" in msg)
        ), msg
        assert "byte" in msg
        bad = bytearray(z)
        bad[off] ^= 0x55
        p.write_bytes(bytes(bad))
        try:
            quiet([str(p)], tmp_path / "flip")
        except (OSError, DataprepError) as e:
            msg = str(e)
            assert str(p) in msg and "\n" not in msg and "byte" in msg, msg
        else:
            assert set_bytes(tmp_path / "flip") == set_bytes(tmp_path / "plain"), off


def test_xz_trailing_garbage_and_bad_padding_are_named_at_their_offset(tmp_path, corpus):
    """Bytes after an xz stream that are neither stream padding nor another stream: "trailing
    garbage" at the offset where they begin (it was reported as a truncated stream, at the end of
    the file). Swept over every stream boundary of a three-stream file, with padding of 0..9 zero
    bytes before the garbage (not a multiple of 4: bad padding, named where it ends)."""
    a, b = corpus.index(b"\n", 700) + 1, corpus.index(b"\n", 1900) + 1  # whole lines in each stream
    parts = [lzma.compress(corpus[:a]), lzma.compress(corpus[a:b]), lzma.compress(corpus[b:])]
    p = tmp_path / "in.jsonl.xz"
    for k in range(1, 4):
        head = b"".join(parts[:k])
        for npad in range(10):
            for garbage in (b"garbage!", b"x", b"\x01" * 40, b"\xfd7zXY" + bytes(20)):
                p.write_bytes(head + b"\0" * npad + garbage + b"".join(parts[k:]))
                with pytest.raises(OSError) as e:
                    quiet([str(p)], tmp_path / "o")
                msg = str(e.value)
                assert (
                    msg.startswith(f"{p}: corrupt xz data")
                    and "\n" not in msg
                    and "truncated" not in msg
                ), msg
                if npad % 4:
                    assert msg.endswith(
                        f"(stream padding of {npad} bytes, not a multiple of 4) ending at byte "
                        f"offset {len(head) + npad}"
                    ), msg
                else:
                    assert msg.endswith(
                        f"(not an xz stream: trailing garbage after the last stream) at byte "
                        f"offset {len(head) + npad}"
                    ), msg
            # the same padding at the end of the file, nothing after it
            p.write_bytes(head + b"\0" * npad)
            if npad % 4:
                with pytest.raises(
                    OSError,
                    match=rf"stream padding of {npad} bytes, not a multiple of 4\) ending "
                    rf"at byte offset {len(head) + npad}$",
                ):
                    quiet([str(p)], tmp_path / "o")
            else:
                quiet([str(p)], tmp_path / "o")
    # a stream cut short, then garbage: damage inside that stream, named with where it starts
    for cut in (13, len(parts[1]) // 2, len(parts[1]) - 3):
        p.write_bytes(parts[0] + parts[1][:cut] + b"garbage!")
        with pytest.raises(OSError, match=rf"stream starting at byte offset {len(parts[0])}\b"):
            quiet([str(p)], tmp_path / "o")


def test_cli_one_line_error_for_a_truncated_gzip(tmp_path, corpus):
    p = tmp_path / "in.jsonl.gz"
    z = gzip.compress(corpus)
    p.write_bytes(z[: len(z) - 9])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            str(p),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert (
        f"{p}: truncated gzip member starting at byte offset 0 (the file ends at byte {len(z) - 9})"
        in r.stderr
    )


# ----------------------------------------------------------------------------- language from the path


def test_lang_from_path(tmp_path, corpus):
    """--lang-from-path REGEX: the group names the language of every document of the file; the
    statistics per language count them as --lang-field would; the tokens are the same."""
    lines = corpus.splitlines(keepends=True)
    root = tmp_path / "data"
    langs = {"fra_Latn": lines[:100], "deu_Latn": lines[100:250], "rus_Cyrl": lines[250:]}
    for lang, ls in langs.items():
        (root / lang / "train").mkdir(parents=True)
        (root / lang / "train" / "000.jsonl.gz").write_bytes(gzip.compress(b"".join(ls)))
    m = quiet(
        [str(root)], tmp_path / "bylang", lang_from_path=r"/([a-z]{3}_[A-Z][a-z]{3})/", workers=2
    )
    stats = m["statistics"]["per_language"]
    assert {k: v["documents"] for k, v in stats.items()} == {k: len(v) for k, v in langs.items()}
    assert m["options"]["lang_from_path"] == r"/([a-z]{3}_[A-Z][a-z]{3})/"
    # the same documents without the option: the same bytes, no language statistics
    m2 = quiet([str(root)], tmp_path / "nolang")
    assert set_bytes(tmp_path / "bylang") == set_bytes(tmp_path / "nolang")
    assert m2["statistics"]["per_language"] == {}
    # the CLI option, and a stats table naming the languages
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            str(root),
            "--out",
            str(tmp_path / "cli"),
            "--lang-from-path",
            r"/(...)_[A-Z]",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", "stats", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "fra" in r.stdout and "deu" in r.stdout and "rus" in r.stdout, (
        r.stdout
    )


@pytest.mark.parametrize(
    "opts,msg",
    [
        ({"lang_from_path": r"/zzz_(\w+)/"}, r"does not match the path"),
        (
            {"lang_from_path": r"/(\w+)/(\w+)/"},
            r"expected exactly one group \(\.\.\.\) around the language, got 2",
        ),
        ({"lang_from_path": r"/(\w+/"}, r"not a regular expression"),
        ({"lang_from_path": r"/(\w+)/", "lang_field": "lang"}, r"give one of them"),
    ],
)
def test_lang_from_path_errors(tmp_path, corpus, opts, msg):
    (tmp_path / "a.jsonl").write_bytes(corpus)
    with pytest.raises(DataprepError, match=msg):
        quiet([str(tmp_path / "a.jsonl")], tmp_path / "o", **opts)


def test_lang_from_path_long_value_is_cut_like_lang_field(tmp_path):
    long = "é" * 40  # 80 bytes: cut to 31 characters (62 bytes), not inside one
    (tmp_path / long).mkdir()
    (tmp_path / long / "a.jsonl").write_bytes(b'{"text": "x"}\n')
    m = quiet([str(tmp_path / long)], tmp_path / "o", lang_from_path=r"/(é+)/")
    assert list(m["statistics"]["per_language"]) == ["é" * 31]
