"""Model.save writes a safetensors checkpoint that rwkv5.load reads back to the same model."""

import json

import numpy as np
import pytest

import rwkv5
from rwkv5.formats.safetensors import read_safetensors
from rwkv5.testing import random_state_dict

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6]


def _sd(version="5.2", time_first=False, **kw):
    args = dict(n_layer=2, n_embd=64, head_size=16, vocab_size=200, seed=11)
    args.update(kw)
    sd = random_state_dict(version, time_first=time_first, **args)
    # decays across the trained range, including ones whose w is subnormal or 0 in float32
    for k in sd:
        if k.endswith("time_decay"):
            sd[k] = np.linspace(-6, 5, sd[k].size).reshape(sd[k].shape).astype(sd[k].dtype)
    return sd


def _same_logits(a, b, exact=True):
    for mode in ("recurrent", "parallel"):
        la, sa = a.forward(TOKENS, mode=mode, full_output=True)
        lb, sb = b.forward(TOKENS, mode=mode, full_output=True)
        if exact:
            np.testing.assert_array_equal(la, lb, err_msg=mode)
            np.testing.assert_array_equal(sa.att_kv, sb.att_kv, err_msg=mode)
        else:
            np.testing.assert_allclose(la, lb, rtol=0, atol=1e-4, err_msg=mode)


@pytest.mark.parametrize(
    "version, time_first", [("5.0", True), ("5.0", False), ("5.1", False), ("5.2", False)]
)
@pytest.mark.parametrize(
    "dtype, layout",
    [(None, "auto"), ("fp16", "auto"), ("bf16", "rows"), ("bf16", "blocked"), ("fp32", "blocked")],
)
def test_save_then_load_gives_identical_logits(tmp_path, version, time_first, dtype, layout):
    model = rwkv5.Model.from_state_dict(_sd(version, time_first), dtype=dtype, layout=layout)
    p = tmp_path / "m.safetensors"
    assert model.save(p) == p.stat().st_size
    back = rwkv5.load(p)
    assert back.config == model.config
    _same_logits(model, back)


def test_saved_file_holds_rwkv_lm_names_and_raw_values(tmp_path):
    sd = _sd("5.2")
    model = rwkv5.Model.from_state_dict(sd, dtype="bf16")
    model.save(tmp_path / "m.safetensors")
    got, dtypes, meta = read_safetensors(tmp_path / "m.safetensors")
    assert set(got) == set(sd)
    for k, a in sd.items():
        assert got[k].shape == a.shape, k
    np.testing.assert_array_equal(got["blocks.1.att.time_faaaa"], sd["blocks.1.att.time_faaaa"])
    np.testing.assert_allclose(
        got["blocks.1.att.time_decay"], sd["blocks.1.att.time_decay"], rtol=1e-12
    )
    np.testing.assert_array_equal(got["blocks.0.ln1.weight"], sd["blocks.0.ln1.weight"])
    assert (
        dtypes["head.weight"] == "BF16" and dtypes["blocks.0.ln1.weight"] == "F32"
    )  # as the model holds them
    assert meta["gn_eps"] == repr(64e-5)


def test_gn_eps_and_initial_state_survive(tmp_path):
    model = rwkv5.Model.from_state_dict(_sd("5.2"), gn_eps=1e-5)
    c = model.config
    kv = (
        np.random.default_rng(2)
        .standard_normal((c.n_layer, c.n_head, c.head_size, c.head_size))
        .astype(np.float32)
    )
    model._set_time_state(kv)  # what rwkv5.load does for a state-tuning checkpoint
    model.save(tmp_path / "m.safetensors")
    back = rwkv5.load(tmp_path / "m.safetensors")
    assert back.config.gn_eps == 1e-5
    np.testing.assert_array_equal(back.new_state().att_kv, kv)
    _same_logits(model, back)


@pytest.mark.parametrize("layout", ["auto", "rows"])
def test_int8_model_saves_its_quantised_form(tmp_path, layout):
    """An int8 model is saved as int8 (q blocked + per-row scales) and loads back zero copy to the
    same logits to the bit, without quantising again."""
    from rwkv5.model import _mmap_base

    model = rwkv5.Model.from_state_dict(
        _sd("5.2", n_embd=96, vocab_size=130), dtype="int8", layout=layout
    )
    p = tmp_path / "m.safetensors"
    assert model.save(p) == p.stat().st_size
    tensors, dtypes, meta = read_safetensors(p)
    assert (
        dtypes["blocks.0.att.key.weight"] == "I8"
        and dtypes["blocks.0.att.key.weight.scale"] == "F32"
    )
    assert tensors["blocks.0.att.key.weight"].shape == (24, 2, 4, 64)  # 96 rows, 96 cols: blocked
    assert json.loads(meta["rwkv5_quantized"])["matrices"]["head.weight"] == [130, 96]
    back = rwkv5.load(p)
    assert back.config == model.config and back.config.dtype == "int8"
    _same_logits(model, back)
    q, scale = back._weights["blocks.1.ffn.value.weight"]
    assert _mmap_base(q) is not None and q.ctypes.data % 64 == 0  # mapped, cache-line aligned
    np.testing.assert_array_equal(scale, model._weights["blocks.1.ffn.value.weight"][1])
    _same_logits(model, rwkv5.load(p, layout="rows"))
    _same_logits(model, rwkv5.load(p, dtype="int8", mmap=False))
    # other dtypes read the dequantized values q * scale
    as_fp32 = rwkv5.load(p, dtype="fp32")
    w = as_fp32._weights["blocks.0.att.key.weight"]
    q, s = model._weights["blocks.0.att.key.weight"]
    q = q if q.ndim == 2 else q.transpose(0, 2, 1, 3).reshape(96, 128)[:, :96]
    np.testing.assert_array_equal(
        w[:96] if w.ndim == 2 else w.transpose(0, 2, 1, 3).reshape(96, 96),
        q.astype(np.float32) * s[:, None],
    )


def test_loading_the_quantised_form_does_not_quantise(tmp_path, monkeypatch):
    model = rwkv5.Model.from_state_dict(_sd("5.2"), dtype="int8")
    model.save(tmp_path / "m.safetensors")
    from rwkv5 import model as model_module

    def refuse(*a, **k):
        raise AssertionError("quantised again")

    monkeypatch.setattr(model_module, "quantize_int8", refuse)
    _same_logits(model, rwkv5.load(tmp_path / "m.safetensors"))
    _same_logits(model, rwkv5.load(tmp_path / "m.safetensors", dtype="int8"))


def _rewrite(src, dst, change):
    from rwkv5.formats.safetensors import write_safetensors

    tensors, dtypes, meta = read_safetensors(src)
    tensors, meta = dict(tensors), dict(meta)
    change(tensors, meta)
    write_safetensors(
        dst, tensors, metadata=meta, dtypes={k: v for k, v in dtypes.items() if k in tensors}
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t, m: t.pop("blocks.1.att.key.weight.scale"),
            r"tensor 'blocks.1.att.key.weight.scale' of the int8 matrix 'blocks.1.att.key.weight' is missing",
        ),
        (
            lambda t, m: t.__setitem__("head.weight.scale", np.ones(3, np.float32)),
            r"tensor 'head.weight.scale': expected F32 \(200,\)",
        ),
        (
            lambda t, m: t.__setitem__("head.weight", np.zeros((50, 2, 4, 64), np.int8)),
            r"tensor 'head.weight': expected I8 \(50, 1, 4, 64\) for an? int8 matrix of shape \(200, 64\), got I8 \(50, 2, 4, 64\)",
        ),
        (
            lambda t, m: t["blocks.0.ffn.key.weight.scale"].__setitem__(3, np.inf),
            r"'blocks.0.ffn.key.weight.scale' has non-finite values",
        ),
        (
            lambda t, m: m.__setitem__(
                "rwkv5_quantized", m["rwkv5_quantized"].replace('"int8"', '"int3"')
            ),
            r"dtype 'int3' is not one of int8",
        ),
        (lambda t, m: m.__setitem__("rwkv5_quantized", "{"), r"rwkv5_quantized is not JSON"),
        (
            lambda t, m: m.__setitem__(
                "rwkv5_quantized", m["rwkv5_quantized"].replace('"version":1', '"version":2')
            ),
            r"with version 1",
        ),
    ],
)
def test_a_bad_quantised_file_is_named(tmp_path, change, message):
    model = rwkv5.Model.from_state_dict(_sd("5.2"), dtype="int8")
    model.save(tmp_path / "m.safetensors")

    def writable(t, m):
        for k in t:
            t[k] = np.array(t[k])
        change(t, m)

    _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", writable)
    with pytest.raises(ValueError, match=message):
        rwkv5.load(tmp_path / "bad.safetensors")


def test_rwkvcpp_file_round_trip(tmp_path, tiny_files):
    model = rwkv5.load(tiny_files["FP32.bin"])
    model.save(tmp_path / "m.safetensors")
    back = rwkv5.load(tmp_path / "m.safetensors")
    assert back.config == model.config  # including gn_eps 1e-5
    _same_logits(model, back)
