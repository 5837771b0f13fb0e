"""rwkv5.dataprep: multilingual corpora -> RWKV-LM binidx or zstd token shards."""
