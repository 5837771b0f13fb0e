"""Generation with a World-sized head (ids the vocabulary cannot decode), argument checking for
generate/generate_batch/sample_logits, and StreamDecoder's strict errors."""

import numpy as np
import pytest

import rwkv5
from rwkv5.generation import ByteTokenizer, generate, generate_batch, sample_logits, undecodable_ids
from rwkv5.testing import random_state_dict


@pytest.fixture(scope="module")
def tok():
    """The World tokenizer on the vocab of the `rwkv` package (a test dependency): these tests need
    only *a* World vocab, not ../shared/fixtures (whose copy test_tokenizer compares with this one)."""
    from rwkv5.tokenizer import WorldTokenizer

    return WorldTokenizer()


@pytest.fixture(scope="module")
def world_model():
    """A 65,536-row model whose logits favour the six ids past the World vocabulary (65,530..65,535)
    by far, then id 300: ln_out maps every hidden state to ones, so logit[i] = sum(head[i])."""
    sd = random_state_dict("5.2", n_layer=1, n_embd=64, head_size=16, vocab_size=65536, seed=1)
    sd["ln_out.weight"] = np.zeros(64, np.float32)
    sd["ln_out.bias"] = np.ones(64, np.float32)
    head = np.zeros((65536, 64), np.float32)
    head[65530:] = 1.0  # logit 64
    head[300] = 0.25  # logit 16
    head[301] = 0.2  # logit 12.8
    sd["head.weight"] = head
    return rwkv5.Model.from_state_dict(sd)


def test_undecodable_ids_of_the_world_vocab(tok):
    np.testing.assert_array_equal(undecodable_ids(tok, 65536), np.arange(65530, 65536))
    assert len(undecodable_ids(tok, 65530)) == 0
    assert len(undecodable_ids(ByteTokenizer(), 256)) == 0


def test_generate_never_samples_ids_without_text(world_model, tok):
    """Before: the model drew id 65,530.. and decode_bytes raised ValueError midway through output."""
    kw = dict(max_tokens=6, presence_penalty=0, frequency_penalty=0, tokenizer=tok)
    greedy = "".join(generate(world_model, "Hi", temperature=0, **kw))
    assert greedy == tok.decode([300] * 6)
    sampled = "".join(generate(world_model, "Hi", temperature=1.0, top_p=1.0, seed=0, **kw))
    assert set(tok.encode(sampled)) <= {300, 301}
    out = generate_batch(world_model, ["Hi", "Hello there"], temperature=0, **kw)
    assert out == [tok.decode([300] * 6)] * 2
    out = generate_batch(world_model, ["Hi", [33155]], temperature=1.0, top_p=1.0, seed=3, **kw)
    for text in out:
        assert text and set(tok.encode(text)) <= {300, 301}


def test_decode_accepts_ids_past_the_vocab_under_replace(tok):
    assert tok.decode([65533, 33155], errors="replace") == "\ufffd" + tok.decode([33155])
    assert tok.decode([65535], errors="ignore") == ""
    assert tok.decode_bytes([65530], errors="replace") == "\ufffd".encode()
    with pytest.raises(ValueError, match="65533"):
        tok.decode([65533], errors="strict")


def test_generate_batch_refuses_a_single_text(world_model, tok):
    """Before: "The " was iterated as four one-character prompts."""
    for single in ("The ", b"The ", bytearray(b"The ")):
        with pytest.raises(TypeError, match="prompts: expected a list of prompts, got a single"):
            generate_batch(world_model, single, max_tokens=1, tokenizer=tok)


def test_a_bytearray_prompt_is_text_not_ids(world_model, tok):
    a = "".join(generate(world_model, bytearray(b"Hi"), max_tokens=2, temperature=0, tokenizer=tok))
    b = "".join(generate(world_model, "Hi", max_tokens=2, temperature=0, tokenizer=tok))
    assert a == b


_BAD = [
    ("temperature", float("nan"), ValueError),
    ("temperature", -1.0, ValueError),
    ("temperature", float("inf"), ValueError),
    ("temperature", "1", TypeError),
    ("top_p", float("nan"), ValueError),
    ("top_p", 1.5, ValueError),
    ("top_p", None, TypeError),
    ("top_k", 2.5, TypeError),
    ("top_k", -1, ValueError),
    ("top_k", float("nan"), TypeError),
    ("top_k", True, TypeError),
    ("presence_penalty", float("nan"), ValueError),
    ("presence_penalty", float("inf"), ValueError),
    ("presence_penalty", "0.2", TypeError),
    ("frequency_penalty", float("nan"), ValueError),
    ("frequency_penalty", -float("inf"), ValueError),
    ("penalty_decay", float("nan"), ValueError),
    ("penalty_decay", 1.5, ValueError),
    ("penalty_decay", -0.1, ValueError),
    ("max_tokens", 2.5, TypeError),
    ("max_tokens", -1, ValueError),
]


@pytest.mark.parametrize("name, value, exc", _BAD, ids=[f"{n}={v!r}" for n, v, _ in _BAD])
def test_every_sampling_argument_is_checked_up_front(world_model, tok, name, value, exc):
    """Before: presence_penalty=nan was accepted (garbage output) and top_k=2.5 failed inside NumPy."""
    kw = dict(max_tokens=3, tokenizer=tok)
    kw[name] = value
    with pytest.raises(exc, match=name):
        list(generate(world_model, "Hi", **kw))
    with pytest.raises(exc, match=name):
        generate_batch(world_model, ["Hi"], **kw)
    if name in ("temperature", "top_p", "top_k"):
        with pytest.raises(exc, match=name):
            sample_logits(np.zeros(4), **{name: value})


def test_chunk_len_is_checked(world_model, tok):
    with pytest.raises(ValueError, match="chunk_len"):
        list(generate(world_model, "Hi", max_tokens=1, tokenizer=tok, chunk_len=0))


def test_numpy_scalars_are_accepted(world_model, tok):
    out = "".join(
        generate(
            world_model,
            "Hi",
            max_tokens=np.int64(2),
            temperature=np.float32(0),
            top_k=np.int32(3),
            top_p=np.float64(0.5),
            presence_penalty=np.float32(0.1),
            tokenizer=tok,
        )
    )
    assert out == tok.decode([300, 300])


# -- StreamDecoder, errors="strict" ------------------------------------------------------------


def test_strict_flush_raises_once_and_drops_the_bad_bytes(tok):
    """Before: flush() raised but kept the incomplete bytes pending, so every later flush raised the
    same error again."""
    dec = tok.stream_decoder("strict")
    euro = "€".encode()  # 3 bytes
    first = tok.token_to_id(euro[:1])  # a token holding just the first byte
    assert dec.feed(first) == "" and dec.pending == euro[:1]
    with pytest.raises(UnicodeDecodeError):
        dec.flush()
    assert dec.pending == b""
    assert dec.flush() == ""  # the error is not raised again
    assert dec.feed(tok.encode("ok")[0]) == "ok"  # and the decoder goes on


def test_strict_feed_error_drops_the_bad_bytes(tok):
    dec = tok.stream_decoder("strict")
    dec.feed(tok.token_to_id("€".encode()[:1]))
    with pytest.raises(UnicodeDecodeError):
        dec.feed(tok.token_to_id(b"A"))  # not a continuation byte
    assert dec.pending == b""
    assert dec.feed(tok.token_to_id(b"B")) == "B"
    assert dec.flush() == ""
