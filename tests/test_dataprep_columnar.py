"""rwkv5.dataprep: Parquet, Arrow IPC, datasets save_to_disk folders and Python iterables as inputs.
The same documents must give byte-identical outputs whichever container holds them; bad records
are counted (or stop the run naming file, row group and row); only the needed columns are read;
a run interrupted part-way resumes."""

import json
import os
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
import pyarrow.ipc as ipc  # noqa: E402

from dataprep_helpers import SAMPLES  # noqa: E402
from rwkv5.dataprep import DataprepError, build, verify  # noqa: E402
import rwkv5.dataprep.columnar as columnar  # noqa: E402
from conftest import plain_rss  # noqa: E402


def quiet(inputs, out, **kw):
    m = build(inputs, str(out), log=lambda s: None, **kw)
    verify(str(out))
    return m


def outputs(prefix):
    return open(f"{prefix}.bin", "rb").read(), open(f"{prefix}.idx", "rb").read()


def corpus(n=600):
    """Records as dicts: texts of many scripts and lengths, a language, some nulls and
    non-strings (bad records), some empty texts, an extra column."""
    keys = sorted(SAMPLES)
    recs = []
    for i in range(n):
        lang = keys[i % len(keys)]
        text = " ".join([SAMPLES[lang][0]] * (1 + (i * 7) % 13)) + f" #{i}"
        if i % 50 == 7:
            text = None  # a null text: a bad record
        elif i % 61 == 3:
            text = ""  # empty: skipped always
        recs.append({"id": i, "text": text, "lang": lang, "score": i / 3})
    return recs


def write_jsonl(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def table(recs, struct=False):
    cols = {
        "id": pa.array([r["id"] for r in recs], pa.int64()),
        "score": pa.array([r["score"] for r in recs], pa.float64()),
    }
    text = pa.array([r["text"] for r in recs], pa.string())
    lang = pa.array([r["lang"] for r in recs], pa.string())
    if struct:  # text and language inside a struct column, next to another struct member
        cols["meta"] = pa.StructArray.from_arrays(
            [pa.array([f"u{r['id']}" for r in recs]), text, lang], ["url", "body", "lang"]
        )
    else:
        cols["text"] = text
        cols["lang"] = lang
    return pa.table(cols)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    d = tmp_path_factory.mktemp("columnar")
    recs = corpus()
    write_jsonl(d / "c.jsonl", recs)
    m = quiet([str(d / "c.jsonl")], d / "ref", lang_field="lang", on_error="skip")
    assert m["totals"]["documents"] > 500 and m["skipped"]["counts"]["field_not_string"] == 12
    return d, recs, outputs(d / "ref"), m


def same_as_ref(ref, m, prefix):
    assert outputs(prefix) == ref[2]
    assert m["skipped"]["counts"] == ref[3]["skipped"]["counts"]
    assert m["statistics"] == ref[3]["statistics"]


def test_parquet_with_row_groups_nulls_and_extra_columns_equals_jsonl(ref):
    d = ref[0]
    pq.write_table(table(ref[1]), d / "c.parquet", row_group_size=64)
    assert pq.ParquetFile(d / "c.parquet").metadata.num_row_groups > 5
    m = quiet([str(d / "c.parquet")], d / "pq", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "pq")


def test_parquet_split_into_tasks_by_row_group_equals_jsonl(ref, monkeypatch):
    d = ref[0]
    pq.write_table(table(ref[1]), d / "split.parquet", row_group_size=50)
    seen = []
    real = columnar.tokenize
    monkeypatch.setattr(
        columnar,
        "tokenize",
        lambda task, *a: seen.append((task["start"], task["end"])) or real(task, *a),
    )
    m = quiet(
        [str(d / "split.parquet")], d / "split", lang_field="lang", on_error="skip", task_size=20000
    )
    same_as_ref(ref, m, d / "split")
    # several tasks of whole row groups, covering every row group once, in order
    assert len(seen) > 2 and seen[0][0] == 0 and all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    assert seen[-1][1] == pq.ParquetFile(d / "split.parquet").metadata.num_row_groups


def test_struct_columns_by_dotted_path_equal_jsonl(ref):
    d = ref[0]
    pq.write_table(table(ref[1], struct=True), d / "s.parquet", row_group_size=100)
    m = quiet(
        [str(d / "s.parquet")],
        d / "s",
        text_field="meta.body",
        lang_field="meta.lang",
        on_error="skip",
    )
    same_as_ref(ref, m, d / "s")


def test_only_the_text_and_language_columns_are_read_one_row_group_at_a_time(ref, monkeypatch):
    d = ref[0]
    pq.write_table(table(ref[1], struct=True), d / "proj.parquet", row_group_size=100)
    calls = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        calls.append((kw.get("columns"), kw.get("row_groups")))
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    for name in ("read_row_group", "read", "read_row_groups"):
        monkeypatch.setattr(
            pq.ParquetFile, name, lambda *a, **k: pytest.fail("a whole row group / file was read")
        )
    quiet(
        [str(d / "proj.parquet")],
        d / "proj",
        text_field="meta.body",
        lang_field="meta.lang",
        on_error="skip",
    )
    assert calls and all(c == (["meta.body", "meta.lang"], [i]) for i, c in enumerate(calls))


def write_saved_dataset(folder, recs, n_files=3):
    """The layout datasets' save_to_disk writes: Arrow IPC streams data-0000i-of-0000n.arrow,
    state.json listing them, dataset_info.json."""
    os.makedirs(folder)
    t = table(recs)
    step = -(-len(recs) // n_files)
    names = []
    for i in range(n_files):
        name = f"data-{i:05d}-of-{n_files:05d}.arrow"
        with ipc.new_stream(os.path.join(folder, name), t.schema) as w:
            for b in t.slice(i * step, step).to_batches(max_chunksize=40):
                w.write_batch(b)
        names.append(name)
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump(
            {"_data_files": [{"filename": n} for n in names], "_fingerprint": "x", "_split": None},
            f,
        )
    with open(os.path.join(folder, "dataset_info.json"), "w") as f:
        json.dump({"features": {}}, f)


def test_saved_dataset_folder_equals_jsonl(ref):
    d = ref[0]
    write_saved_dataset(str(d / "saved"), ref[1])
    logs = []
    m = build(
        [str(d / "saved")], str(d / "sv"), lang_field="lang", on_error="skip", log=logs.append
    )
    same_as_ref(ref, m, d / "sv")
    assert (
        len(m["inputs"]) == 3 and not logs
    )  # state.json / dataset_info.json are not "files not read"


def test_arrow_ipc_file_equals_jsonl(ref):
    d = ref[0]
    t = table(ref[1])
    with ipc.new_file(str(d / "c.arrow"), t.schema) as w:
        for b in t.to_batches(max_chunksize=77):
            w.write_batch(b)
    m = quiet([str(d / "c.arrow")], d / "arr", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "arr")


@pytest.mark.parametrize("kind", ["generator", "list_of_dicts", "strings"])
def test_python_iterables_equal_jsonl(ref, kind):
    d, recs = ref[0], ref[1]
    if kind == "strings":  # texts only: compare with a .jsonl of the good records, no language
        good = [r["text"] for r in recs if r["text"] is not None]
        write_jsonl(d / "good.jsonl", [{"text": t} for t in good])
        quiet([str(d / "good.jsonl")], d / "good")
        quiet((t for t in good), d / "it_s", task_size=5000)
        assert outputs(d / "it_s") == outputs(d / "good")
        return
    src = iter(recs) if kind == "generator" else list(recs)
    m = quiet(src, d / f"it_{kind}", lang_field="lang", on_error="skip", task_size=5000)
    same_as_ref(ref, m, d / f"it_{kind}")
    assert m["inputs"] == [{"records": len(recs), "bytes": m["inputs"][0]["bytes"]}]


def test_a_list_of_paths_is_still_a_list_of_paths(ref):
    d = ref[0]
    m = quiet([str(d / "c.jsonl")], d / "paths", lang_field="lang", on_error="skip")
    assert m["inputs"][0]["path"].endswith("c.jsonl")


def test_null_text_under_fail_names_file_row_group_and_row(ref):
    d = ref[0]
    pq.write_table(table(ref[1]), d / "f.parquet", row_group_size=5)
    with pytest.raises(DataprepError) as e:
        quiet([str(d / "f.parquet")], d / "f", task_size=300)
    msg = str(e.value)
    # the first null is record 7: row group 1, its row 2
    assert "f.parquet: row group 1, row 2 (row 7 of the file" in msg and "field_not_string" in msg
    assert "\n" not in msg


def test_null_in_an_iterable_under_fail_names_the_record(ref):
    with pytest.raises(
        DataprepError, match=r"^records: record 7 \(counting from 0\): field_not_string"
    ):
        quiet(iter(ref[1]), ref[0] / "fi")


@pytest.mark.parametrize(
    "column,needle",
    [
        ("nope", 'missing_field: no column "nope" (the columns are: id, score, text, lang)'),
        ("id", 'field_not_string: column "id" holds int64, not strings'),
    ],
)
def test_missing_or_non_string_text_column(ref, column, needle):
    d = ref[0]
    pq.write_table(table(ref[1]), d / "m.parquet", row_group_size=100)
    with pytest.raises(DataprepError) as e:
        quiet([str(d / "m.parquet")], d / "m", text_field=column)
    assert needle in str(e.value) and "row group 0, row 0" in str(e.value)
    m = quiet([str(d / "m.parquet")], d / "m", text_field=column, on_error="skip", allow_empty=True)
    assert m["totals"]["documents"] == 0 and m["skipped"]["total"] == len(ref[1])


@pytest.mark.parametrize("damage", ["not_parquet", "truncated"])
def test_damaged_parquet_is_one_line_naming_the_file(ref, damage):
    d = ref[0]
    p = d / f"bad_{damage}.parquet"
    if damage == "not_parquet":
        p.write_text('{"text": "hello"}\n')
    else:
        pq.write_table(table(ref[1]), p, row_group_size=100)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataprepError) as e:
        quiet([str(p)], d / "bad")
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_without_pyarrow_the_error_says_what_to_install(ref, monkeypatch):
    d = ref[0]
    pq.write_table(table(ref[1][:10]), d / "np.parquet")
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.compute", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        DataprepError,
        match=r"np\.parquet: reading Parquet and Arrow inputs needs pyarrow: "
        r"pip install 'rwkv5\[parquet\]'",
    ):
        quiet([str(d / "np.parquet")], d / "np")


def test_folders_are_searched_for_parquet_files(ref):
    d = ref[0]
    os.makedirs(d / "tree" / "fr_Latn")
    recs = ref[1]
    pq.write_table(table(recs[:300]), d / "tree" / "fr_Latn" / "a.parquet", row_group_size=64)
    pq.write_table(table(recs[300:]), d / "tree" / "fr_Latn" / "b.parquet", row_group_size=64)
    m = quiet([str(d / "tree")], d / "tree_out", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "tree_out")


@pytest.mark.parametrize("source", ["parquet", "iterable"])
def test_an_interrupted_build_resumes_byte_identically(ref, monkeypatch, source, tmp_path):
    pq.write_table(table(ref[1]), tmp_path / "r.parquet", row_group_size=40)
    inputs = (
        (lambda: [str(tmp_path / "r.parquet")]) if source == "parquet" else (lambda: iter(ref[1]))
    )
    opts = dict(lang_field="lang", on_error="skip", task_size=8000, keep_work=False)
    real = columnar.tokenize
    calls = []

    def interrupt_third(task, *a):
        calls.append(task["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task, *a)

    monkeypatch.setattr(columnar, "tokenize", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        build(inputs(), str(tmp_path / "o"), log=lambda s: None, **opts)
    calls.clear()
    monkeypatch.setattr(
        columnar, "tokenize", lambda task, *a: calls.append(task["id"]) or real(task, *a)
    )
    m = quiet(inputs(), tmp_path / "o", **opts)
    same_as_ref(ref, m, tmp_path / "o")
    assert len(m["shards"]) == 1 and calls and calls[0] == 2  # tasks 0 and 1 were not run again


# ----------------------------------------------------------------------------- the datasets package


def test_datasets_objects_equal_jsonl(ref):
    datasets = pytest.importorskip("datasets")
    d, recs = ref[0], ref[1]
    ds = datasets.Dataset.from_list(recs)
    m = quiet(ds, d / "ds", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "ds")
    # a shuffled-then-sorted view (an indices mapping) gives the records in the view's order
    view = ds.shuffle(seed=1).sort("id")
    m = quiet(view, d / "dsv", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "dsv")
    m = quiet(ds.to_iterable_dataset(num_shards=3), d / "dsi", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "dsi")
    ds.save_to_disk(str(d / "saved_ds"), num_shards=2)
    m = quiet([str(d / "saved_ds")], d / "dss", lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / "dss")


@pytest.mark.parametrize("typ", ["large_string", "dictionary"])
def test_large_and_dictionary_string_columns_equal_jsonl(ref, typ):
    d = ref[0]
    t = table(ref[1])
    i = t.schema.get_field_index("text")
    col = (
        t.column("text").cast(pa.large_string())
        if typ == "large_string"
        else t.column("text").dictionary_encode()
    )
    t = t.set_column(i, "text", col)
    pq.write_table(t, d / f"{typ}.parquet", row_group_size=128)
    assert str(pq.read_schema(d / f"{typ}.parquet").field("text").type).startswith(typ)
    m = quiet([str(d / f"{typ}.parquet")], d / typ, lang_field="lang", on_error="skip")
    same_as_ref(ref, m, d / typ)


def test_cli_reads_a_struct_column_by_dotted_name(ref, tmp_path):
    import subprocess

    d = ref[0]
    pq.write_table(table(ref[1], struct=True), tmp_path / "cli.parquet", row_group_size=100)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            str(tmp_path / "cli.parquet"),
            "--out",
            str(tmp_path / "cli"),
            "--text-field",
            "meta.body",
            "--lang-field",
            "meta.lang",
            "--on-error",
            "skip",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "cli") == ref[2]
    assert d.exists()


def test_a_dataset_without_the_text_column_counts_every_row_missing(ref):
    datasets = pytest.importorskip("datasets")
    d = ref[0]
    ds = datasets.Dataset.from_dict({"content": ["a", "b", "c"]})
    with pytest.raises(DataprepError, match="missing_field"):
        quiet(ds, d / "nocol")
    m = quiet(ds, d / "nocol2", on_error="skip", allow_empty=True)
    assert m["totals"]["documents"] == 0 and m["skipped"]["counts"] == {"missing_field": 3}


def test_lang_from_path_is_refused_for_python_records(ref):
    with pytest.raises(DataprepError, match="lang_from_path: the input is Python records"):
        quiet(iter([{"text": "a"}]), ref[0] / "lfp", lang_from_path=r"/(en|fr)/")


def test_lone_surrogates_in_python_strings_repair_as_json_does(ref, tmp_path):
    # JSON escapes: a lone \ud800 is one U+FFFD, a pair \ud83d\ude00 is one character
    texts = ["a\ud800b", "x\ud83d\ude00y", "\udfff"]
    with open(tmp_path / "s.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")  # json.dumps writes the \uXXXX escapes
    quiet([str(tmp_path / "s.jsonl")], tmp_path / "j", repair_utf8=True)
    quiet(iter(texts), tmp_path / "p", repair_utf8=True)
    assert outputs(tmp_path / "j") == outputs(tmp_path / "p")


def test_parquet_build_does_not_import_pandas(ref, tmp_path):
    """pyarrow's Array.to_numpy()/fill_null() import pandas (over a second of CPU per process, more
    than tokenizing tens of MB): the Parquet path reads bitmaps and values through buffers. Null
    texts and null languages both take that path; the bytes still equal the .jsonl's."""
    import subprocess

    pytest.importorskip("pandas")
    recs = [dict(r, lang=None if i % 9 == 4 else r["lang"]) for i, r in enumerate(ref[1])]
    write_jsonl(tmp_path / "n.jsonl", recs)
    quiet([str(tmp_path / "n.jsonl")], tmp_path / "nj", lang_field="lang", on_error="skip")
    pq.write_table(table(recs), tmp_path / "n.parquet", row_group_size=100)
    child = (
        "import sys\nfrom rwkv5.dataprep.__main__ import main\nrc = main(sys.argv[1:])\n"
        "print('PANDAS', 'pandas' in sys.modules)\nsys.exit(rc)\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            child,
            "build",
            str(tmp_path / "n.parquet"),
            "--out",
            str(tmp_path / "np"),
            "--lang-field",
            "lang",
            "--on-error",
            "skip",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "PANDAS False" in r.stdout
    assert outputs(tmp_path / "np") == outputs(tmp_path / "nj")


@pytest.mark.parametrize("kind", ["file", "saved_dataset_streams"])
def test_arrow_ipc_split_into_tasks_by_record_batch_equals_jsonl(ref, monkeypatch, kind):
    """A big Arrow IPC file, or the streams of a saved dataset, is cut into tasks of whole record
    batches (as Parquet is by row group); the output bytes are those of the .jsonl."""
    d = ref[0]
    if kind == "file":
        t = table(ref[1])
        with ipc.new_file(str(d / "split.arrow"), t.schema) as w:
            for b in t.to_batches(max_chunksize=30):
                w.write_batch(b)
        inputs, n_batches = [str(d / "split.arrow")], [-(-len(ref[1]) // 30)]
    else:
        write_saved_dataset(str(d / "saved_split"), ref[1], n_files=2)
        inputs, n_batches = [str(d / "saved_split")], [-(-300 // 40), -(-300 // 40)]
    seen = []
    real = columnar.tokenize
    monkeypatch.setattr(
        columnar,
        "tokenize",
        lambda task, *a: seen.append((task["path"], task["start"], task["end"])) or real(task, *a),
    )
    m = quiet(inputs, d / f"split_{kind}", lang_field="lang", on_error="skip", task_size=20000)
    same_as_ref(ref, m, d / f"split_{kind}")
    # per file: several tasks of whole batches, covering every batch once, in order
    paths = sorted({p for p, _, _ in seen})
    assert len(paths) == len(n_batches)
    for path, n in zip(paths, n_batches):
        mine = [(a, b) for p, a, b in seen if p == path]
        assert (
            len(mine) > 2 and mine[0][0] == 0 and all(x[1] == y[0] for x, y in zip(mine, mine[1:]))
        ), mine
        assert mine[-1][1] == n


_HWM_CHILD = """
import sys
from rwkv5.dataprep.__main__ import main
rc = main(sys.argv[1:])
print("VMHWM_KB", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
sys.exit(rc)
"""


@pytest.mark.slow
@plain_rss
def test_parquet_build_peak_rss_does_not_grow_with_the_input(tmp_path):
    """Peak RSS of a build (a new process) from a 6 MB and from a 60 MB Parquet file of the same
    documents (4 KB each, 1024-row groups): pyarrow holds a data page and a few batches, whatever
    the file's size, so the larger input may not cost more than a generous 40 MiB more (holding
    its text would cost over 54 MB)."""
    import subprocess

    keys = sorted(SAMPLES)
    pool = [(" ".join([SAMPLES[k][0]] * 60))[:4000] for k in keys]
    peaks = {}
    for n in (1500, 15000):
        texts = pa.array([f"{pool[i % len(pool)]} #{i}" for i in range(n)], pa.string())
        path = tmp_path / f"{n}.parquet"
        pq.write_table(pa.table({"text": texts}), path, row_group_size=1024)
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                _HWM_CHILD,
                "build",
                str(path),
                "--out",
                str(tmp_path / f"o{n}"),
                "--workers",
                "2",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        peaks[n] = int(r.stdout.split("VMHWM_KB")[1].split()[0]) / 1024
    assert peaks[15000] < peaks[1500] + 40 and peaks[15000] < 1024, peaks
