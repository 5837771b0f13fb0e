"""Scoring text with a model: per-token log-probabilities, loss and perplexity.

Logits are computed in parallel mode, one slice of ``chunk_len`` positions at a time with the state
carried between slices, so memory stays at one slice's (chunk_len, V) logits whatever the length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Score:
    """Result of :func:`score`: ``loss`` is the mean negative log-likelihood in nats per predicted token."""

    n_tokens: int  # predicted tokens (len(tokens) - 1 when scoring from a fresh state)
    nll_sum: float  # total negative log-likelihood, nats
    loss: float  # nll_sum / n_tokens
    perplexity: float  # exp(loss)
    n_correct: int  # positions where the arg-max logit was the actual next token


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _logprobs_and_hits(model, tokens, state, chunk_len):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size < 2:
        raise ValueError(
            f"tokens: expected a 1-D sequence of at least 2 tokens, got shape {tokens.shape}"
        )
    if chunk_len < 1:
        raise ValueError(f"chunk_len: expected >= 1, got {chunk_len}")
    parts, correct = [], 0
    for start in range(0, tokens.size - 1, chunk_len):
        piece = tokens[start : start + chunk_len]
        logits, state = model.forward(piece, state, mode="parallel", full_output=True)
        logits = logits.reshape(len(piece), -1)
        targets = tokens[start + 1 : start + 1 + len(piece)]
        rows = logits[: len(targets)]
        parts.append(log_softmax(rows)[np.arange(len(targets)), targets])
        correct += int((rows.argmax(axis=-1) == targets).sum())
    return np.concatenate(parts), correct


def token_logprobs(model, tokens, state=None, chunk_len: int = 256) -> np.ndarray:
    """log p(tokens[t+1] | tokens[:t+1]) for t = 0 … T-2, as a float64 array of length T-1."""
    return _logprobs_and_hits(model, tokens, state, chunk_len)[0]


def score(model, tokens, state=None, chunk_len: int = 256) -> Score:
    """Loss, perplexity and next-token accuracy of ``tokens`` under ``model``."""
    lp, correct = _logprobs_and_hits(model, tokens, state, chunk_len)
    nll = float(-lp.sum())
    loss = nll / lp.size
    return Score(int(lp.size), nll, loss, float(np.exp(loss)), correct)
