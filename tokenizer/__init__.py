"""rwkv5.tokenizer: the RWKV World tokenizer (C encoder/decoder and a pure-Python twin)."""
