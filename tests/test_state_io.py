"""State files (save/load, validation) and state-tuning files (time_state) as initial states."""

import json
import struct

import numpy as np
import pytest

import rwkv5
from rwkv5 import State
from rwkv5.formats.safetensors import read_safetensors, write_safetensors
from rwkv5.formats.state_io import (
    initial_state_from_file,
    load_state,
    save_state,
    time_state_to_att_kv,
)

from _loaders_util import random_rwkv5_torch_sd


def _state(L=3, H=2, N=4, B=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if B is None else (B,)
    C = H * N
    return State(
        rng.standard_normal(lead + (L, C)).astype(np.float32),
        rng.standard_normal(lead + (L, H, N, N)).astype(np.float32),
        rng.standard_normal(lead + (L, C)).astype(np.float32),
    )


@pytest.mark.parametrize("B", [None, 3])
def test_round_trip(tmp_path, B):
    s = _state(B=B)
    p = tmp_path / "s.safetensors"
    s.save(p)  # State.save delegates to state_io.save_state
    t = State.load(p)
    for n in ("att_x", "att_kv", "ffn_x"):
        a, b = getattr(s, n), getattr(t, n)
        assert b.dtype == np.float32 and b.shape == a.shape and b.flags.writeable
        np.testing.assert_array_equal(a, b)
    _, dtypes, meta = read_safetensors(p)
    assert meta["format"] == "rwkv5-state" and meta["version"] == "1"
    assert json.loads(meta["shapes"])["att_kv"] == list(s.att_kv.shape)


def test_save_rejects_wrong_types(tmp_path):
    s = _state()
    with pytest.raises(TypeError, match="float32"):
        save_state(State(s.att_x.astype(np.float64), s.att_kv, s.ffn_x), tmp_path / "x")
    with pytest.raises(TypeError, match="rwkv5.State"):
        save_state(object(), tmp_path / "x")
    with pytest.raises(ValueError, match="ffn_x shape"):
        save_state(State(s.att_x, s.att_kv, s.ffn_x[:2]), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _write(p, arrays, meta):
    write_safetensors(p, arrays, metadata=meta)
    return p


@pytest.mark.parametrize(
    "change, msg",
    [
        (lambda a, m: m.update(format="other"), "format"),
        (lambda a, m: m.update(version="9"), "version"),
        (lambda a, m: m.pop("shapes"), "shapes"),
        (lambda a, m: m.update(shapes="[1"), "shapes"),
        (lambda a, m: a.pop("ffn_x"), "expected exactly"),
        (lambda a, m: a.update(extra=np.zeros(1, np.float32)), "expected exactly"),
        (lambda a, m: a.update(att_x=a["att_x"].astype(np.float16)), "expected F32"),
        (lambda a, m: a.update(att_kv=a["att_kv"][:, :, :, :3].copy()), "differ from the recorded"),
    ],
)
def test_load_validates(tmp_path, change, msg):
    s = _state()
    arrays = {n: getattr(s, n) for n in ("att_x", "att_kv", "ffn_x")}
    meta = {
        "format": "rwkv5-state",
        "version": "1",
        "shapes": json.dumps({n: list(a.shape) for n, a in arrays.items()}),
    }
    change(arrays, meta)
    p = _write(tmp_path / "bad.safetensors", arrays, meta)
    with pytest.raises(ValueError, match=msg):
        load_state(p)


def test_load_rejects_inconsistent_recorded_shapes(tmp_path):
    s = _state()
    arrays = {"att_x": s.att_x, "att_kv": s.att_kv[:2].copy(), "ffn_x": s.ffn_x}
    meta = {
        "format": "rwkv5-state",
        "version": "1",
        "shapes": json.dumps({n: list(a.shape) for n, a in arrays.items()}),
    }
    with pytest.raises(ValueError, match="att_kv has shape"):
        load_state(_write(tmp_path / "b.safetensors", arrays, meta))


def test_load_rejects_garbage(tmp_path):
    p = tmp_path / "g"
    p.write_bytes(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(ValueError, match="format"):
        load_state(p)


def test_time_state_layout():
    rng = np.random.default_rng(0)
    ts = {i: rng.standard_normal((2, 4, 4)).astype(np.float32) for i in range(3)}
    kv = time_state_to_att_kv(ts)
    # element [h][key i][value j] of ours is element [h][value j][key i] of the file
    assert kv[1, 1, 2, 3] == ts[1][1, 3, 2]
    with pytest.raises(ValueError, match="not 0..1"):
        time_state_to_att_kv({0: ts[0], 2: ts[2]})
    with pytest.raises(ValueError, match=r"expected \(H, N, N\)"):
        time_state_to_att_kv({0: np.zeros((2, 4, 3), np.float32)})


# -- with a model ---------------------------------------------------------------------------------

torch = pytest.importorskip(
    "torch", reason="torch (test extra) writes the state-tuning checkpoints"
)


def _tuned_checkpoint(tmp_path, **kw):
    tsd = random_rwkv5_torch_sd(
        n_layer=2, n_embd=64, head_size=16, vocab=97, time_state=True, seed=11, **kw
    )
    p = tmp_path / "tuned.pth"
    torch.save(tsd, p)
    return p, tsd


def test_state_tuning_checkpoint_gives_initial_state(tmp_path):
    p, tsd = _tuned_checkpoint(tmp_path)
    model = rwkv5.load(p)
    s0 = model.new_state()
    for i in range(2):
        np.testing.assert_array_equal(
            s0.att_kv[i], tsd[f"blocks.{i}.att.time_state"].transpose(1, 2).numpy()
        )
    assert not s0.att_x.any() and not s0.ffn_x.any()
    sb = model.new_state(batch=2)
    assert sb.att_kv.shape == (2, 2, 4, 16, 16)
    np.testing.assert_array_equal(sb.att_kv[1], s0.att_kv)
    # the tuned state changes the output compared with a zero state
    zero = State(np.zeros_like(s0.att_x), np.zeros_like(s0.att_kv), np.zeros_like(s0.ffn_x))
    a, _ = model.forward([1, 2, 3], s0)
    b, _ = model.forward([1, 2, 3], zero)
    assert np.abs(a - b).max() > 1e-3


def test_new_state_from_file(tmp_path):
    p, tsd = _tuned_checkpoint(tmp_path)
    plain = {k: v for k, v in tsd.items() if "time_state" not in k}
    q = tmp_path / "plain.pth"
    torch.save(plain, q)
    model = rwkv5.load(q)
    assert not model.new_state().att_kv.any()
    s = model.new_state(from_file=p)  # a state-tuning checkpoint
    np.testing.assert_array_equal(
        s.att_kv[1], tsd["blocks.1.att.time_state"].transpose(1, 2).numpy()
    )
    _, s2 = model.forward([5, 6, 7], s)
    f = tmp_path / "after.safetensors"
    s2.save(f)
    s3 = model.new_state(from_file=f)  # a saved state
    np.testing.assert_array_equal(s3.att_kv, s2.att_kv)
    np.testing.assert_array_equal(s3.att_x, s2.att_x)
    other = State(
        np.zeros((3, 64), np.float32),
        np.zeros((3, 4, 16, 16), np.float32),
        np.zeros((3, 64), np.float32),
    )
    g = tmp_path / "other.safetensors"
    other.save(g)
    with pytest.raises(ValueError, match="do not fit the model"):
        model.new_state(from_file=g)
    with pytest.raises(ValueError, match="neither an rwkv5 state file nor a state-tuning file"):
        model.new_state(from_file=q)
    assert initial_state_from_file(p, model.config).att_kv.shape == (2, 4, 16, 16)
