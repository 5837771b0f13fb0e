"""Model.save writes a safetensors checkpoint that rwkv5.load reads back to the same model."""
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


@pytest.mark.parametrize("version, time_first", [("5.0", True), ("5.0", False), ("5.1", False), ("5.2", False)])
@pytest.mark.parametrize("dtype, layout", [(None, "auto"), ("fp16", "auto"), ("bf16", "rows"), ("bf16", "blocked"),
                                           ("fp32", "blocked")])
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
    np.testing.assert_allclose(got["blocks.1.att.time_decay"], sd["blocks.1.att.time_decay"], rtol=1e-12)
    np.testing.assert_array_equal(got["blocks.0.ln1.weight"], sd["blocks.0.ln1.weight"])
    assert dtypes["head.weight"] == "BF16" and dtypes["blocks.0.ln1.weight"] == "F32"   # as the model holds them
    assert meta["gn_eps"] == repr(64e-5)


def test_gn_eps_and_initial_state_survive(tmp_path):
    model = rwkv5.Model.from_state_dict(_sd("5.2"), gn_eps=1e-5)
    c = model.config
    kv = np.random.default_rng(2).standard_normal((c.n_layer, c.n_head, c.head_size, c.head_size)).astype(np.float32)
    model._set_time_state(kv)   # what rwkv5.load does for a state-tuning checkpoint
    model.save(tmp_path / "m.safetensors")
    back = rwkv5.load(tmp_path / "m.safetensors")
    assert back.config.gn_eps == 1e-5
    np.testing.assert_array_equal(back.new_state().att_kv, kv)
    _same_logits(model, back)


def test_int8_model_saves_its_dequantized_weights(tmp_path):
    model = rwkv5.Model.from_state_dict(_sd("5.2"), dtype="int8")
    model.save(tmp_path / "m.safetensors")
    back = rwkv5.load(tmp_path / "m.safetensors")
    assert back.config.dtype == "fp32"
    _same_logits(model, back, exact=False)


def test_rwkvcpp_fixture_round_trip(tmp_path, fixtures_dir):
    model = rwkv5.load(fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin")
    model.save(tmp_path / "m.safetensors")
    back = rwkv5.load(tmp_path / "m.safetensors")
    assert back.config == model.config            # including gn_eps 1e-5
    _same_logits(model, back)
