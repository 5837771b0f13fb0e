"""Checks what a built wheel holds: python tools/check_wheel.py WHEEL

The package, its three extensions and their .pyi stubs, its data (the shipped model, the sample
corpus), py.typed, the LICENSE and,
in a repaired wheel, the grafted libzstd, libbz2 and liblzma (zlib is part of the manylinux policy); and nothing else: no tests, C sources, object files,
caches or build leftovers. Prints the size and the files, one line per problem; exit 1 if any.
"""

from __future__ import annotations

import fnmatch
import sys
import zipfile

REQUIRED = [
    "rwkv5/__init__.py",
    "rwkv5/__main__.py",
    "rwkv5/tiny.py",
    "rwkv5/demo.py",
    "rwkv5/py.typed",
    "rwkv5/data/tiny-5v2-bytes.safetensors",
    "rwkv5/data/sample_corpus.jsonl",
    "rwkv5/_model.*.so",
    "rwkv5/tokenizer/__init__.py",
    "rwkv5/tokenizer/_tokenizer.*.so",
    "rwkv5/dataprep/__init__.py",
    "rwkv5/dataprep/_dataprep.*.so",
    "rwkv5/formats/__init__.py",
    "rwkv5-*.dist-info/METADATA",
    "rwkv5-*.dist-info/entry_points.txt",
    "rwkv5-*.dist-info/licenses/LICENSE",
    "rwkv5/_model.pyi",
    "rwkv5/tokenizer/_tokenizer.pyi",
    "rwkv5/dataprep/_dataprep.pyi",
]
REPAIRED = ["rwkv5.libs/libzstd*.so*", "rwkv5.libs/libbz2*.so*", "rwkv5.libs/liblzma*.so*"]
FORBIDDEN = [
    "tests/*",
    "*/tests/*",
    "csrc/*",
    "*.c",
    "*.h",
    "*.o",
    "*.a",
    "*.pyc",
    "*__pycache__*",
    "build/*",
    "*.egg-info/*",
    ".pytest_cache/*",
    "benchmarks/*",
    "notebooks/*",
    "tools/*",
    "docs/*",
    "*.tmp",
    "*~",
]


def problems(names, repaired):
    out = []
    for pat in REQUIRED + (REPAIRED if repaired else []):
        if not any(fnmatch.fnmatch(n, pat) for n in names):
            out.append(f"missing: {pat}")
    for n in names:
        bad = [p for p in FORBIDDEN if fnmatch.fnmatch(n, p)]
        if bad:
            out.append(f"should not be in the wheel: {n} (matches {bad[0]})")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python tools/check_wheel.py WHEEL")
    path = argv[0]
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    repaired = "manylinux" in path or "musllinux" in path
    size = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    print(
        f"{path}: {len(names)} files, {packed / 1e6:.2f} MB compressed, {size / 1e6:.2f} MB installed"
    )
    for i in sorted(infos, key=lambda i: -i.file_size)[:8]:
        print(f"  {i.file_size:>10,}  {i.filename}")
    for field in ("Version", "License-Expression", "Requires-Python"):
        line = next(
            (ln for ln in meta.splitlines() if ln.startswith(field + ":")), f"{field}: (absent)"
        )
        print("  " + line)
    found = problems(names, repaired)
    if "License-Expression: Apache-2.0" not in meta:
        found.append("METADATA has no License-Expression: Apache-2.0")
    for p in found:
        print("  PROBLEM " + p)
    print(f"wheel contents: {'ok' if not found else f'{len(found)} problems'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
