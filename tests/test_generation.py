"""Sampling, generation, batch generation and scoring (rwkv5.generation, rwkv5.scoring)."""

import numpy as np
import pytest

import rwkv5
from rwkv5.generation import ByteTokenizer, Penalties, generate, sample_logits, softmax
from rwkv5.scoring import log_softmax
from rwkv5.testing import random_state_dict


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return rwkv5.load(tiny_model_path)  # the shipped trained byte-level model


@pytest.fixture(scope="module")
def random_model():
    return rwkv5.Model.from_state_dict(
        random_state_dict("5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=5)
    )


class ScriptedModel:
    """Returns logits that force a scripted sequence of byte tokens (to test decoding and stopping)."""

    class config:
        vocab_size = 256

    def __init__(self, script: bytes):
        self.script = script

    def forward(self, tokens, state=None, **_):
        step = 0 if state is None else state + 1
        logits = np.full(256, -30.0, dtype=np.float32)
        logits[self.script[min(step, len(self.script) - 1)]] = 30.0
        return logits, step


def test_greedy_is_argmax_and_top_k_1():
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.standard_normal(300).astype(np.float32)
        assert sample_logits(logits, temperature=0) == int(np.argmax(logits))
        assert sample_logits(logits, top_p=0) == int(np.argmax(logits))
        assert sample_logits(logits, top_k=1, rng=rng) == int(np.argmax(logits))


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(1)
    draws = {sample_logits(logits, top_p=0.7, rng=rng) for _ in range(400)}
    assert draws == {0, 1}  # cumulative 0.5, 0.8 >= 0.7: tokens 2 and 3 are cut


def test_unrestricted_sampling_follows_softmax():
    logits = np.array([0.0, 1.0, 2.0, 0.5])
    rng = np.random.default_rng(2)
    n = 20000
    counts = np.bincount([sample_logits(logits, top_p=1.0, rng=rng) for _ in range(n)], minlength=4)
    expected = softmax(logits) * n
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_temperature_sharpens_after_the_cut():
    logits = np.array([0.0, 1.0])
    rng = np.random.default_rng(3)
    hot = np.mean([sample_logits(logits, temperature=2.0, top_p=1.0, rng=rng) for _ in range(4000)])
    cold = np.mean(
        [sample_logits(logits, temperature=0.25, top_p=1.0, rng=rng) for _ in range(4000)]
    )
    p = softmax(logits)
    assert abs(hot - p[1] ** 0.5 / (p**0.5).sum()) < 0.04
    assert abs(cold - p[1] ** 4 / (p**4).sum()) < 0.03


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(np.zeros(3), temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(np.zeros(3), top_p=1.5)
    with pytest.raises(ValueError, match="logits"):
        sample_logits(np.zeros((2, 3)))


def test_penalties_never_mutate_logits_and_skip_digits():
    pen = Penalties(0.5, 0.25, 0.9)
    pen.update(65, b"A")
    pen.update(65, b"A")
    pen.update(49, b"1")
    logits = np.zeros(256, dtype=np.float32)
    out = pen.apply(logits)
    assert np.all(logits == 0)
    # count[65]: 1, then 1*0.9 + 1 = 1.9, then decayed once more by the update for 49: 1.71
    assert out[65] == pytest.approx(-(0.5 + 1.71 * 0.25), rel=1e-6)
    assert out[49] == pytest.approx(-0.5)  # counted with weight 0: presence only
    assert out[66] == 0


def test_same_seed_same_text_and_greedy_equals_manual_argmax(model):
    a = "".join(model.generate("The quick brown", max_tokens=30, seed=7))
    b = "".join(model.generate("The quick brown", max_tokens=30, seed=7))
    assert a == b
    greedy = "".join(
        model.generate(
            "The quick brown", max_tokens=25, temperature=0, presence_penalty=0, frequency_penalty=0
        )
    )
    logits, state = model.forward(list(b"The quick brown"))
    manual = bytearray()
    for _ in range(25):
        t = int(np.argmax(logits))
        manual.append(t)
        logits, state = model.forward([t], state)
    assert greedy == manual.decode("utf-8", "replace")


def test_pieces_never_split_a_character_and_stop_strings_end_generation():
    text = "héllo ✓ wörld END more"
    pieces = list(
        generate(
            ScriptedModel(text.encode()),
            "x",
            max_tokens=100,
            temperature=0,
            presence_penalty=0,
            frequency_penalty=0,
            stop="END",
            tokenizer=ByteTokenizer(),
        )
    )
    assert "".join(pieces) == "héllo ✓ wörld "
    for p in pieces:
        assert "\ufffd" not in p


def test_max_tokens_zero_and_bad_prompt(model):
    assert list(model.generate("abc", max_tokens=0)) == []
    with pytest.raises(ValueError, match="prompt"):
        list(model.generate("", max_tokens=3))


def test_continuation_from_saved_state_equals_uninterrupted(model):
    kw = dict(max_tokens=20, temperature=0, presence_penalty=0, frequency_penalty=0)
    whole = "".join(model.generate("Once upon a time, there", **kw))
    _, state = model.forward(list(b"Once upon a time,"))
    resumed = "".join(model.generate(" there", state=state, **kw))
    assert resumed == whole


def test_on_state_gives_the_final_state(model):
    got = []
    text = "".join(model.generate("Hello", max_tokens=5, temperature=0, on_state=got.append))
    assert len(got) == 1
    # the final state has seen the prompt and every generated token
    logits_a, _ = model.forward([ord(" ")], got[0])
    _, st = model.forward(list(("Hello" + text).encode()))
    logits_b, _ = model.forward([ord(" ")], st)
    assert np.abs(logits_a - logits_b).max() < 1e-4


def test_generate_batch_equals_individual_runs(model):
    prompts = ["The quick", "Once upon a time there", "A"]
    kw = dict(max_tokens=15, temperature=0, presence_penalty=0.2, frequency_penalty=0.2)
    batch = model.generate_batch(prompts, **kw)
    alone = ["".join(model.generate(p, **kw)) for p in prompts]
    assert batch == alone


def test_score_equals_hand_computation(random_model):
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 256, size=150)
    logits, _ = random_model.forward(tokens, full_output=True)
    lp = log_softmax(logits)[np.arange(149), tokens[1:]]
    hand_loss = -lp.mean()
    s = random_model.score(tokens, chunk_len=32)
    assert s.n_tokens == 149
    assert s.loss == pytest.approx(hand_loss, rel=1e-5)
    assert s.perplexity == pytest.approx(np.exp(hand_loss), rel=1e-5)
    assert s.n_correct == int((logits[:-1].argmax(-1) == tokens[1:]).sum())
    assert random_model.perplexity(tokens, chunk_len=7) == pytest.approx(s.perplexity, rel=1e-5)


def test_score_rejects_too_short_input(random_model):
    with pytest.raises(ValueError, match="at least 2"):
        random_model.score([5])


def test_hidden_states_are_what_the_head_reads(model, tiny_model_path):
    """logits == hidden @ head^T, for the last position and for every position, in both modes."""
    from rwkv5.formats.safetensors import read_safetensors

    sd, _, _ = read_safetensors(tiny_model_path)
    head = np.asarray(sd["head.weight"], np.float64)
    for mode in ("parallel", "recurrent"):
        toks = list(b"The quick brown fox")
        logits, s1 = model.forward(toks, mode=mode, full_output=True)
        hidden, s2 = model.hidden_states(toks, mode=mode, full_output=True)
        assert hidden.shape == (len(toks), model.config.n_embd)
        np.testing.assert_allclose(hidden @ head.T, logits, atol=1e-4)
        last, _ = model.hidden_states(toks, mode=mode)
        np.testing.assert_allclose(last, hidden[-1], atol=1e-5)
        np.testing.assert_array_equal(s1.att_kv, s2.att_kv)


def test_embed_pooling(model):
    texts = ["The quick brown fox", "Once upon a time there was a king"]
    last = model.embed(texts, pool="last")
    mean = model.embed(texts, pool="mean", chunk_len=5)  # slices must not change the result
    assert last.shape == mean.shape == (2, model.config.n_embd) and last.dtype == np.float32
    for i, t in enumerate(texts):
        h, _ = model.hidden_states(list(t.encode()), full_output=True)
        np.testing.assert_allclose(last[i], h[-1], atol=1e-5)
        np.testing.assert_allclose(mean[i], h.mean(axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        model.embed(texts, pool="max")
    with pytest.raises(TypeError, match="list"):
        model.embed("one text")
    with pytest.raises(ValueError, match="empty"):
        model.embed([""])


def test_resuming_a_conversation_from_a_saved_state_file(model, tmp_path):
    """Save the state after the first part, load it (as a later process would), continue: the same
    text as one uninterrupted generation."""
    kw = dict(max_tokens=20, temperature=0, presence_penalty=0, frequency_penalty=0)
    whole = "".join(model.generate("User: hi\n\nAssistant: hello\n\nUser: how are you?", **kw))
    _, state = model.forward(list(b"User: hi\n\nAssistant: hello\n\n"))
    state.save(tmp_path / "conv.safetensors")
    resumed = "".join(
        model.generate(
            "User: how are you?", state=rwkv5.State.load(tmp_path / "conv.safetensors"), **kw
        )
    )
    assert resumed == whole
