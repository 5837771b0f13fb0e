"""rwkv5.dataprep inputs as a codec around a record format: the tables come from the C core (no
copy of their names or numbers in Python), and every codec gives the same output bytes as the
plain file of the same documents."""
import importlib

import pytest

from rwkv5.dataprep import _dataprep

build_mod = importlib.import_module("rwkv5.dataprep.build")


def test_tables_are_read_from_c():
    names = [c["name"] for c in _dataprep.CODECS]
    assert names[0] == "plain" and "zstd" in names and len(set(names)) == len(names)
    assert list(build_mod.CODECS) == names
    assert [f["name"] for f in _dataprep.RECORD_FORMATS] == list(build_mod.RECORD_FORMATS)
    assert {"jsonl", "txt-file", "txt-blank"} <= set(build_mod.RECORD_FORMATS)
    for c in _dataprep.CODECS:
        assert isinstance(c["magic"], bytes) and (c["magic"] == b"") == (c["name"] == "plain")


@pytest.mark.parametrize("name,txt_mode,want", [
    ("a.jsonl", "file", ("jsonl", "plain")), ("a.NDJSON.zst", "file", ("jsonl", "zstd")),
    ("a.json.zst", "file", ("jsonl", "zstd")), ("a.zst", "file", ("jsonl", "zstd")),
    ("a.txt", "file", ("txt-file", "plain")), ("a.txt.zst", "blank", ("txt-blank", "zstd")),
])
def test_input_type_from_name(name, txt_mode, want):
    assert build_mod.input_type(name, txt_mode) == want


def test_run_task_names_its_table_rows(tmp_path):
    """An unknown record format or codec is a ValueError listing the known names (it used to be
    a number checked against a hand-copied '0..3')."""
    tok = build_mod.load_tokenizer(build_mod.default_vocab_path())
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "x"}\n')
    args = (tok, str(p), "jsonl", 0, 2**64 - 1, "text", None, False, True, 1, str(tmp_path / "t"), str(tmp_path / "m"))
    assert _dataprep.run_task(*args)["docs"] == 1
    with pytest.raises(ValueError, match="record_format: expected one of jsonl, txt-file, txt-blank, got 'csv'"):
        _dataprep.run_task(*(args[:2] + ("csv",) + args[3:]))
    with pytest.raises(ValueError, match="codec: expected one of plain, zstd.*got 'rar'"):
        _dataprep.run_task(*args, codec="rar")
