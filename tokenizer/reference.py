"""A pure-Python twin of the C World tokenizer: slow, obviously correct, same API subset.

Independent of the C code on purpose: the vocab is parsed with `ast.literal_eval` (never `eval`)
and the encoder walks a trie of nested dicts. Tests compare the two on arbitrary str and bytes.

    >>> ref = ReferenceTokenizer()
    >>> ref.encode("Hello world")
    [33155, 40213]
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterable, List, Optional, Union

_END = -1  # key under which a trie node stores the id of the token that ends there


def parse_vocab(data: bytes) -> Dict[int, bytes]:
    """id -> token bytes of a World-format vocab (LF or CRLF). ValueError names the line."""
    vocab: Dict[int, bytes] = {}
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip(" \t"):
            continue
        first, last = line.find(" "), line.rfind(" ")
        if first < 0 or last <= first:
            raise ValueError(f"vocab line {lineno}: expected '<id> <literal> <byte length>'")
        try:
            idx, length = int(line[:first]), int(line[last + 1 :])
            value = ast.literal_eval(line[first + 1 : last].strip(" \t"))
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"vocab line {lineno}: {e}") from None
        token = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(token, bytes):
            raise ValueError(f"vocab line {lineno}: not a str or bytes literal")
        if len(token) != length:
            raise ValueError(
                f"vocab line {lineno}: token is {len(token)} bytes but the length column says {length}"
            )
        if idx in vocab:
            raise ValueError(f"vocab line {lineno}: id {idx} is already defined")
        vocab[idx] = token
    return vocab


class ReferenceTokenizer:
    """Greedy leftmost-longest matching over bytes with a dict trie (docs/tokenizer.md)."""

    eot_token = 0

    def __init__(self, vocab_path: Optional[Union[str, os.PathLike]] = None):
        if vocab_path is None:
            from .world import default_vocab_path

            vocab_path = default_vocab_path()
        with open(vocab_path, "rb") as f:
            self.idx2token = parse_vocab(f.read())
        self.n_vocab = max(self.idx2token) + 1
        self.root: dict = {}
        for idx, token in self.idx2token.items():  # file order: a repeated token keeps the last id
            node = self.root
            for byte in token:
                node = node.setdefault(byte, {})
            node[_END] = idx

    def encode_bytes(self, data: bytes) -> List[int]:
        out: List[int] = []
        pos, n = 0, len(data)
        while pos < n:
            node, best, best_end, i = self.root, None, pos, pos
            while i < n and data[i] in node:
                node = node[data[i]]
                i += 1
                if _END in node:
                    best, best_end = node[_END], i
            if best is None:
                raise ValueError(f"byte 0x{data[pos]:02X} is not a token of this vocab")
            out.append(best)
            pos = best_end
        return out

    def encode(self, text: Union[str, bytes]) -> List[int]:
        if isinstance(text, str):
            return self.encode_bytes(text.encode("utf-8"))
        if isinstance(text, (bytes, bytearray, memoryview)):
            return self.encode_bytes(bytes(text))
        raise TypeError(f"text must be str or bytes, not {type(text).__name__}")

    def decode_bytes(self, ids: Iterable[int], errors: str = "strict") -> bytes:
        parts = []
        for i in ids:
            token = self.idx2token.get(i)
            if token is not None:
                parts.append(token)
            elif errors == "strict":
                raise ValueError(f"id {i} has no entry")
            elif errors == "replace":
                parts.append("\ufffd".encode("utf-8"))
        return b"".join(parts)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids, errors).decode("utf-8", errors)

    def decode_single_token_bytes(self, id: int) -> bytes:
        return self.idx2token[id]

    def token_to_id(self, token: Union[str, bytes]) -> int:
        b = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        node = self.root
        for byte in b:
            node = node[byte]
        return node[_END]
