"""The trained model shipped in the package (rwkv5.tiny) and the script that made it (tools/train_tiny.py)."""

import hashlib
import importlib.util
import json
import pathlib

import numpy as np
import pytest

import rwkv5
import rwkv5.tiny
from rwkv5.formats.safetensors import read_safetensors

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "tools" / "train_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_model_loads_and_says_how_it_was_made():
    model = rwkv5.tiny.load()
    c = model.config
    assert (c.version, c.n_layer, c.n_embd, c.n_head, c.head_size, c.vocab_size) == (
        "5.2",
        3,
        96,
        6,
        16,
        256,
    )
    assert c.gn_eps == 64e-5
    _, dtypes, meta = read_safetensors(rwkv5.tiny.PATH)
    assert set(dtypes.values()) == {"F32"}
    assert meta["trained_by"] == "tools/train_tiny.py" and meta["text"].startswith("faker 40.63.0")


def test_shipped_model_is_trained():
    """Far below the 8 bits/byte of a uniform guess on prose in its languages that it never saw."""
    model = rwkv5.tiny.load()
    docs = [
        json.loads(line)
        for line in open(ROOT / "rwkv5" / "data" / "sample_corpus.jsonl", encoding="utf-8")
    ]
    for lang in ("en", "de", "ru", "th"):
        ids = np.frombuffer(
            " ".join(d["text"] for d in docs if d["lang"] == lang).encode(), np.uint8
        )
        bits = model.score(ids.astype(np.int64)).loss / np.log(2)
        assert bits < 4.5, (lang, bits)


torch = pytest.importorskip(
    "torch", reason="torch (test/train extra) runs the training script's forward"
)


def test_training_forward_equals_rwkv5_on_the_shipped_weights():
    T = load_script()
    model = T.build_model(T.Config())
    sd = read_safetensors(rwkv5.tiny.PATH)[0]
    with torch.no_grad():
        for name, key in model.names.items():
            model.p[key].copy_(torch.from_numpy(np.array(sd[name])))
    diffs, largest = T.check_against_rwkv5(
        model, rwkv5.tiny.PATH, "Hello, Welt! Привет, 世界. 1950-01-01"
    )
    assert largest > 1 and max(diffs.values()) < 1e-4, diffs


def test_chunked_wkv_equals_the_recurrence():
    T = load_script()
    g = torch.Generator().manual_seed(0)
    B, L, H, N = 2, 37, 3, 8  # 37: a short last chunk, padded inside
    r, k, v = (torch.randn(B, L, H * N, generator=g, dtype=torch.float64) for _ in range(3))
    logw = -torch.exp(torch.empty(H, N, dtype=torch.float64).uniform_(-6, 2.5, generator=g))
    u = torch.randn(H, N, generator=g, dtype=torch.float64)
    y = T.wkv_chunked(r, k, v, logw, u, H, N, chunk=16)
    rr, kk, vv = (z.view(B, L, H, N) for z in (r, k, v))
    S = torch.zeros(B, H, N, N, dtype=torch.float64)
    w = torch.exp(logw)
    for t in range(L):
        kv = kk[:, t, :, :, None] * vv[:, t, :, None, :]
        want = torch.einsum("bhi,bhij->bhj", rr[:, t], u[None, :, :, None] * kv + S)
        S = w[None, :, :, None] * S + kv
        assert torch.allclose(y[:, t].view(B, H, N), want, atol=1e-10, rtol=0)


faker = pytest.importorskip("faker", reason="faker (test/train extra) writes the training text")


def test_training_text_is_the_one_recorded_in_the_shipped_file():
    T = load_script()
    if faker.VERSION != T.FAKER_VERSION:
        pytest.skip(
            f"faker {faker.VERSION} installed, the model was trained on text from {T.FAKER_VERSION}"
        )
    data = T.training_stream(T.make_corpus(T.Config()))
    meta = read_safetensors(rwkv5.tiny.PATH)[2]
    assert meta["text"].endswith("sha256 " + hashlib.sha256(data.tobytes()).hexdigest())


def test_a_short_training_run_is_reproducible(tmp_path):
    T = load_script()
    cfg = T.Config()
    cfg.bytes_per_language, cfg.heldout_docs, cfg.steps, cfg.batch, cfg.ctx, cfg.warmup = (
        2000,
        1,
        4,
        2,
        32,
        2,
    )
    runs = []
    for name in ("a", "b"):
        result = T.train(cfg, tmp_path / f"{name}.safetensors", log=lambda s: None)
        runs.append((tmp_path / f"{name}.safetensors").read_bytes())
        assert all(0 < b < 9 for b in result["heldout"].values())
    assert runs[0] == runs[1]
    assert read_safetensors(tmp_path / "a.safetensors")[2]["steps"] == "4"
