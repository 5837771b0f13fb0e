"""Command line: python -m rwkv5.dataprep {build,inspect,verify,stats,merge,unpack} ... (also `rwkv5-prep`)."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rwkv5-prep",
        description="Multilingual corpora -> RWKV-LM binidx or zstd token shards.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser(
        "build", help="tokenize inputs into PREFIX.bin/.idx (or zst shards) + PREFIX.manifest.json"
    )
    b.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=".jsonl, .jsonl.zst, .txt, .parquet, .arrow files, globs or folders (saved datasets folders too); "
        "local or URLs: s3://bucket/corpus/*.parquet, gs://, hf://, https:// (see --storage-option)",
    )
    b.add_argument(
        "--out",
        required=True,
        metavar="PREFIX",
        help="output prefix (PREFIX.bin, PREFIX.idx, ...); a URL such as s3://bucket/out/train "
        "uploads the set when it is complete, its manifest last",
    )
    b.add_argument(
        "--text-field",
        default="text",
        help="JSON field or Parquet/Arrow column holding the document text; a dotted name reaches into a struct column (default: text)",
    )
    b.add_argument(
        "--lang-field",
        default=None,
        help="JSON field or Parquet/Arrow column holding a language tag, for per-language statistics",
    )
    b.add_argument(
        "--lang-from-path",
        default=None,
        metavar="REGEX",
        help="the language of every document of a file from its path: a regular expression with one "
        "group, searched in the file's full path (e.g. '/([a-z]{3}_[A-Z][a-z]{3})/'); "
        "instead of --lang-field",
    )
    b.add_argument(
        "--format",
        default="binidx",
        choices=["binidx", "zst"],
        help="binidx: RWKV-LM's PREFIX.bin/.idx; zst: zstd token shards (docs/zst-shards.md) (default: binidx)",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        help="tokenizer threads per task, 1..1024 (default: the CPUs available; 0 is refused)",
    )
    b.add_argument(
        "--shard-size",
        default=None,
        help="max tokens per shard (e.g. 100000000) or bytes with a unit (512MB, 1GiB); "
        "shards are PREFIX_00000.*, PREFIX_00001.*; unset: one PREFIX.* set",
    )
    b.add_argument(
        "--ctx-len",
        type=int,
        default=None,
        help="print RWKV-LM's --my_exit_tokens/--magic_prime for this ctx_len",
    )
    b.add_argument(
        "--shuffle", action="store_true", help="shuffle documents (seeded, every epoch anew)"
    )
    b.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default: 0)")
    b.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="repeat the documents N times (make_data's N_EPOCH) (default: 1)",
    )
    b.add_argument(
        "--mix-temperature",
        default=None,
        metavar="ALPHA",
        help="multilingual mix: language i gets a share of the output tokens proportional to "
        "n_i^ALPHA (n_i = its input tokens; 1 keeps the natural mix, 0.3 is mT5's); needs --lang-field or --lang-from-path",
    )
    b.add_argument(
        "--mix-weights",
        default=None,
        metavar="LANG=W,...",
        help="multilingual mix with explicit shares, e.g. en=0.3,fr=0.2 (normalised over the languages "
        "present; unnamed languages get --mix-default-weight or are dropped)",
    )
    b.add_argument(
        "--mix-default-weight",
        default=None,
        metavar="W",
        help="--mix-weights: weight of the languages not named (default: they are dropped)",
    )
    b.add_argument(
        "--mix-tokens",
        default=None,
        metavar="N",
        help="multilingual mix: total output tokens (default: the input's total)",
    )
    b.add_argument(
        "--mix-max-epochs",
        default=10,
        metavar="E",
        help="multilingual mix: never repeat a language more than E times; the shortfall is "
        "reported (default: 10)",
    )
    b.add_argument(
        "--dedup", choices=["exact"], default=None, help="drop exact duplicate texts (first kept)"
    )
    b.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="bad records (malformed JSON, missing field, invalid UTF-8): stop, or skip and count (default: fail)",
    )
    b.add_argument(
        "--repair-utf8",
        action="store_true",
        help="replace invalid UTF-8 and lone surrogates with U+FFFD (counted) instead of treating them as bad records",
    )
    b.add_argument(
        "--txt-mode",
        choices=["file", "blank"],
        default="file",
        help=".txt inputs: one document per file, or per blank-line-separated block (default: file)",
    )
    b.add_argument(
        "--task-size",
        type=int,
        default=64 << 20,
        help="split .jsonl files larger than this many bytes into tasks (default: 67108864 = 64 MiB)",
    )
    b.add_argument(
        "--zst-level",
        type=int,
        default=3,
        help="zstd compression level of --format zst shards (default: 3)",
    )
    b.add_argument(
        "--vocab", default=None, help="World vocab file (default: the one in the rwkv package)"
    )
    b.add_argument(
        "--restart",
        action="store_true",
        help="discard an unfinished run with other options instead of failing",
    )
    b.add_argument(
        "--keep-work", action="store_true", help="keep PREFIX.work/ (task parts) after success"
    )
    b.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR_OR_URL",
        help="where the work area (task parts and completion records, for resuming) lives instead of "
        "PREFIX.work: a URL (s3://...; what --engine ray needs without a shared filesystem) or, "
        "for an --out URL, a local folder (default: PREFIX.work, next to the output)",
    )
    b.add_argument(
        "--allow-empty",
        action="store_true",
        help="write an empty set when the inputs hold no document (default: that is an error)",
    )
    b.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="run the tasks here (local) or as Ray tasks (ray; pip install 'rwkv5[ray]', see docs/ray.md) (default: local)",
    )
    b.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="--engine ray: 'auto' (the cluster `ray start` runs on this node), HOST:PORT, or unset "
        "to start a local Ray instance; the work area must be in a folder shared by all nodes "
        "or on an object store (an --out URL, or --work-dir URL)",
    )
    b.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="--engine ray: re-runs of a task after an exception or the death of its worker (default 3)",
    )
    b.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar on stderr (default: only when stderr is a terminal)",
    )
    b.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show a progress bar"
    )

    i = sub.add_parser("inspect", help="decode documents of an output set")
    i.add_argument(
        "prefix",
        help="output prefix of the set (the PREFIX given to build --out; a URL such as s3://bucket/out/train too)",
    )
    i.add_argument(
        "--doc", type=int, default=0, help="index of the first document to show (default: 0)"
    )
    i.add_argument("--count", type=int, default=3, help="number of documents to show (default: 3)")
    i.add_argument(
        "--vocab",
        default=None,
        help="World vocab file to decode with (default: the one in the rwkv package)",
    )

    v = sub.add_parser(
        "verify",
        help="check sizes, checksums, token range and counts against the manifest, "
        "and that the prefix holds no set file the manifest does not list",
    )
    v.add_argument(
        "prefix",
        help="output prefix of the set (the PREFIX given to build --out; a URL such as s3://bucket/out/train too)",
    )

    s = sub.add_parser("stats", help="print the statistics table of an output set")
    s.add_argument(
        "prefix",
        help="output prefix of the set (the PREFIX given to build --out; a URL such as s3://bucket/out/train too)",
    )

    m = sub.add_parser("merge", help="concatenate binidx sets built with the same vocab into one")
    m.add_argument(
        "prefixes", nargs="+", metavar="PREFIX", help="binidx sets to concatenate, in this order"
    )
    m.add_argument(
        "--out",
        required=True,
        metavar="PREFIX",
        help="prefix of the merged set (PREFIX.bin, PREFIX.idx); a URL uploads it when complete",
    )
    m.add_argument(
        "--ctx-len",
        type=int,
        default=None,
        help="also print RWKV-LM's --my_exit_tokens/--magic_prime for this ctx_len",
    )

    u = sub.add_parser("unpack", help="zst shards -> one binidx set")
    u.add_argument("prefix", help="prefix of the zst shard set (the PREFIX given to build --out)")
    u.add_argument(
        "--out",
        required=True,
        metavar="PREFIX",
        help="prefix of the binidx set to write (PREFIX.bin, PREFIX.idx)",
    )
    u.add_argument(
        "--ctx-len",
        type=int,
        default=None,
        help="also print RWKV-LM's --my_exit_tokens/--magic_prime for this ctx_len",
    )
    for cmd in sub.choices.values():
        cmd.add_argument(
            "--storage-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an fsspec option for s3://, gs://, hf://, https:// ... paths (repeatable; e.g. "
            "endpoint_url=http://host:9000, anon=true; values true/false/numbers are parsed); "
            "the store's own environment (AWS_ENDPOINT_URL, AWS_PROFILE, ...) applies too (default: none)",
        )
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    storage_options = None
    if args.storage_option:
        from .. import storage

        try:
            storage_options = storage.parse_storage_options(args.storage_option)
        except ValueError as e:
            parser.error(str(e))
        storage.set_default_options(storage_options)
    from .build import DataprepError, build, magic_prime_line
    from .formats import FormatError
    from . import tools

    try:
        if args.cmd == "build":
            progress = sys.stderr.isatty() if args.progress is None else args.progress
            from .engines import executor_for_cli

            executor, workers = executor_for_cli(args)
            m = build(
                args.inputs,
                args.out,
                workers=workers,
                progress=progress,
                restart=args.restart,
                executor=executor,
                allow_empty=args.allow_empty,
                keep_work=args.keep_work,
                work_dir=args.work_dir,
                vocab=args.vocab,
                text_field=args.text_field,
                lang_field=args.lang_field,
                lang_from_path=args.lang_from_path,
                format=args.format,
                shard_size=args.shard_size,
                ctx_len=args.ctx_len,
                shuffle=args.shuffle,
                seed=args.seed,
                epochs=args.epochs,
                dedup=args.dedup,
                on_error=args.on_error,
                repair_utf8=args.repair_utf8,
                txt_mode=args.txt_mode,
                task_size=args.task_size,
                zst_level=args.zst_level,
                mix_temperature=args.mix_temperature,
                mix_weights=args.mix_weights,
                mix_default_weight=args.mix_default_weight,
                mix_tokens=args.mix_tokens,
                mix_max_epochs=args.mix_max_epochs,
                # also handed to the tasks, which may run in other processes (--engine ray)
                storage_options=storage_options or None,
            )
            if executor is not None:
                executor.shutdown()
            t = m["totals"]
            print(
                f"wrote {len(m['shards'])} shard(s): {t['documents']} documents, {t['tokens']} tokens; "
                f"skipped {m['skipped']['total']}; manifest {args.out}.manifest.json"
            )
            if args.ctx_len:
                if len(m["shards"]) > 1:
                    for sh in m["shards"]:
                        line = magic_prime_line(sh["tokens"], args.ctx_len)
                        print(
                            f"{sh['name']}: {line}",
                            file=sys.stderr if line.startswith("warning") else sys.stdout,
                        )
                line = m["rwkv_lm_args"]
                print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
        elif args.cmd == "inspect":
            for idx, n, text in tools.inspect_docs(args.prefix, args.doc, args.count, args.vocab):
                print(f"--- document {idx} ({n} tokens incl. the final 0)")
                print(text)
        elif args.cmd == "verify":
            for line in tools.verify(args.prefix):
                print(line)
        elif args.cmd == "stats":
            print(tools.stats_table(args.prefix))
        elif args.cmd in ("merge", "unpack"):
            if args.ctx_len is not None and args.ctx_len < 1:  # before any output is written
                raise DataprepError(f"--ctx-len: expected >= 1, got {args.ctx_len}")
            m = (
                tools.merge_binidx(args.prefixes, args.out)
                if args.cmd == "merge"
                else tools.unpack(args.prefix, args.out)
            )
            print(
                f"wrote {args.out}.bin/.idx: {m['totals']['documents']} documents, {m['totals']['tokens']} tokens"
            )
            if args.ctx_len:
                line = magic_prime_line(m["totals"]["tokens"], args.ctx_len)
                print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
    except (DataprepError, FormatError, OSError, ValueError) as e:
        print(f"rwkv5-prep {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"rwkv5-prep {args.cmd}: interrupted (rerun the same command to resume)",
            file=sys.stderr,
        )
        return 130
    return 0


def run(argv=None) -> int:
    """The installed ``rwkv5-prep`` command: ``main`` with a defined exit status under Ctrl-C
    (rwkv5/_exit.py): once ``main`` has returned, a Ctrl-C no longer changes the status."""
    from .._exit import run as run_guarded

    return run_guarded(main, "rwkv5-prep", argv)


if __name__ == "__main__":
    sys.exit(run())
