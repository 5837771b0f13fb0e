"""Multilingual mixing in build (docs/dataprep.md, "Multilingual mixing"): shares, determinism for a
seed whatever the number of workers, crash-safe resume, bad option values."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dataprep_helpers import SAMPLES, read_binidx_independent
from rwkv5.dataprep import build
from rwkv5.dataprep.build import DataprepError
from rwkv5.dataprep.mixing import plan_mix

LANGS = {"en": 1000, "fr": 100, "ru": 10}  # documents per language


def write_corpus(folder, counts=LANGS, seed=0):
    """One .jsonl per language (folder per language), documents of varied length, every text
    different; returns {lang: [text, ...]}."""
    rng = random.Random(seed)
    texts = {}
    for lang, n in counts.items():
        base = SAMPLES[lang][0]
        os.makedirs(os.path.join(folder, lang), exist_ok=True)
        texts[lang] = [f"{i} " + " ".join([base] * rng.randint(1, 5)) for i in range(n)]
        with open(os.path.join(folder, lang, "part.jsonl"), "w", encoding="utf-8") as f:
            for t in texts[lang]:
                f.write(json.dumps({"text": t, "lang": lang}, ensure_ascii=False) + "\n")
    return texts


def files_of(prefix):
    out = {}
    for ext in (".bin", ".idx"):
        with open(prefix + ext, "rb") as f:
            out[ext] = f.read()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    texts = write_corpus(str(d / "corpus"))
    return d, str(d / "corpus"), texts


def test_temperature_shares_within_one_percent(corpus):
    d, src, _texts = corpus
    out = str(d / "t03")
    m = build([src], out, lang_field="lang", mix_temperature=0.3, mix_max_epochs=20, workers=1)
    mix = m["mix"]
    n = {k: v["input_tokens"] for k, v in mix["languages"].items()}
    z = sum(x**0.3 for x in n.values())
    assert set(n) == set(LANGS)
    for lang, e in mix["languages"].items():
        want = n[lang] ** 0.3 / z
        assert e["target_share"] == pytest.approx(want, abs=1e-6)
        assert abs(e["realized_share"] - want) <= 0.01 * want, (lang, e, want)
        assert e["epochs"] == pytest.approx(e["output_tokens"] / e["input_tokens"], abs=1e-4)
    # the small language is repeated (whole passes), the big one subsampled
    assert mix["languages"]["ru"]["epochs"] > 10 and mix["languages"]["en"]["epochs"] < 1
    assert mix["shortfall_tokens"] == 0 and mix["warnings"] == []
    # the manifest's realized shares are what the written set holds: count tokens per language
    docs, _ = read_binidx_independent(out)
    assert (
        len(docs) == m["totals"]["documents"] and sum(len(x) for x in docs) == m["totals"]["tokens"]
    )
    assert m["totals"]["tokens"] == mix["output_tokens"]
    from rwkv5.tokenizer import WorldTokenizer

    tok = WorldTokenizer()
    per = {}
    for doc in docs:
        text = tok.decode(doc[:-1].tolist())
        lang = next(k for k in LANGS if SAMPLES[k][0] in text)
        per[lang] = per.get(lang, 0) + len(doc)
    total = sum(per.values())
    for lang, e in mix["languages"].items():
        assert per[lang] == e["output_tokens"]
        assert per[lang] / total == pytest.approx(e["realized_share"], abs=1e-6)
    assert m["options"]["mix_temperature"] == 0.3


def test_temperature_one_keeps_the_natural_mix(corpus):
    d, src, _ = corpus
    m = build([src], str(d / "t1"), lang_field="lang", mix_temperature=1.0, workers=1)
    plain = build([src], str(d / "plain"), lang_field="lang", workers=1)
    assert m["totals"]["tokens"] == plain["totals"]["tokens"]
    for e in m["mix"]["languages"].values():
        assert e["epochs"] == 1.0 and e["realized_share"] == e["input_share"]
    assert files_of(str(d / "t1")) == files_of(
        str(d / "plain")
    )  # every document once, in input order


def test_weights_default_weight_and_dropped_languages(corpus):
    d, src, _ = corpus
    m = build(
        [src],
        str(d / "w"),
        lang_field="lang",
        mix_weights="en=0.5,fr=0.5",
        mix_tokens=20000,
        workers=1,
    )
    langs = m["mix"]["languages"]
    assert langs["ru"]["target_share"] == 0 and langs["ru"]["output_tokens"] == 0
    assert langs["en"]["target_share"] == langs["fr"]["target_share"] == 0.5
    assert abs(langs["en"]["realized_share"] - 0.5) < 0.01
    assert abs(m["totals"]["tokens"] - 20000) < 100
    m = build(
        [src],
        str(d / "w2"),
        lang_field="lang",
        mix_weights={"en": 2},
        mix_default_weight=1,
        workers=1,
    )
    langs = m["mix"]["languages"]
    assert langs["en"]["target_share"] == pytest.approx(0.5) and langs["ru"][
        "target_share"
    ] == pytest.approx(0.25)


def test_max_epochs_shortfall_is_reported(corpus, capsys):
    d, src, _ = corpus
    logs = []
    m = build(
        [src], str(d / "cap"), lang_field="lang", mix_temperature=0.0, workers=1, log=logs.append
    )
    ru = m["mix"]["languages"]["ru"]
    assert ru["epochs"] <= 10 and ru["shortfall_tokens"] > 0
    assert ru["realized_share"] < ru["target_share"]
    assert m["mix"]["shortfall_tokens"] == ru["shortfall_tokens"]
    assert any("ru needs" in x and "--mix-max-epochs 10" in x for x in logs), logs


def test_same_seed_same_bytes_with_1_and_2_workers(corpus):
    d, src, _ = corpus
    opts = dict(
        lang_field="lang",
        mix_temperature=0.3,
        mix_max_epochs=20,
        shuffle=True,
        seed=7,
        task_size=4000,
    )
    m1 = build([src], str(d / "s1"), workers=1, **opts)
    m2 = build([src], str(d / "s2"), workers=2, **opts)
    assert files_of(str(d / "s1")) == files_of(str(d / "s2"))
    assert m1["mix"] == m2["mix"]
    m3 = build([src], str(d / "s3"), workers=2, **{**opts, "seed": 8})
    assert files_of(str(d / "s3")) != files_of(str(d / "s1"))
    assert len(m1["shards"]) == 1 and m3["totals"]["documents"] > 0


def test_plan_mix_is_whole_passes_then_a_subsample():
    names = ["a", "b"]
    doc_lang = np.array([0] * 6 + [1] * 3)
    tokens = np.array([10] * 6 + [5, 6, 7])
    order, rep = plan_mix(
        names,
        doc_lang,
        tokens,
        {"mix_temperature": 0.0, "mix_tokens": 120, "mix_max_epochs": 10, "seed": 1},
    )
    # b: target 60 tokens of 18 -> 3 passes (54) + docs nearest to 6 tokens (one of 5 / 6 / 7)
    counts = np.bincount(order, minlength=9)
    assert counts[:6].tolist() == [1] * 6  # a: exactly one pass
    assert sorted(counts[6:].tolist()) == [3, 3, 4]
    assert rep["languages"]["b"]["output_tokens"] in (59, 60, 61)
    # order: pass by pass, input order within a pass
    assert order[:9].tolist() == list(range(9))


@pytest.mark.parametrize(
    "opts, msg",
    [
        (dict(mix_temperature=-1), "--mix-temperature: expected a finite number >= 0"),
        (dict(mix_temperature="nan"), "--mix-temperature: expected a finite number >= 0"),
        (dict(mix_temperature="x"), "--mix-temperature: expected a number"),
        (dict(mix_weights="en"), "--mix-weights: expected LANG=WEIGHT pairs"),
        (dict(mix_weights="en=-1"), "--mix-weights en: expected a finite number >= 0"),
        (dict(mix_weights="en=1,en=2"), "--mix-weights: language 'en' is given twice"),
        (dict(mix_weights="en=0"), "--mix-weights: every weight is 0"),
        (dict(mix_weights="en=1", mix_temperature=0.3), "exclude each other"),
        (dict(mix_default_weight=1), "--mix-default-weight needs --mix-weights"),
        (dict(mix_temperature=0.3, mix_tokens=0), "--mix-tokens: expected a token count >= 1"),
        (dict(mix_tokens=100), "--mix-tokens needs --mix-temperature or --mix-weights"),
        (
            dict(mix_temperature=0.3, mix_max_epochs=0.5),
            "--mix-max-epochs: expected a finite number >= 1",
        ),
        (dict(mix_temperature=0.3, epochs=2), "--epochs cannot be combined"),
        (dict(mix_temperature=0.3, lang_field=None), "need the language of each document"),
    ],
)
def test_bad_mix_options(corpus, opts, msg):
    d, src, _ = corpus
    opts = {"lang_field": "lang", **opts}
    with pytest.raises(DataprepError, match=msg) as ei:
        build([src], str(d / "bad"), **opts)
    assert "\n" not in str(ei.value)
    assert not os.path.exists(str(d / "bad.bin"))


def test_weights_naming_no_input_language(corpus):
    d, src, _ = corpus
    with pytest.raises(
        DataprepError, match="none of the input's languages .* has a weight above 0"
    ):
        build([src], str(d / "bad2"), lang_field="lang", mix_weights="de=1")
    logs = []
    m = build([src], str(d / "w3"), lang_field="lang", mix_weights="de=1,en=1", log=logs.append)
    assert m["mix"]["languages"]["en"]["target_share"] == 1.0
    assert any("de" in x and "no document" in x for x in logs)


def test_cli_mix_and_stats(corpus):
    d, src, _ = corpus
    out = str(d / "cli")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            src,
            "--out",
            out,
            "--lang-field",
            "lang",
            "--mix-temperature",
            "0.3",
            "--mix-max-epochs",
            "20",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    m = json.load(open(out + ".manifest.json"))
    assert m["options"]["mix_temperature"] == 0.3 and m["options"]["mix_max_epochs"] == 20
    r = subprocess.run(
        [sys.executable, "-m", "rwkv5.dataprep", "stats", out], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "target share" in r.stdout and "realized share" in r.stdout
    ru = [line for line in r.stdout.splitlines() if line.startswith("ru ")]
    assert ru and f"{m['mix']['languages']['ru']['epochs']:.2f}" in ru[-1], r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv5.dataprep",
            "build",
            src,
            "--out",
            out + "x",
            "--lang-field",
            "lang",
            "--mix-temperature",
            "-0.5",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "--mix-temperature: expected a finite number >= 0" in r.stderr


def _cmd(src, out):
    return [
        sys.executable,
        "-m",
        "rwkv5.dataprep",
        "build",
        src,
        "--out",
        out,
        "--lang-field",
        "lang",
        "--mix-temperature",
        "0.3",
        "--mix-max-epochs",
        "20",
        "--shuffle",
        "--seed",
        "5",
        "--task-size",
        "3000",
        "--workers",
        "2",
        "--no-progress",
    ]


def test_killed_mixed_build_resumes_byte_identically(corpus):
    d, src, _ = corpus
    ref = str(d / "ref")
    t0 = time.perf_counter()
    subprocess.run(_cmd(src, ref), check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    want = files_of(ref)
    want_m = json.load(open(ref + ".manifest.json"))
    rng = random.Random(99)
    killed = 0
    for trial in range(3):
        out = str(d / f"k{trial}")
        for attempt in range(4):
            p = subprocess.Popen(
                _cmd(src, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if attempt < 3:
                time.sleep(rng.uniform(0.05, seconds * 0.9))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    killed += 1
            p.wait()
            if p.returncode == 0:
                break
        assert p.returncode == 0
        assert files_of(out) == want
        m = json.load(open(out + ".manifest.json"))
        assert m["mix"] == want_m["mix"] and m["totals"] == want_m["totals"]
        assert [sorted(f["sha256"] for f in sh["files"].values()) for sh in m["shards"]] == [
            sorted(f["sha256"] for f in sh["files"].values()) for sh in want_m["shards"]
        ]
    assert killed > 0  # at least one run was really interrupted


def test_language_from_the_path_mixes_like_the_field(corpus):
    """--lang-from-path records the same languages as --lang-field here: the same mixed bytes."""
    d, src, _ = corpus
    opts = dict(mix_temperature=0.3, mix_max_epochs=20, shuffle=True, seed=2, workers=1)
    a = build([src], str(d / "lp"), lang_from_path=r"/(en|fr|ru)/", **opts)
    b = build([src], str(d / "lf"), lang_field="lang", **opts)
    assert a["mix"]["languages"] == b["mix"]["languages"]
    assert files_of(str(d / "lp")) == files_of(str(d / "lf"))


def test_a_large_temperature_does_not_overflow(tmp_path):
    # shares are n_i^ALPHA normalised: computed in log space, ALPHA = 200 gives the largest language all
    recs = [
        {"text": f"doc {i} " * (5 if i % 2 else 1), "lang": "en" if i % 2 else "fr"}
        for i in range(40)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = build([str(src)], str(tmp_path / "o"), lang_field="lang", mix_temperature=200.0)
    shares = {k: v["target_share"] for k, v in m["mix"]["languages"].items()}
    assert shares["en"] == pytest.approx(1.0) and shares["fr"] == pytest.approx(0.0), shares
