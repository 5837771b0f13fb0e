"""The parameter table (csrc/model/params.c, exported as rwkv5._model.PARAMS): it names exactly the
tensors of real checkpoints, the Model holds its weights by those names, and the C binding takes a
name -> array mapping that it checks against the table (a missing, unexpected or mis-shaped name
is a ValueError naming it)."""

import pathlib

import numpy as np
import pytest

import rwkv5
from rwkv5 import _model
from rwkv5._checkpoint import PARAMS, detect_architecture, model_params
from rwkv5.loading import read_checkpoint
from rwkv5.model import _c_matrix
from rwkv5.testing import random_state_dict

TINY = pathlib.Path(rwkv5.__file__).parent / "data" / "tiny-5v2-bytes.safetensors"


def test_table_rows():
    assert len(PARAMS) == len(_model.PARAMS) == 28
    names = [p.name for p in PARAMS]
    assert len(set(names)) == len(names)
    for p in PARAMS:
        assert p.kind in ("matrix", "vector", "decay", "bonus")
        assert len(p.dims) == (2 if p.kind == "matrix" else 1) and set(p.dims) <= {
            "C",
            "A",
            "F",
            "V",
        }
    assert {p.name for p in PARAMS if p.gate_only} == {"att.time_mix_g", "att.gate.weight"}


@pytest.mark.parametrize("path", [TINY, "bf16.pth"])
def test_table_names_the_tensors_of_a_real_checkpoint(path, tiny_files):
    if isinstance(path, str):  # the shipped model as torch.save writes an RWKV-LM checkpoint
        path = tiny_files[path]
    sd, _ = read_checkpoint(path)
    arch = detect_architecture(sd)
    table = {name: p for name, _, p in model_params(arch)}
    assert set(table) == set(sd)
    for name, p in table.items():
        if p.kind == "matrix":
            assert sd[name].shape == p.shape(arch), name
        else:  # vectors as (C,) or (1, 1, C); decay/bonus per head or per channel
            assert int(np.prod(sd[name].shape)) == int(np.prod(p.shape(arch))), name


@pytest.mark.parametrize("version", ["5.0", "5.1", "5.2"])
def test_model_holds_its_weights_by_table_name(version):
    sd = random_state_dict(version, n_layer=2, n_embd=32, head_size=16, vocab_size=40)
    model = rwkv5.Model.from_state_dict(sd)
    want = [name for name, _, _ in model_params(model._arch)]
    assert list(model._weights) == want
    assert ("blocks.1.att.gate.weight" in want) == (version != "5.0")


def _c_args(version="5.2"):
    sd = random_state_dict(version, n_layer=2, n_embd=32, head_size=16, vocab_size=40, n_ffn=64)
    m = rwkv5.Model.from_state_dict(sd, layout="rows")
    c = m.config
    cfg = (
        c.n_layer,
        c.n_embd,
        c.n_head,
        c.head_size,
        c.n_ffn,
        c.vocab_size,
        int(version != "5.0"),
        c.gn_eps,
    )
    kinds = {name: p.kind for name, _, p in model_params(m._arch)}
    # matrices tagged with their storage type, as the binding takes them
    return m, cfg, {n: _c_matrix(a) if kinds[n] == "matrix" else a for n, a in m._weights.items()}


def test_cmodel_from_the_mapping_computes_what_the_model_does():
    m, cfg, params = _c_args()
    c = _model.CModel(cfg, params)
    st = m.new_state(1)
    toks = np.array([[1, 2, 3]], np.int32)
    got = c.forward(toks, st.att_x.copy(), st.att_kv.copy(), st.ffn_x.copy(), 1, True)
    want, _ = m.forward(toks, mode="parallel", full_output=True)
    assert np.array_equal(got, want)


def test_cmodel_names_a_missing_parameter():
    _, cfg, params = _c_args()
    del params["blocks.1.att.key.weight"]
    with pytest.raises(ValueError, match=r"params: missing blocks\.1\.att\.key\.weight"):
        _model.CModel(cfg, params)


@pytest.mark.parametrize(
    "extra", ["blocks.0.att.time_mix_x", "blocks.2.ln1.weight", "ln_out.bias2"]
)
def test_cmodel_names_an_unexpected_parameter(extra):
    _, cfg, params = _c_args()
    params[extra] = params["ln_out.bias"]
    with pytest.raises(ValueError, match=rf"params: unexpected '{extra}'"):
        _model.CModel(cfg, params)


def test_cmodel_without_gate_refuses_gate_parameters():
    _, cfg, params = _c_args("5.0")
    _, _, gated = _c_args("5.2")
    params["blocks.0.att.gate.weight"] = gated["blocks.0.att.gate.weight"]
    with pytest.raises(ValueError, match=r"unexpected 'blocks\.0\.att\.gate\.weight'"):
        _model.CModel(cfg, params)


def test_cmodel_names_a_misshaped_or_mistyped_parameter():
    _, cfg, params = _c_args()
    bad = dict(params, **{"blocks.1.ffn.value.weight": params["blocks.1.ffn.key.weight"]})
    with pytest.raises(
        ValueError,
        match=r"blocks\.1\.ffn\.value\.weight: expected shape \(32, 64\), got \(64, 32\)",
    ):
        _model.CModel(cfg, bad)
    bad = dict(
        params, **{"blocks.0.att.time_decay": params["blocks.0.att.time_decay"].astype(np.float32)}
    )
    with pytest.raises(TypeError, match=r"blocks\.0\.att\.time_decay: expected dtype float64"):
        _model.CModel(cfg, bad)
    bad = dict(params, **{"blocks.0.att.ln_x.weight": params["blocks.0.att.ln_x.weight"][:-1]})
    with pytest.raises(
        ValueError, match=r"blocks\.0\.att\.ln_x\.weight: expected shape \(32,\), got \(31,\)"
    ):
        _model.CModel(cfg, bad)
    with pytest.raises(TypeError):
        _model.CModel(cfg, list(params.items()))
