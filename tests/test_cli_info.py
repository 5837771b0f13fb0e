"""`rwkv5 info` states the parameter count in a unit that fits the model."""

import re

import pytest

import rwkv5
from rwkv5.__main__ import count_with_unit, main
from rwkv5.testing import random_state_dict


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0"),
        (9_999, "9,999"),
        (10_000, "0.01 M"),
        (495_616, "0.50 M"),
        (730_000, "0.73 M"),
        (12_345_678, "12.3 M"),
        (169_000_000, "169 M"),
        (999_999_999, "1.00 B"),
        (1_578_000_000, "1.58 B"),
        (7_000_000_000, "7.00 B"),
    ],
)
def test_count_with_unit(n, text):
    assert count_with_unit(n) == text


def test_info_of_a_small_model(tmp_path, capsys):
    sd = random_state_dict("5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=300, seed=1)
    model = rwkv5.Model.from_state_dict(sd)
    model.save(tmp_path / "m.safetensors")
    assert main(["info", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^parameters ([\d,]+) \((.*)\)$", out, re.M)
    assert m, out
    n = int(m.group(1).replace(",", ""))
    assert n == sum(a.size for a in sd.values())
    assert 10_000 < n < 1_000_000 and m.group(2) == f"{n / 1e6:.2f} M"
