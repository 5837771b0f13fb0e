"""python -m benchmarks [--quick] [--big] [--only NAME[,NAME...]] [--out DIR]  |  --render RESULT.json

Runs the physical-limit probes, then every benchmarks/bench_*.py module's ``run(quick)``, prints
one aligned table per section and writes all results as JSON to DIR/bench-<UTC timestamp>.json and
DIR/latest.json (DIR defaults to ./bench-results). A module that fails to import or to run is
reported as a section with the error and skipped; the others still run.

NAME is "probes" or a module name without its "bench_" prefix ("model", "tokenizer", "dataprep").
--big adds the section "big" (benchmarks/big.py: the Eagle 7B shape from a cached random file).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import importlib
import json
import os
import sys
import time
import traceback

from .common import facts_section, format_markdown, format_table, machine_facts, section

HERE = os.path.dirname(os.path.abspath(__file__))


def discover() -> list:
    """Names of the bench modules present, model first, then alphabetical."""
    names = sorted(
        os.path.basename(p)[len("bench_") : -3] for p in glob.glob(os.path.join(HERE, "bench_*.py"))
    )
    return sorted(names, key=lambda n: (n != "model", n))


def _as_sections(name: str, res) -> list:
    """Accept a section dict or a list of them; anything else becomes an error section."""
    secs = res if isinstance(res, list) else [res]
    out = []
    for s in secs:
        if isinstance(s, dict) and "title" in s and "columns" in s and "rows" in s:
            s.setdefault("notes", [])
            out.append(s)
        else:
            out.append(
                section(
                    f"{name}: malformed result",
                    [],
                    [],
                    [f"run() returned {type(s).__name__}, expected a section dict"],
                )
            )
    return out


def render(path: str) -> int:
    """Markdown of every table in a result file written by a previous run."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"--render: cannot read {path}: {e}", file=sys.stderr)
        return 2
    m = data.get("machine", {})
    print(
        f"Run {data.get('started_utc')} ({'quick' if data.get('quick') else 'full'}), "
        f"{m.get('cpu_model')}, {m.get('usable_cpus')} CPUs, commit {m.get('git_commit')}\n"
    )
    for name, sec in data.get("sections", {}).items():
        for t in sec.get("tables", []):
            print(format_markdown(t), "\n")
    for name, err in data.get("errors", {}).items():
        print(f"- {name}: {err.splitlines()[0]}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="a few minutes: fewer shapes, dtypes and repeats"
    )
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated sections to run: probes, " + ", ".join(discover()),
    )
    ap.add_argument(
        "--big",
        action="store_true",
        help="also run the Eagle 7B shape (benchmarks/big.py: a random 15 GB bf16 file made once "
        "under $RWKV5_BENCH_CACHE or ~/.cache/rwkv5/bench; needs ~17 GB of free memory)",
    )
    ap.add_argument(
        "--out",
        default="bench-results",
        help="folder for the JSON results (default: bench-results)",
    )
    ap.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="print the tables of a saved result file as Markdown and exit (runs nothing)",
    )
    args = ap.parse_args(argv)
    if args.render:
        return render(args.render)

    available = ["probes"] + discover() + (["big"] if args.big else [])
    only = None
    if args.only:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in only if s not in available]
        if unknown:
            ap.error(f"--only: unknown section(s) {unknown}; available: {available}")

    failed = []  # modules that imported but raised: the exit status reports them
    started = _dt.datetime.now(_dt.timezone.utc)
    facts = machine_facts()
    results = {
        "started_utc": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "argv": sys.argv[1:],
        "machine": facts,
        "sections": {},
        "errors": {},
    }
    print(format_table(facts_section(facts)), "\n", flush=True)

    for name in available:
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(
                {"probes": ".probes", "big": ".big"}.get(name, f".bench_{name}"), __package__
            )
        except Exception as e:  # an optional dependency missing, a module still being written...
            msg = f"skipped: could not import benchmarks.bench_{name}: {type(e).__name__}: {e}"
            results["errors"][name] = msg
            print(format_table(section(f"{name}", [], [], [msg])), "\n", flush=True)
            continue
        try:
            secs = _as_sections(name, mod.run(quick=args.quick))
        except Exception as e:
            msg = f"failed: {type(e).__name__}: {e}"
            results["errors"][name] = msg + "\n" + traceback.format_exc()
            failed.append(name)
            print(format_table(section(f"{name}", [], [], [msg])), "\n", flush=True)
            continue
        dt = time.perf_counter() - t0
        results["sections"][name] = {"seconds": dt, "tables": secs}
        if name == "probes":
            results["limits"] = mod.limits(args.quick)
        for s in secs:
            print(format_table(s), "\n", flush=True)
        print(f"[{name}: {dt:.0f} s]\n", flush=True)

    results["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.out, f"bench-{stamp}.json")
    for p in (path, os.path.join(args.out, "latest.json")):
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(tmp, p)
    print(f"results written to {path} and {os.path.join(args.out, 'latest.json')}")
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
