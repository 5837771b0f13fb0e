"""rwkv5.dataprep: multilingual corpora -> RWKV-LM binidx or zstd token shards.

    from rwkv5.dataprep import build, open_shards
    manifest = build(["corpus/*.jsonl.zst"], "out/train", ctx_len=4096, lang_field="lang")
    for doc in open_shards("out/train"):      # uint16 arrays, each ending with token 0
        ...

The command line is `python -m rwkv5.dataprep build INPUT... --out PREFIX` (also `rwkv5-prep`);
see docs/dataprep.md.
"""

from .build import DataprepError, build, magic_prime, magic_prime_line, plan_tasks, run_task
from .formats import BinIdx, FormatError, ZstShard
from .tools import ShardSet, inspect_docs, merge_binidx, open_shards, stats_table, unpack, verify

__all__ = [
    "build",
    "run_task",
    "plan_tasks",
    "open_shards",
    "ShardSet",
    "BinIdx",
    "ZstShard",
    "verify",
    "stats_table",
    "inspect_docs",
    "merge_binidx",
    "unpack",
    "magic_prime",
    "magic_prime_line",
    "DataprepError",
    "FormatError",
]


def __getattr__(name):
    # rwkv5.dataprep.engines (executors, Ray) is imported on first use, like the CLI does
    if name == "engines":
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
