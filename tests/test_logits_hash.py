"""Bit identity of the C forward pass: sha256 of the logits and final state of fixed small models
(random ones of several shapes, and the shipped trained tiny model), for every weight dtype x
layout x mode (parallel, recurrent) x 1 and 2 threads, under each ISA level this CPU can run,
against tests/data/logits_hashes.json (recorded with tools/logits_hash.py --record).

A refactoring of the kernels must keep these to the bit; a change meant to alter results
re-records them for every ISA level (see tools/logits_hash.py)."""

import importlib.util
import pathlib

import pytest

from rwkv5 import _model

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("logits_hash", ROOT / "tools" / "logits_hash.py")
logits_hash = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(logits_hash)


def _runnable_isas():
    """Names of the ISA levels this CPU can run (the kernels clamp a forced level to the CPU's)."""
    keep = _model.get_isa()[0]
    names = []
    for level in range(4):  # the levels _model._set_isa takes
        name = _model._set_isa(level)
        if name not in names:
            names.append(name)
    _model._set_isa(names.index(keep))
    return names


ISAS = _runnable_isas()
RECORDED = logits_hash.load_file()


@pytest.fixture
def use_isa():
    before = _model.get_isa()[0]

    def use(name):
        assert _model._set_isa(ISAS.index(name)) == name

    yield use
    _model._set_isa(ISAS.index(before))


def test_hash_file_covers_the_cases():
    assert RECORDED, f"{logits_hash.HASHES} is missing or empty: run tools/logits_hash.py --record"
    for isa, cases in RECORDED.items():
        assert len(cases) == (
            len(logits_hash.MODELS)
            * len(logits_hash.DTYPES)
            * len(logits_hash.LAYOUTS)
            * len(logits_hash.MODES)
            * len(logits_hash.THREADS)
        ), isa


@pytest.mark.parametrize("model", logits_hash.MODELS)
@pytest.mark.parametrize("isa", ISAS)
def test_logits_and_state_bit_identical(isa, model, use_isa):
    want = RECORDED.get(isa)
    if want is None:
        pytest.skip(
            f"no logits hashes recorded for ISA {isa}: run "
            f"`RWKV5_ISA={isa} python tools/logits_hash.py --record` on a CPU that has it"
        )
    use_isa(isa)
    got = logits_hash.compute([model])
    differ = sorted(k for k in got if got[k] != want.get(k))
    assert not differ, (
        f"ISA {isa}: results not bit-identical in {len(differ)} of {len(got)} cases, "
        f"e.g. {differ[:4]}"
    )
