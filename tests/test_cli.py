"""The `rwkv5` command line: info, generate, chat, eval, bench (convert is tested in test_loading.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import rwkv5
from rwkv5.__main__ import chat_loop, main
from rwkv5.generation import ByteTokenizer
from rwkv5.testing import random_state_dict


def run_cli(*argv, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "rwkv5", *map(str, argv)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


@pytest.fixture(scope="module")
def fixture_model(tiny_model_path):
    return tiny_model_path  # the shipped trained model (3 layers x 96, 6 heads of 16, bytes)


def test_info_prints_the_configuration(fixture_model):
    r = run_cli("info", fixture_model)
    assert r.returncode == 0, r.stderr
    assert "RWKV-5.2" in r.stdout and "layers 3" in r.stdout and "n_embd 96" in r.stdout
    assert "heads 6 x 16" in r.stdout and "vocab 256" in r.stdout and "0.00064" in r.stdout


def test_generate_matches_the_python_api(fixture_model, capsys):
    args = ["generate", str(fixture_model), "The quick brown", "--max-tokens", "30", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    model = rwkv5.load(fixture_model)
    expected = "".join(model.generate("The quick brown", max_tokens=30, seed=3))
    assert out == expected + "\n"


def test_generate_saves_a_state_that_continues(fixture_model, tmp_path, capsys):
    st = tmp_path / "s.safetensors"
    assert (
        main(
            [
                "generate",
                str(fixture_model),
                "Hello",
                "--max-tokens",
                "5",
                "--temperature",
                "0",
                "--state-out",
                str(st),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out.rstrip("\n")
    model = rwkv5.load(fixture_model)
    _, direct = model.forward(list(("Hello" + text).encode()))
    saved = rwkv5.State.load(st)
    assert np.abs(saved.att_kv - direct.att_kv).max() < 1e-4


def test_chat_keeps_the_state_between_turns(fixture_model):
    model = rwkv5.load(fixture_model)
    tok = ByteTokenizer()
    lines = iter(["Hi\n", "/reset\n", "Hello again\n", "How are you?\n", None])
    written = []
    kw = dict(max_tokens=12, temperature=0, presence_penalty=0, frequency_penalty=0)
    state = chat_loop(model, tok, lambda: next(lines), written.append, kw)
    transcript = "".join(written)
    assert "[conversation reset]" in transcript
    # after the reset, the conversation is: turn "Hello again" + reply + turn "How are you?" + reply
    after = transcript.split("[conversation reset]\n", 1)[1]
    replies = [seg.split("\n\n")[0] for seg in after.split("Assistant:")[1:]]
    text = (
        f"User: Hello again\n\nAssistant:{replies[0]}\n\n"
        f"User: How are you?\n\nAssistant:{replies[1]}\n\n"
    )
    _, direct = model.forward(list(text.encode()))
    assert np.abs(state.att_kv - direct.att_kv).max() < 1e-3
    assert np.abs(state.ffn_x - direct.ffn_x).max() < 1e-3


def test_chat_command_runs_on_piped_input(fixture_model, tmp_path):
    st = tmp_path / "chat.safetensors"
    r = run_cli(
        "chat",
        fixture_model,
        "--max-tokens",
        "10",
        "--seed",
        "1",
        stdin=f"Hello\n/save {st}\n/bogus\n/quit\n",
    )
    assert r.returncode == 0, r.stderr
    assert (
        "Assistant:" in r.stdout
        and f"[state saved to {st}]" in r.stdout
        and "unknown command" in r.stdout
    )
    assert rwkv5.State.load(st).att_kv.shape == (3, 6, 16, 16)


@pytest.fixture(scope="module")
def world_model_file(tmp_path_factory):
    """A small random model with the World vocabulary size, saved as safetensors."""
    from rwkv5.formats.safetensors import write_safetensors

    sd = random_state_dict("5.2", n_layer=1, n_embd=32, head_size=16, vocab_size=65536, seed=2)
    path = tmp_path_factory.mktemp("m") / "world-tiny.safetensors"
    write_safetensors(path, {k: np.ascontiguousarray(v) for k, v in sd.items()})
    return path


def test_eval_equals_scoring_each_document(world_model_file, tmp_path):
    from rwkv5.dataprep import BinIdx, build

    corpus = os.path.join(os.path.dirname(rwkv5.__file__), "data", "sample_corpus.jsonl")
    prefix = str(tmp_path / "ds")
    build([corpus], prefix, workers=1, log=lambda s: None)
    r = run_cli("eval", prefix, "--model", world_model_file, "--max-docs", "5")
    assert r.returncode == 0, r.stderr
    model = rwkv5.load(world_model_file)
    data = BinIdx(prefix)
    nll = n = 0
    for i in range(5):
        s = model.score(np.asarray(data[i], dtype=np.int64))
        nll += s.nll_sum
        n += s.n_tokens
    assert f"predicted tokens {n:,}" in r.stdout
    assert f"loss {nll / n:.4f}" in r.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "/no/such/model.pth"], "model file not found"),
        (["generate", "{fx}", "x", "--threads", "0"], "--threads must be >= 1"),
        (["generate", "{fx}", "x", "--temperature", "-1"], "temperature"),
        (["eval", "/no/such/prefix", "--model", "{fx}"], "cannot read the dataset /no/such/prefix"),
    ],
)
def test_bad_arguments_fail_with_one_line(fixture_model, argv, message):
    r = run_cli(*[a.format(fx=fixture_model) for a in argv])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_help_lists_every_command():
    r = run_cli("--help")
    for cmd in ("convert", "info", "generate", "chat", "eval", "bench"):
        assert cmd in r.stdout
