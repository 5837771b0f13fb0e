"""Command line: ``python -m rwkv5 <command> ...`` (also installed as ``rwkv5``).

Commands are registered in ``COMMANDS``: each is a function ``add_<name>(subparsers)`` that
adds its subparser and sets ``func`` (called with the parsed args, returns an exit code).
To add a command, write such a function and append it to ``COMMANDS``.

Errors the user can fix (bad file, bad option) print one line ``rwkv5 <command>: error: ...``
and exit with code 2, like argparse's own usage errors.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# -- convert -------------------------------------------------------------------------------------

def _is_matrix(name, a) -> bool:
    """The big weights that take the requested storage type: 2-D+ tensors that are not ``time_*``."""
    return a.ndim >= 2 and ".time_" not in name


def convert(src, dst, dtype, out=None) -> dict:
    """Convert checkpoint ``src`` (any format ``rwkv5.load`` reads) to a safetensors file ``dst``.

    Matrices (2-D weights) are stored as ``dtype``; vectors and ``time_*`` tensors as fp32 (a
    lossless widening from bf16/fp16, negligible in size; rwkv.cpp's converter does the same),
    or fp64 if they are fp64.
    Names are written as RWKV-LM names; state-tuning tensors are kept. The source's GroupNorm
    epsilon default is recorded in the metadata (``gn_eps``) so the result computes the same.
    """
    import numpy as np

    from . import __version__
    from .formats.safetensors import write_safetensors
    from .loading import convert_array, read_checkpoint

    out = out or sys.stdout
    if dtype not in ("fp32", "bf16", "fp16"):
        raise CommandError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise CommandError(f"output {dst} is the input file")
    t0 = time.perf_counter()
    sd, info = read_checkpoint(src)
    tensors, dtypes = {}, {}
    counts = {}
    for name, a in sd.items():
        kind = info["kinds"][name]
        # float64 vectors (rwkv.cpp's time_decay = log(-log(w)), see formats/rwkvcpp.py) stay float64:
        # rounding them would change what the converted file computes.
        target = dtype if _is_matrix(name, a) else ("fp64" if kind == "fp64" else "fp32")
        try:
            b = convert_array(a, kind, target)
        except ValueError as e:
            raise CommandError(f"tensor {name!r}: {e}") from None
        tensors[name] = b
        if target == "bf16":
            dtypes[name] = "BF16"
        counts[(kind, target)] = counts.get((kind, target), 0) + 1
    if info["time_state"] is not None:
        for i, kv in enumerate(info["time_state"]):
            # back to the file layout [h][value][key] (see state_io.time_state_to_att_kv)
            tensors[f"blocks.{i}.att.time_state"] = np.ascontiguousarray(kv.transpose(0, 2, 1))
    meta = {"format": "rwkv5-checkpoint", "source_format": info["format"], "source": os.path.basename(src),
            "dtype": dtype, "gn_eps": repr(float(info["gn_eps"])), "converted_by": f"rwkv5 {__version__}"}
    nbytes = write_safetensors(dst, tensors, metadata=meta, dtypes=dtypes)
    dt = time.perf_counter() - t0
    print(f"read {src} ({info['format']}{', Hugging Face names' if info['hf_names'] else ''}): "
          f"{len(sd)} tensors", file=out)
    for (kind, target), n in sorted(counts.items()):
        print(f"  {n:5d} tensors {kind} -> {target}", file=out)
    if info["time_state"] is not None:
        print(f"  kept {len(info['time_state'])} state-tuning tensors (blocks.i.att.time_state, fp32)", file=out)
    print(f"wrote {dst}: safetensors, {nbytes} bytes, gn_eps default {info['gn_eps']:g} recorded, "
          f"{dt:.2f} s", file=out)
    return {"tensors": len(tensors), "bytes": nbytes}


def _run_convert(args) -> int:
    convert(args.input, args.output, args.dtype)
    return 0


def add_convert(sub):
    p = sub.add_parser("convert", help="convert a checkpoint (.pth / safetensors / rwkv.cpp) to safetensors",
                       description="Convert a checkpoint to safetensors with RWKV-LM names. Matrices are "
                                   "stored as --dtype, vectors and time_* tensors as fp32.")
    p.add_argument("input", help="checkpoint file (format detected from its content) or folder of shards")
    p.add_argument("output", help="safetensors file to write (atomically)")
    p.add_argument("--dtype", required=True, choices=("bf16", "fp16", "fp32"), help="storage type of the matrices")
    p.set_defaults(func=_run_convert)


COMMANDS = [add_convert]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rwkv5", description="RWKV-5 models on the CPU.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename and not isinstance(e, CommandError):
            msg = f"{e.strerror or e}: {e.filename}"
        print(f"rwkv5 {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
