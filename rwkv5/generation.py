"""Sampling and text generation, in the order of operations of the ChatRWKV pipeline (docs/model.md §8).

Per generated token:

1. ``logits`` come from the model (float32, never modified in place: a copy is penalised);
2. repetition penalties: ``logit[n] -= presence_penalty + count[n] * frequency_penalty`` for every token n
   generated so far, where ``count`` decays by ``penalty_decay`` each step and tokens whose text is
   whitespace or a digit (a substring of ``" \\t0123456789"``) are not counted — as ChatRWKV does;
3. ``p = softmax(logits)``; top-p: every probability below the one at which the sorted cumulative sum
   first reaches ``top_p`` is zeroed; top-k (if 0 < top_k < V): all but the k largest are zeroed;
4. temperature: ``p = p ** (1 / temperature)``, renormalised (applied *after* the top-p/top-k cut,
   as ChatRWKV does — Hugging Face and llama.cpp divide the logits by the temperature *before* the cut,
   which makes the cut depend on the temperature);
5. the token is drawn with ``numpy.random.Generator(PCG64(seed))``; ``temperature=0`` is greedy (arg-max of
   the penalised logits), and so is ``top_p=0``.

Ids the tokenizer cannot decode are never drawn: their logits are set to -inf before step 2. (World
models have 65,536 head rows while the World vocabulary has 65,530 entries: ids 65,530..65,535, and any
id without an entry in a custom vocabulary, have no text.) The end-of-text id stays drawable: it stops.

Text is produced through an incremental UTF-8 decoder, so a piece never ends inside a character.
Every sampling argument is checked before anything runs (finite numbers in range, integers where an
integer is meant); a bad one raises ValueError or TypeError naming it.
"""

from __future__ import annotations

import codecs
import numbers
import weakref
from typing import Iterable, Iterator, Sequence

import numpy as np


#: Tokens whose decoded text is a substring of this are not counted for repetition penalties.
PENALTY_FREE_TEXT = " \t0123456789"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def sample_logits(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    rng: np.random.Generator | None = None,
) -> int:
    """Draw one token id from ``logits`` (1-D) as ChatRWKV's ``sample_logits`` does.

    >>> sample_logits(np.array([0.0, 5.0, 1.0]), temperature=0)
    1
    """
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits: expected a non-empty 1-D array, got shape {logits.shape}")
    temperature, top_p, top_k = _check_sampler_args(temperature, top_p, top_k)
    if temperature == 0 or top_p == 0:
        return int(np.argmax(logits))
    probs = softmax(logits)
    if top_p < 1.0:
        sorted_probs = np.sort(probs)[::-1]
        cumulative = np.cumsum(sorted_probs)
        cutoff = sorted_probs[min(int(np.searchsorted(cumulative, top_p)), len(sorted_probs) - 1)]
        probs[probs < cutoff] = 0.0
    if 0 < top_k < len(probs):
        keep = np.argpartition(-probs, top_k - 1)[:top_k]
        mask = np.zeros(len(probs), dtype=bool)
        mask[keep] = True
        probs[~mask] = 0.0
    if temperature != 1.0:
        probs = probs ** (1.0 / temperature)
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:
        return int(np.argmax(logits))
    probs /= total
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(len(probs), p=probs))


def _real(name, value, lo=None, hi=None):
    """``value`` as a float, checked: a real number (not a bool), finite, within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not np.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        want = (
            "a finite number"
            + (f" >= {lo:g}" if lo is not None and hi is None else "")
            + (f" in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else "")
        )
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return v


def _count(name, value, lo=0):
    """``value`` as an int, checked: an integer (not a bool or a float), >= lo."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name}: expected an integer >= {lo}, got {type(value).__name__} {value!r}"
        )
    if value < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {value!r}")
    return int(value)


def _check_sampler_args(temperature, top_p, top_k):
    return (
        _real("temperature", temperature, 0.0),
        _real("top_p", top_p, 0.0, 1.0),
        _count("top_k", top_k),
    )


def _check_generation_args(
    max_tokens, temperature, top_p, top_k, presence_penalty, frequency_penalty, penalty_decay
):
    """Every numeric argument of generate/generate_batch, checked before any work (see the module doc)."""
    _count("max_tokens", max_tokens)
    _check_sampler_args(temperature, top_p, top_k)
    _real("presence_penalty", presence_penalty)
    _real("frequency_penalty", frequency_penalty)
    _real("penalty_decay", penalty_decay, 0.0, 1.0)


class ByteTokenizer:
    """Byte-level vocabulary (token id = byte value, 256 ids) used by small test models such as the
    rwkv.cpp fixture. Same decode API as :class:`rwkv5.tokenizer.WorldTokenizer`."""

    n_vocab = 256
    eot_token = None  # byte 0 is an ordinary byte here

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return list(data)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(int(i) for i in ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


def default_tokenizer(model):
    """The tokenizer that fits ``model``: a byte tokenizer for 256-row vocabularies, else the World one."""
    if model.config.vocab_size <= 256:
        return ByteTokenizer()
    from rwkv5.tokenizer import WorldTokenizer

    return WorldTokenizer()


class Penalties:
    """Decaying presence/frequency counts of generated tokens (ChatRWKV ``occurrence``)."""

    def __init__(self, presence: float, frequency: float, decay: float):
        self.presence, self.frequency, self.decay = float(presence), float(frequency), float(decay)
        self.counts: dict[int, float] = {}

    def apply(self, logits: np.ndarray) -> np.ndarray:
        if not self.counts or (self.presence == 0 and self.frequency == 0):
            return logits
        out = np.array(logits, dtype=np.float32, copy=True)
        ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        cnt = np.fromiter(self.counts.values(), dtype=np.float64, count=len(self.counts))
        out[ids] -= (self.presence + cnt * self.frequency).astype(np.float32)
        return out

    def update(self, token: int, token_text: bytes):
        for n in self.counts:
            self.counts[n] *= self.decay
        weight = 0.0 if token_text.decode("utf-8", "replace") in PENALTY_FREE_TEXT else 1.0
        self.counts[token] = self.counts.get(token, 0.0) + weight


_TEXT = (str, bytes, bytearray, memoryview)


def as_tokens(prompt, tokenizer) -> list[int]:
    if isinstance(prompt, _TEXT):
        return list(tokenizer.encode(prompt))
    if isinstance(prompt, np.ndarray):
        return [int(t) for t in prompt.ravel()]
    return [int(t) for t in prompt]


_UNDECODABLE = weakref.WeakKeyDictionary()  # tokenizer -> {rows: ids}, computed once per pair


def undecodable_ids(tokenizer, vocab_size: int) -> np.ndarray:
    """Ids in ``range(vocab_size)`` (the model's head rows) that ``tokenizer`` has no text for, other
    than its end-of-text id: ids >= ``tokenizer.n_vocab``, and ids below it without an entry (when the
    tokenizer has ``decode_single_token_bytes``). Generation masks them so it never draws one."""
    try:
        cache = _UNDECODABLE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: compute every time
        cache = {}
    if vocab_size in cache:
        return cache[vocab_size]
    n = int(getattr(tokenizer, "n_vocab", vocab_size))
    bad = list(range(min(n, vocab_size), vocab_size))
    single = getattr(tokenizer, "decode_single_token_bytes", None)
    eot = getattr(tokenizer, "eot_token", None)

    def has_text(i):
        try:
            single(i)
            return True
        except KeyError:
            return False

    # n_tokens entries below n_vocab: no gap when they fill every id but (at most) the end-of-text one
    # (the World vocab: 65,529 entries, ids 1..65,529), which spares 65,530 lookups
    missing = n - getattr(tokenizer, "n_tokens", 0)
    if single is not None and not (
        missing <= 0 or (missing == 1 and eot is not None and not has_text(eot))
    ):
        bad += [i for i in range(min(n, vocab_size)) if i != eot and not has_text(i)]
    out = np.array(sorted(bad), np.int64)
    cache[vocab_size] = out
    return out


def _masked(logits, bad):
    """A copy of ``logits`` with the ids in ``bad`` at -inf (``logits`` itself when there are none)."""
    if not len(bad):
        return logits
    out = np.array(logits, dtype=np.float32, copy=True)
    out[bad[bad < len(out)]] = -np.inf
    return out


def _stop_conditions(stop, stop_tokens, tokenizer):
    """(stop strings, stop token ids): the end-of-text token of the tokenizer always stops."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stop_ids = set(stop_tokens or [])
    if getattr(tokenizer, "eot_token", None) is not None:
        stop_ids.add(tokenizer.eot_token)
    return stops, stop_ids


def generate(
    model,
    prompt,
    max_tokens: int = 200,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    presence_penalty: float = 0.2,
    frequency_penalty: float = 0.2,
    penalty_decay: float = 0.996,
    stop: str | Sequence[str] | None = None,
    stop_tokens=None,
    seed: int | None = None,
    state=None,
    tokenizer=None,
    chunk_len: int = 256,
    on_state=None,
) -> Iterator[str]:
    """Generate text after ``prompt`` (str, bytes or token ids), yielding text pieces as they complete.

    Stops after ``max_tokens`` tokens, at the end-of-text token (id 0 of the World vocab; add more with
    ``stop_tokens``), or when the text contains one of ``stop`` (the stop string itself is not yielded).
    ``state`` is the state to continue from (not mutated). If ``on_state`` is given it is called with the
    final state, so a conversation can continue from it.

    >>> for piece in model.generate("The capital of France is", max_tokens=20, seed=0):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    """
    _check_generation_args(
        max_tokens, temperature, top_p, top_k, presence_penalty, frequency_penalty, penalty_decay
    )
    _count("chunk_len", chunk_len, 1)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
    bad = undecodable_ids(tokenizer, model.config.vocab_size)
    tokens = as_tokens(prompt, tokenizer)
    if not tokens:
        raise ValueError("prompt: expected at least one token, got an empty prompt")
    stops, stop_ids = _stop_conditions(stop, stop_tokens, tokenizer)
    rng = np.random.default_rng(seed)
    penalties = Penalties(presence_penalty, frequency_penalty, penalty_decay)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    logits = None
    for start in range(0, len(tokens), chunk_len):
        logits, state = model.forward(tokens[start : start + chunk_len], state)
    pending = ""  # decoded text held back while it could be the start of a stop string
    for _ in range(max_tokens):
        token = sample_logits(_masked(penalties.apply(logits), bad), temperature, top_p, top_k, rng)
        if token in stop_ids:
            break
        piece_bytes = tokenizer.decode_bytes([token])
        penalties.update(token, piece_bytes)
        pending += decoder.decode(piece_bytes)
        logits, state = model.forward([token], state)
        if stops:
            hit = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            if hit >= 0:
                if hit:
                    yield pending[:hit]
                pending = ""
                break
            # keep back the longest tail that is a prefix of some stop string
            keep = max(
                (
                    k
                    for s in stops
                    for k in range(1, min(len(s), len(pending)) + 1)
                    if s.startswith(pending[-k:])
                ),
                default=0,
            )
            emit, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
        else:
            emit, pending = pending, ""
        if emit:
            yield emit
    else:
        pending += decoder.decode(b"", final=True)
    if pending and not any(s in pending for s in stops):
        yield pending
    if on_state is not None:
        on_state(state)


def generate_batch(
    model,
    prompts,
    max_tokens: int = 200,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 0,
    presence_penalty: float = 0.2,
    frequency_penalty: float = 0.2,
    penalty_decay: float = 0.996,
    stop: str | Sequence[str] | None = None,
    stop_tokens=None,
    seed: int | None = None,
    tokenizer=None,
) -> list[str]:
    """Complete every prompt; all unfinished sequences advance together as one (B, 1) recurrent step.

    Sequence b draws from its own generator seeded with ``(seed, b)``, so a completion does not depend on
    which other prompts share the batch.
    """
    _check_generation_args(
        max_tokens, temperature, top_p, top_k, presence_penalty, frequency_penalty, penalty_decay
    )
    if isinstance(prompts, _TEXT):
        raise TypeError(
            f"prompts: expected a list of prompts, got a single {type(prompts).__name__} "
            "(wrap it in a list)"
        )
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
    bad = undecodable_ids(tokenizer, model.config.vocab_size)
    seqs = [as_tokens(p, tokenizer) for p in prompts]
    if not seqs:
        return []
    for b, s in enumerate(seqs):
        if not s:
            raise ValueError(f"prompts[{b}]: expected at least one token, got an empty prompt")
    stops, stop_ids = _stop_conditions(stop, stop_tokens, tokenizer)
    B = len(seqs)
    rngs = [np.random.default_rng(None if seed is None else [seed, b]) for b in range(B)]
    pens = [Penalties(presence_penalty, frequency_penalty, penalty_decay) for _ in range(B)]
    out = [bytearray() for _ in range(B)]
    logits, state = model.forward(seqs, None)  # ragged prompts: each state stops at its own length
    logits = np.asarray(logits).reshape(B, -1)
    active = list(range(B))
    for _ in range(max_tokens):
        nxt, still = [], []
        for row, b in enumerate(active):
            tok = sample_logits(
                _masked(pens[b].apply(logits[row]), bad), temperature, top_p, top_k, rngs[b]
            )
            if tok in stop_ids:
                continue
            piece = tokenizer.decode_bytes([tok])
            pens[b].update(tok, piece)
            out[b] += piece
            if stops and any(s in out[b].decode("utf-8", "replace") for s in stops):
                continue
            nxt.append(tok)
            still.append(row)
        if not still:
            break
        sub = type(state)(state.att_x[still], state.att_kv[still], state.ffn_x[still])
        logits, state = model.forward(np.array(nxt, dtype=np.int64).reshape(-1, 1), sub)
        active = [active[r] for r in still]
    texts = []
    for b in range(B):
        text = out[b].decode("utf-8", "replace")
        for s in stops:
            i = text.find(s)
            if i >= 0:
                text = text[:i]
        texts.append(text)
    return texts
