"""Small helpers shared by the benchmark modules (benchmarks/bench_*.py).

The whole API, kept deliberately tiny:

- ``section(title, columns, rows, notes=())`` -> the dict every ``run(quick)`` returns:
  ``{"title": str, "columns": [str], "rows": [[...]], "notes": [str]}``. Put the unit in each
  column name ("tok/s", "GB/s", "MiB", "x" for a ratio) so the printed table is self-explaining.
- ``format_table(sec) -> str``: an aligned plain-text table of such a section (numbers get a
  sensible number of significant digits; None prints as "-"); ``format_markdown(sec)`` the same
  as Markdown.
- ``timeit(fn, repeat, warmup=1) -> list[float]``: wall-clock seconds of each call after warm-up.
- ``median(xs)``.
- ``peak_rss_mib()`` / ``reset_peak_rss()``: this process's peak resident set (VmHWM) and a reset
  of it (Linux ``/proc/self/clear_refs``), so a worker can measure the peak of one phase.
- ``run_in_subprocess(func, kwargs, timeout=..., env=None) -> dict``: runs
  ``func(**kwargs)`` (``func`` as "package.module:function", returning a JSON-able dict) in a
  fresh Python process and returns its result, with ``"peak_rss_mib"`` (the child's VmHWM at
  exit) added. Raises ``RuntimeError`` with the child's stderr tail on failure. Use it for
  anything that allocates a lot, so memory is returned between configurations and peak RSS is
  that configuration's own.
- ``machine_facts() -> dict``: CPU model, cores, ISA flags, caches, memory, library versions,
  BLAS kernel (threadpoolctl), relevant environment variables.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Sequence

__all__ = [
    "section",
    "format_table",
    "format_markdown",
    "timeit",
    "median",
    "peak_rss_mib",
    "reset_peak_rss",
    "run_in_subprocess",
    "machine_facts",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def section(
    title: str, columns: Sequence[str], rows: Iterable[Sequence], notes: Iterable[str] = ()
) -> dict:
    """The result shape of every benchmark module's run()."""
    columns = list(columns)
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(
                f"row {r!r} has {len(r)} cells, expected {len(columns)} (columns {columns})"
            )
    return {"title": str(title), "columns": columns, "rows": rows, "notes": [str(n) for n in notes]}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        if a >= 0.01:
            return f"{v:.3f}"
        return f"{v:.2e}"
    return str(v)


def format_table(sec: dict) -> str:
    """An aligned text table: title, header, rule, rows (numbers right-aligned), notes."""
    cols = [str(c) for c in sec.get("columns", [])]
    cells = [[_fmt(v) for v in row] for row in sec.get("rows", [])]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in sec.get("rows", []))
        for i in range(len(cols))
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

    def line(vals):
        out = []
        for i, v in enumerate(vals):
            out.append(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    title = str(sec.get("title", ""))
    parts = [title, "=" * len(title)]
    if cols:
        parts.append(line(cols))
        parts.append("  ".join("-" * w for w in widths))
        parts.extend(line(r) for r in cells)
    for n in sec.get("notes", []):
        parts.append(f"  note: {n}")
    return "\n".join(parts)


def format_markdown(sec: dict) -> str:
    """The same section as a Markdown table (for docs), notes as a bullet list."""
    cols = [str(c) for c in sec.get("columns", [])]
    out = [f"**{sec.get('title', '')}**", ""]
    if cols:
        out.append("| " + " | ".join(cols) + " |")
        out.append(
            "|"
            + "|".join(
                "---:"
                if all(isinstance(r[i], (int, float)) or r[i] is None for r in sec.get("rows", []))
                else "---"
                for i in range(len(cols))
            )
            + "|"
        )
        out.extend("| " + " | ".join(_fmt(v) for v in r) + " |" for r in sec.get("rows", []))
    notes = list(sec.get("notes", []))
    if notes:
        out.append("")
        out.extend(f"- {n}" for n in notes)
    return "\n".join(out)


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list:
    """Seconds taken by each of `repeat` calls of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    if not s:
        raise ValueError("median of an empty sequence")
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def _status_kib(field: str):
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib():
    """Peak resident set size of this process in MiB (VmHWM), or None where unavailable."""
    kib = _status_kib("VmHWM")
    if kib is None:
        try:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        except Exception:
            return None
    return kib / 1024.0


def rss_mib():
    """Current resident set size of this process in MiB (VmRSS), or None."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_in_subprocess(
    func: str, kwargs: dict, timeout: float = 1800, env: dict | None = None
) -> dict:
    """Run func(**kwargs) ("pkg.module:function") in a fresh interpreter; return its dict result
    plus "peak_rss_mib" (the child's VmHWM when the function returned)."""
    with tempfile.TemporaryDirectory(prefix="rwkv5-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "benchmarks.common", func, json.dumps(kwargs), out]
        penv = dict(os.environ if env is None else env)
        penv["PYTHONPATH"] = REPO_ROOT + (
            os.pathsep + penv["PYTHONPATH"] if penv.get("PYTHONPATH") else ""
        )
        try:
            p = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                env=penv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{func} timed out after {timeout:.0f} s") from e
        if p.returncode != 0 or not os.path.exists(out):
            tail = (p.stderr or "").strip().splitlines()[-8:]
            raise RuntimeError(f"{func} failed (exit {p.returncode}): " + " | ".join(tail))
        with open(out) as f:
            return json.load(f)


def _child_main(argv: list) -> int:
    func, kwargs_json, out = argv
    modname, _, fname = func.partition(":")
    import importlib

    fn = getattr(importlib.import_module(modname), fname)
    res = fn(**json.loads(kwargs_json))
    if not isinstance(res, dict):
        raise TypeError(f"{func} returned {type(res).__name__}, expected dict")
    res.setdefault("peak_rss_mib", peak_rss_mib())
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, out)
    return 0


# ------------------------------------------------------------------------------ machine facts

_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
)


def _read(path: str):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def machine_facts() -> dict:
    facts: dict = {"platform": platform.platform(), "python": platform.python_version()}
    cpuinfo = _read("/proc/cpuinfo") or ""
    flags: set = set()
    for ln in cpuinfo.splitlines():
        if ln.startswith("model name") and "cpu_model" not in facts:
            facts["cpu_model"] = ln.split(":", 1)[1].strip()
        if ln.startswith("flags") and not flags:
            flags = set(ln.split(":", 1)[1].split())
    facts["isa_flags"] = [f for f in _ISA_FLAGS if f in flags]
    facts["logical_cpus"] = os.cpu_count()
    try:
        facts["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        facts["usable_cpus"] = os.cpu_count()
    caches = {}
    for idx in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{idx}"
        lvl, typ, size = _read(base + "/level"), _read(base + "/type"), _read(base + "/size")
        if lvl is None:
            break
        caches[f"L{lvl}{'d' if typ == 'Data' else 'i' if typ == 'Instruction' else ''}"] = size
    facts["caches_reported_by_os"] = caches
    for ln in (_read("/proc/meminfo") or "").splitlines():
        if ln.startswith("MemTotal"):
            facts["mem_total_gib"] = round(int(ln.split()[1]) / 2**20, 1)
    from importlib import metadata

    versions = {}
    for pkg in (
        "numpy",
        "torch",
        "rwkv",
        "rwkv5",
        "threadpoolctl",
        "rwkv-tokenizer",
        "pyrwkv-tokenizer",
        "tiktoken",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    facts["versions"] = versions
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode == 0:
            facts["git_commit"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    facts["env"] = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "RWKV")) or k == "GOTO_NUM_THREADS"
    }
    try:
        import numpy  # noqa: F401  (loads its BLAS so threadpoolctl can see it)
        import threadpoolctl

        facts["blas"] = [
            {
                k: info.get(k)
                for k in (
                    "internal_api",
                    "version",
                    "architecture",
                    "num_threads",
                    "threading_layer",
                )
            }
            for info in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        facts["blas"] = "threadpoolctl not installed"
    return facts


def facts_section(facts: dict) -> dict:
    """The machine facts as a two-column table."""
    rows = []
    for k in (
        "cpu_model",
        "logical_cpus",
        "usable_cpus",
        "isa_flags",
        "caches_reported_by_os",
        "mem_total_gib",
        "python",
        "versions",
        "git_commit",
        "blas",
        "env",
    ):
        if k in facts:
            v = facts[k]
            if isinstance(v, dict):
                v = ", ".join(f"{a}={b}" for a, b in v.items())
            elif isinstance(v, list):
                v = ", ".join(json.dumps(x) if isinstance(x, dict) else str(x) for x in v)
            rows.append([k, str(v)])
    return section("Machine", ["fact", "value"], rows)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
