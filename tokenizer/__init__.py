"""rwkv5.tokenizer: the RWKV World tokenizer (C encoder/decoder and a pure-Python twin).

>>> from rwkv5.tokenizer import WorldTokenizer
>>> tok = WorldTokenizer()
>>> tok.encode("Hello world"), tok.decode([33155, 40213])
([33155, 40213], 'Hello world')
"""

from .reference import ReferenceTokenizer
from .world import StreamDecoder, WorldTokenizer, default_vocab_path

__all__ = ["WorldTokenizer", "StreamDecoder", "ReferenceTokenizer", "default_vocab_path"]
