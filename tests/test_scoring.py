"""rwkv5.scoring against the float64 reference model (rwkv5.reference), which is independent of
the C core: per-token log-probabilities, and the loss/perplexity/accuracy built from them."""

import numpy as np
import pytest

import rwkv5
from rwkv5.reference import ReferenceModel
from rwkv5.scoring import score, token_logprobs
from rwkv5.testing import random_state_dict

TOKENS = [5, 90, 3, 3, 41, 7, 0, 96, 12, 12, 33, 64, 1, 8]


@pytest.fixture(scope="module")
def pair():
    sd = random_state_dict("5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=97, seed=4)
    return rwkv5.Model.from_state_dict(sd, gn_eps=64e-5, dtype="fp32"), ReferenceModel(
        sd, gn_eps=64e-5
    )


def _reference_logprobs(ref, tokens, state=None):
    logits, _ = ref.forward(tokens, state, mode="recurrent", full_output=True)
    logits = np.asarray(logits, np.float64)
    lse = np.logaddexp.reduce(logits, axis=-1)
    return np.array([logits[t, tokens[t + 1]] - lse[t] for t in range(len(tokens) - 1)]), logits


@pytest.mark.parametrize("chunk_len", [1, 4, 256])
def test_token_logprobs_equal_the_reference(pair, chunk_len):
    model, ref = pair
    want, logits = _reference_logprobs(ref, TOKENS)
    got = token_logprobs(model, TOKENS, chunk_len=chunk_len)  # slices carry the state across
    assert got.dtype == np.float64 and got.shape == (len(TOKENS) - 1,)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    assert (got < 0).all()
    s = score(model, TOKENS, chunk_len=chunk_len)
    assert s.n_tokens == len(TOKENS) - 1
    assert s.nll_sum == pytest.approx(-got.sum(), rel=1e-12)
    assert s.perplexity == pytest.approx(np.exp(-want.mean()), rel=1e-3)
    assert s.n_correct == int((logits[:-1].argmax(axis=-1) == np.array(TOKENS[1:])).sum())


def test_token_logprobs_continue_from_a_state(pair):
    model, ref = pair
    head, tail = TOKENS[:6], TOKENS[6:]
    _, state = model.forward(head)
    _, ref_state = ref.forward(head)
    want, _ = _reference_logprobs(ref, tail, ref_state)
    np.testing.assert_allclose(
        token_logprobs(model, tail, state=state, chunk_len=3), want, rtol=0, atol=2e-4
    )
    # and the same numbers as scoring the whole text, from position 6 on
    np.testing.assert_allclose(
        token_logprobs(model, tail, state=state),
        token_logprobs(model, TOKENS)[6:],
        rtol=0,
        atol=1e-5,
    )


def test_token_logprobs_refuse_bad_input(pair):
    model, _ = pair
    with pytest.raises(ValueError, match="at least 2 tokens"):
        token_logprobs(model, [3])
    with pytest.raises(ValueError, match="chunk_len"):
        token_logprobs(model, TOKENS, chunk_len=0)
