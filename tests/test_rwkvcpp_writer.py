"""write_rwkvcpp: an RWKV-5.2 state dict -> rwkv.cpp `.bin` (FP32/FP16), the inverse of read_rwkvcpp."""

import numpy as np
import pytest

import rwkv5
from rwkv5.formats.rwkvcpp import read_rwkvcpp, write_rwkvcpp
from rwkv5.testing import random_state_dict


@pytest.mark.parametrize("kind", ["FP32", "FP16"])
def test_fixture_is_reproduced_byte_for_byte(fixtures_dir, tmp_path, kind):
    src = fixtures_dir / f"tiny-rwkv-5v2-730K-{kind}.bin"
    sd, info = read_rwkvcpp(src)
    out = tmp_path / "again.bin"
    assert write_rwkvcpp(out, sd, kind) == src.stat().st_size
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("kind", ["FP32", "FP16"])
def test_round_trip_of_a_random_model(tmp_path, kind):
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=300, seed=5)
    out = tmp_path / "m.bin"
    write_rwkvcpp(out, sd, kind)
    back, info = read_rwkvcpp(out)
    assert (info["n_layer"], info["n_embd"], info["n_vocab"], info["data_type"]) == (
        2,
        128,
        300,
        kind,
    )
    assert sorted(back) == sorted(sd)
    for k, a in sd.items():
        b = np.asarray(back[k])
        assert b.shape == np.shape(a), k
        if k.endswith("time_decay"):  # stored as w = exp(-exp(d)) in float32
            assert np.allclose(
                np.exp(-np.exp(b)), np.exp(-np.exp(np.asarray(a, np.float64))), rtol=1e-6
            ), k
        elif b.ndim == 2 and ".time_" not in k and kind == "FP16":
            assert np.array_equal(b, np.asarray(a).astype(np.float16)), k
        else:
            assert np.array_equal(b, np.asarray(a, np.float32)), k
    # the file runs: the same logits as the state dict it was written from, at file precision
    m_file = rwkv5.load(str(out), dtype="fp32")
    m_sd = rwkv5.Model.from_state_dict(back, dtype="fp32", gn_eps=info["gn_eps"])
    toks = [1, 2, 3, 299]
    assert np.array_equal(m_file.forward(toks, None)[0], m_sd.forward(toks, None)[0])


def test_refuses_what_it_cannot_write(tmp_path):
    sd = random_state_dict(n_layer=1, n_embd=64, vocab_size=50, seed=1)
    with pytest.raises(ValueError, match="data_type"):
        write_rwkvcpp(tmp_path / "x.bin", sd, "Q8_0")
    bad = dict(sd, **{"blocks.0.att.key.weight": np.zeros((64, 64), np.uint16)})
    with pytest.raises(ValueError, match="bfloat16"):
        write_rwkvcpp(tmp_path / "x.bin", bad)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
