"""The RWKV World tokenizer backed by the C core (rwkv5.tokenizer._tokenizer).

    >>> from rwkv5.tokenizer import WorldTokenizer
    >>> tok = WorldTokenizer()                  # the vocab shipped in the `rwkv` package
    >>> tok.encode("Hello world")
    [33155, 40213]
    >>> tok.decode([33155, 40213])
    'Hello world'

Encoding is greedy leftmost-longest matching over the UTF-8 bytes (docs/tokenizer.md), exactly
the reference `rwkv.rwkv_tokenizer.TRIE_TOKENIZER`. A `WorldTokenizer` is immutable and may be
shared between Python threads; every encode call releases the GIL while C code runs.

Policies (see docs/tokenizer.md):

* str input is encoded as UTF-8. A lone surrogate (e.g. "\\ud800", which has no UTF-8 form)
  raises UnicodeEncodeError naming its position, as `str.encode("utf-8")` and the reference do.
  Encode `s.encode("utf-8", "surrogatepass")` yourself if you want its 3 bytes tokenized.
* bytes input need not be valid UTF-8: every byte is a token.
* decoding: ids without an entry — 0 (end-of-text), ids >= n_vocab, gaps in a custom vocab —
  follow `errors`: "strict" raises ValueError naming the id and its position, "replace" gives
  U+FFFD, "ignore" drops it. Invalid UTF-8 in the joined bytes follows the same `errors` of
  Python's UTF-8 codec. Negative ids raise ValueError and non-integers (floats) TypeError
  under every policy.
"""

from __future__ import annotations

import codecs
import importlib.util
import os
from typing import Iterable, Iterator, List, Optional, Union

from .._model import get_num_threads  # the package-wide thread setting (rwkv5.set_num_threads)
from ..formats._files import open_regular
from ._tokenizer import Core

VOCAB_NAME = "rwkv_vocab_v20230424.txt"

TextLike = Union[str, bytes, bytearray, memoryview]


def default_vocab_path(instead: str = "pass vocab_path=...") -> str:
    """Path of the World vocab inside the installed `rwkv` package (its model code is never imported).

    The one lookup rwkv5.tokenizer and rwkv5.dataprep share; ``instead`` is what the
    FileNotFoundError suggests besides installing `rwkv` (data prep says "pass --vocab PATH")."""
    spec = importlib.util.find_spec("rwkv")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, VOCAB_NAME)
        if os.path.isfile(path):
            return path
    if spec is None:
        raise FileNotFoundError(
            f"the World vocab {VOCAB_NAME} ships in the `rwkv` package, which is not installed: "
            f"run `pip install rwkv` (or {instead})"
        )
    raise FileNotFoundError(
        f"{VOCAB_NAME} not found in the installed `rwkv` package ({', '.join(locations) or 'no folder'}): "
        f"reinstall it with `pip install --force-reinstall rwkv` (or {instead})"
    )


def _default_threads() -> int:
    return max(1, int(get_num_threads()))


_ERRORS = ("strict", "replace", "ignore")


def _check_errors(errors: str) -> None:
    if errors not in _ERRORS:
        raise ValueError(f"errors must be 'strict', 'replace' or 'ignore', got {errors!r}")


class WorldTokenizer:
    """RWKV World tokenizer (65,536-row vocab, id 0 = end-of-text) with a C encoder.

    Args:
        vocab_path: a vocab file in the World format (`<id> <python literal> <byte length>` per
            line, LF or CRLF). Default: the `rwkv_vocab_v20230424.txt` in the `rwkv` package.
            Custom vocabs work: ids need not be dense, n_vocab = max id + 1, every single byte
            must be a token. Errors name the line (ValueError); a missing file raises OSError;
            a named pipe or a device raises ValueError before any read.
    """

    eot_token: int = 0

    def __init__(self, vocab_path: Optional[Union[str, os.PathLike]] = None):
        path = default_vocab_path() if vocab_path is None else os.fspath(vocab_path)
        with open_regular(path, "a vocab file") as f:  # (a FIFO would block a plain open forever)
            data = f.read()
        try:
            self._core = Core(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        self.vocab_path = path

    def __repr__(self) -> str:
        return f"WorldTokenizer(vocab_path={self.vocab_path!r}, n_vocab={self.n_vocab})"

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def capsule(self):
        """The C tokenizer as a PyCapsule (named "rwkv5.tokenizer.wt_tokenizer"), which the C functions
        of `rwkv5.dataprep` take: the data prep tokenizes with this same object. It keeps this
        tokenizer's C core alive."""
        return self._core.capsule

    @property
    def n_vocab(self) -> int:
        """One more than the largest id (65530 for the World vocab; models have 65536 rows)."""
        return self._core.n_vocab

    @property
    def n_tokens(self) -> int:
        """Number of entries in the vocab file."""
        return self._core.n_tokens

    @property
    def max_token_len(self) -> int:
        """Longest token in bytes (128 for the World vocab)."""
        return self._core.max_token_len

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, text: TextLike) -> List[int]:
        """Ids of `text` (str, encoded as UTF-8, or bytes-like). Greedy longest match, as the reference.

        Bytes-like means one-byte items (bytes, bytearray, memoryview, a uint8 array); anything
        else, such as an int32 array of ids, raises TypeError naming the type."""
        return self._core.encode(text)

    def encode_to_numpy(self, text: TextLike, num_threads: Optional[int] = 1):
        """Ids as a NumPy array: uint16 when n_vocab <= 65536, else uint32.

        num_threads > 1 (or None = all CPUs) splits a long text (>= 512 KiB) into pieces encoded
        concurrently and re-joined exactly; the result never depends on the thread count.
        """
        if num_threads is None:
            num_threads = _default_threads()
        return self._core.encode_numpy(text, num_threads)

    def encode_batch(
        self, texts: Iterable[TextLike], num_threads: Optional[int] = None, as_numpy: bool = False
    ):
        """encode() of every text, in order, using `num_threads` C threads (None = all CPUs) with the
        GIL released. Results do not depend on the thread count.

        as_numpy=True returns a ragged pair ``(ids, offsets)`` instead of a list of lists: `ids`
        holds every text's ids one after another (uint16 when n_vocab <= 65536, as for the World
        vocab, else uint32 — the same rule as encode_to_numpy) and `offsets` is int64 of length
        len(texts) + 1, so text i's ids are ``ids[offsets[i]:offsets[i + 1]]``. No Python object is
        made per text or per id, which is what costs most for many short texts::

            ids, offsets = tok.encode_batch(["Hello", "world"], as_numpy=True)
            first = ids[offsets[0]:offsets[1]]
        """
        if num_threads is None:
            num_threads = _default_threads()
        if not isinstance(as_numpy, bool):
            raise TypeError(f"as_numpy must be True or False, not {type(as_numpy).__name__}")
        if as_numpy:
            return self._core.encode_batch_numpy(texts, num_threads)
        return self._core.encode_batch(texts, num_threads)

    # ---- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`. `errors` ("replace", "strict", "ignore") covers both ids without an entry
        (0, out of range) and invalid UTF-8 in the joined bytes."""
        return self._core.decode(_as_ids(ids), errors)

    def decode_bytes(self, ids: Iterable[int], errors: str = "strict") -> bytes:
        """Concatenated token bytes. Ids without an entry: "strict" raises ValueError, "replace"
        inserts the UTF-8 bytes of U+FFFD, "ignore" drops them."""
        return self._core.decode_bytes(_as_ids(ids), errors)

    def decode_single_token_bytes(self, id: int) -> bytes:
        """Bytes of one token; KeyError when the id has no entry (0 = end-of-text, gaps, >= n_vocab)."""
        b = self._core.token_bytes(id)
        if b is None:
            raise KeyError(
                f"id {id} has no token bytes (n_vocab = {self.n_vocab}; 0 is end-of-text)"
            )
        return b

    def id_to_token(self, id: int) -> bytes:
        """Same as decode_single_token_bytes."""
        return self.decode_single_token_bytes(id)

    def token_to_id(self, token: TextLike) -> int:
        """Id of a token given as bytes or str (UTF-8); KeyError when it is not in the vocab."""
        i = self._core.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not a token of this vocab")
        return i

    def stream_decoder(self, errors: str = "replace") -> "StreamDecoder":
        """A StreamDecoder for generation: feed ids one at a time, get text when it is complete."""
        return StreamDecoder(self, errors)


def _as_ids(ids):
    # generators and other one-shot iterables: materialise once (lists, tuples, arrays pass as is)
    if isinstance(ids, (list, tuple)) or hasattr(ids, "__len__"):
        return ids
    if isinstance(ids, Iterator) or hasattr(ids, "__iter__"):
        return list(ids)
    return ids


class StreamDecoder:
    """Turns ids arriving one at a time into text, yielding only complete UTF-8 characters.

        >>> dec = tok.stream_decoder()
        >>> pieces = [dec.feed(i) for i in ids]   # '' while a character is still incomplete
        >>> pieces.append(dec.flush())            # the rest (an incomplete tail per `errors`)

    The concatenation of everything returned equals `tok.decode(ids, errors)`. Ids without an
    entry follow `errors` exactly as in decode (strict: ValueError; replace: U+FFFD; ignore: dropped).

    With errors="strict", an error is raised once and then forgotten: when `feed` or `flush` raises
    UnicodeDecodeError, the bytes that were pending and the bytes of the failing id are dropped
    (`pending` is then b""), so the decoder can go on with the next id and a second `flush` does
    not raise the same error again. An id without an entry raises before anything is consumed.
    """

    def __init__(self, tokenizer: WorldTokenizer, errors: str = "replace"):
        _check_errors(errors)
        self._core = tokenizer._core
        self.errors = errors
        self._dec = codecs.getincrementaldecoder("utf-8")(errors)

    def feed(self, id: int) -> str:
        """Add one id; return the text that became complete (possibly '')."""
        b = self._core.token_bytes(id)
        if b is None:
            if self.errors == "strict":
                what = "the end-of-text token, which has no text" if id == 0 else "not in the vocab"
                raise ValueError(f"id {id} is {what}")
            if self.errors == "ignore":
                return ""
            b = "\ufffd".encode("utf-8")
        try:
            return self._dec.decode(b)
        except UnicodeDecodeError:
            self._dec.reset()  # strict: report the bad bytes once, then drop them
            raise

    def feed_many(self, ids: Iterable[int]) -> str:
        """feed() for several ids; returns the joined text."""
        return "".join(self.feed(i) for i in ids)

    def flush(self) -> str:
        """End of stream: decode what is still pending (an incomplete character per `errors`) and
        reset; the reset also happens when strict decoding raises, so the error is not repeated."""
        try:
            return self._dec.decode(b"", final=True)
        finally:
            self._dec.reset()

    @property
    def pending(self) -> bytes:
        """Bytes held back because they may start a character that is not complete yet."""
        return self._dec.getstate()[0]
