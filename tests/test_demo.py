"""`make demo` runs end to end (python -m rwkv5.demo) and shows what it promises, on the shipped
trained model and on a user's World-vocabulary checkpoint given with --model."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from rwkv5.formats.safetensors import write_safetensors
from rwkv5.testing import random_state_dict


def run_demo(tmp, *args):
    # the demo leaves its outputs for the user to look at; here they go to tmp, not /tmp
    env = dict(os.environ, TMPDIR=str(tmp))
    r = subprocess.run(
        [sys.executable, "-m", "rwkv5.demo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert all(p.name.startswith("rwkv5-demo-") for p in pathlib.Path(tmp).iterdir())
    return r


def bits_per_byte(out):
    return {
        m.group(1): float(m.group(3)) for m in re.finditer(r"^(\w+) +(\d+) +([0-9.]+)$", out, re.M)
    }


def check_modes_agree(out):
    m = re.search(
        r"max \|logit\(parallel\) - logit\(recurrent\)\| = ([0-9.e+-]+) "
        r"\(relative to the largest \|logit\|, [0-9.]+: ([0-9.e+-]+)",
        out,
    )
    assert m and float(m.group(1)) < 1e-3 and float(m.group(2)) < 1e-5, out


def test_demo_runs_on_the_shipped_trained_model(tmp_path):
    r = run_demo(tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "29 documents" in out and "format binidx" in out
    assert re.search(r"--my_exit_tokens \d+ --magic_prime \d+ --ctx_len 128", out)
    assert "TRAINED byte-level RWKV-5.2" in out and "RANDOM" not in out
    check_modes_agree(out)
    bpb = bits_per_byte(out)
    assert len(bpb) == 18, out
    # trained languages: far below the 8 bits/byte of a uniform guess (a random model scores > 8)
    for lang in ("en", "de", "fr", "es", "ru", "el", "ar", "hi", "th"):
        assert bpb[lang] < 4.5, (lang, out)
    assert bpb["code"] > 6  # not in its training text
    assert "== 4. Generation" in out


@pytest.fixture(scope="module")
def world_checkpoint(tmp_path_factory):
    """A random RWKV-5.2 model of World shape (vocabulary 65536), as a user's checkpoint would be."""
    sd = random_state_dict("5.2", n_layer=2, n_embd=64, head_size=32, vocab_size=65536, seed=1)
    p = tmp_path_factory.mktemp("world") / "world-random.safetensors"
    write_safetensors(p, {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()})
    return p


def test_demo_model_option_uses_the_world_tokenizer(world_checkpoint, tmp_path):
    r = run_demo(tmp_path, "--model", world_checkpoint, "--max-tokens", "8", "--prompt", "Bonjour")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"{world_checkpoint}: World vocabulary, World tokenizer" in out
    assert "V65536" in out
    check_modes_agree(out)
    assert len(bits_per_byte(out)) == 18
    # World tokens: fewer tokens than bytes (the corpus is 4,727 bytes after the first of each document)
    n_tok = int(re.search(r"29 documents, ([0-9,]+) tokens", out).group(1).replace(",", ""))
    assert n_tok < 4000
    assert "\nBonjour" in out


def test_demo_pth_checkpoint(world_checkpoint, tmp_path):
    torch = pytest.importorskip("torch", reason="torch (test extra) writes the .pth")
    from rwkv5.formats.safetensors import read_safetensors

    sd, _, _ = read_safetensors(world_checkpoint)
    p = tmp_path / "world.pth"
    torch.save({k: torch.from_numpy(np.array(v)).to(torch.bfloat16) for k, v in sd.items()}, p)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_demo(out_dir, "--model", p, "--max-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "World tokenizer" in r.stdout and "bf16" in r.stdout


def test_demo_bad_model_arguments(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_demo(out_dir, "--model", tmp_path / "missing.pth")
    assert r.returncode == 2 and "--model" in r.stderr and "no such file" in r.stderr
    odd = tmp_path / "odd.safetensors"
    sd = random_state_dict("5.2", n_layer=1, n_embd=32, head_size=16, vocab_size=300, seed=0)
    write_safetensors(odd, {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()})
    r = run_demo(out_dir, "--model", odd)
    assert r.returncode != 0 and "300 tokens" in r.stderr and "Traceback" not in r.stderr


# -- --model URL: a loopback HTTP server in the test (nothing leaves this machine) -----------------


@pytest.fixture
def http_server(tmp_path):
    """(base URL, served folder, truncate set): http.server on 127.0.0.1; a file whose name is in
    `truncate` is announced at its full size but only half of it is sent."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    truncate = set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def copyfile(self, source, outputfile):
            if pathlib.Path(self.path).name in truncate:
                data = source.read()
                outputfile.write(data[: len(data) // 2])
                return
            super().copyfile(source, outputfile)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, truncate
    finally:
        server.shutdown()
        server.server_close()


def test_demo_model_url_is_downloaded_once_into_the_cache(
    http_server, tmp_path, monkeypatch, capsys
):
    import rwkv5.tiny
    from rwkv5 import demo

    base, served, _ = http_server
    data = rwkv5.tiny.PATH.read_bytes()
    (served / "m.safetensors").write_bytes(data)
    cache = tmp_path / "cache"
    monkeypatch.setenv("RWKV5_CACHE", str(cache))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's work folder goes here
    assert demo.main(["--model", f"{base}/m.safetensors", "--max-tokens", "3"]) in (None, 0)
    out = capsys.readouterr().out
    assert (
        f"downloading {base}/m.safetensors ({len(data) / 1e6:,.1f} MB) -> {cache / 'm.safetensors'}"
        in out
    )
    assert (cache / "m.safetensors").read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == ["m.safetensors"]  # no .part left
    assert "256-token vocabulary" in out and "== 4. Generation" in out
    # the second run uses the cached file: the server no longer has it
    (served / "m.safetensors").unlink()
    lines = []
    assert demo.fetch_model(f"{base}/m.safetensors", log=lines.append) == cache / "m.safetensors"
    assert lines and lines[0].startswith(f"using {cache / 'm.safetensors'}")


def test_demo_model_url_failures_leave_nothing_in_the_cache(http_server, tmp_path, monkeypatch):
    from rwkv5 import demo

    base, served, truncate = http_server
    (served / "cut.safetensors").write_bytes(b"x" * 100_000)
    truncate.add("cut.safetensors")
    cache = tmp_path / "cache"
    monkeypatch.setenv("RWKV5_CACHE", str(cache))
    with pytest.raises(
        SystemExit,
        match=r"--model .*/cut.safetensors: download failed: the server sent 50,000 "
        r"of 100,000 bytes",
    ):
        demo.fetch_model(f"{base}/cut.safetensors", log=lambda s: None)
    with pytest.raises(SystemExit, match=r"--model .*/missing.pth: HTTP 404"):
        demo.fetch_model(f"{base}/missing.pth", log=lambda s: None)
    with pytest.raises(SystemExit, match="the URL names no file"):
        demo.fetch_model(f"{base}/", log=lambda s: None)
    assert list(cache.iterdir()) == []
