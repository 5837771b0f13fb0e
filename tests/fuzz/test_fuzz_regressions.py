"""Replay the committed fuzz crash reproducers (csrc/fuzz/regressions/) through the Python bindings,
so the default suite and `make test-asan` (ASan+UBSan build) cover them too; `make fuzz-smoke`
replays them through the libFuzzer targets themselves."""

import os

import pytest

from rwkv5.tokenizer import _tokenizer

REG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "csrc",
    "fuzz",
    "regressions",
)


def _inputs(target):
    d = os.path.join(REG, target)
    return sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize("path", _inputs("vocab"), ids=os.path.basename)
def test_vocab_regressions(path):
    data = open(path, "rb").read()
    with pytest.raises(ValueError, match="vocab"):
        _tokenizer.Core(data)


def test_vocab_empty_literal_first_line():
    # found by fuzz_vocab: an empty first literal made wt_load compute NULL + 0 (UB)
    with pytest.raises(ValueError, match="line 1"):
        _tokenizer.Core(b"1 '' 0\n")


# What each committed task reproducer must do when replayed through `build` (body + b"\n\n"):
# "\n\n" as .txt is one document, the text "\n\n" (one World token, 261, then the 0 every
# document ends with); as .jsonl it is two blank lines, which are counted and hold no record.
TASK_EXPECTED = {
    "null-plus-zero-empty-item": {"in.txt": [[261, 0]], "in.jsonl": []},
}


def test_every_task_reproducer_has_an_expectation():
    assert sorted(TASK_EXPECTED) == sorted(os.path.basename(p) for p in _inputs("task"))
    for target in ("task", "vocab"):
        assert _inputs(target), f"no {target} reproducers found: their replay would run nothing"


@pytest.mark.parametrize("path", _inputs("task"), ids=os.path.basename)
def test_task_regressions(tmp_path, path):
    # the first two bytes hold the options as in csrc/fuzz/fuzz_task.c; replay the rest as .txt and .jsonl
    from rwkv5.dataprep import BinIdx, build
    from rwkv5.dataprep.build import DataprepError

    expected = TASK_EXPECTED[os.path.basename(path)]
    body = open(path, "rb").read()[2:]
    for name in ("in.txt", "in.jsonl"):
        src = tmp_path / name
        src.write_bytes(body + b"\n\n")  # an empty first record, as the crashing input had
        out = tmp_path / ("o-" + name)
        out.mkdir()
        want = expected[name]
        try:
            m = build([str(src)], str(out / "train"))
        except DataprepError as e:
            # an input without documents may be refused (issue 13 item 5), saying so; nothing else may fail
            assert want == [] and "document" in str(e), (name, e)
            continue
        assert m["totals"]["documents"] == len(want), (name, m["totals"])
        assert [d.tolist() for d in BinIdx(str(out / "train"))] == want, name
        if name == "in.jsonl":
            assert m["totals"]["blank_lines"] == 2
