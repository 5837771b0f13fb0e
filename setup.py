"""Build for rwkv5: three C extensions compiled from csrc/ against the NumPy C API.

Layout of csrc/ (the model's math: docs/model.md):
  common/     thread pool, CPU feature detection, polled runner      (pure C; the model only)
  model/      RWKV-5 forward pass and kernels                        (pure C)
  tokenizer/  World tokenizer (vocab parser, trie encoder, decoder)  (pure C)
  dataprep/   corpus readers, JSON field extractor, shard writers    (pure C; libzstd, zlib, libbz2, liblzma)
  py_*.c      the only files that include Python.h / numpy

Environment knobs:
  RWKV5_DEBUG=1       -O0 -g, assertions on
  RWKV5_SANITIZE=1    AddressSanitizer + UndefinedBehaviorSanitizer (run Python with libasan preloaded;
                      `make test-asan` does it)
  RWKV5_NATIVE=1      add -march=native (never the default: wheels must run on any x86-64)
  RWKV5_EXTENSIONS    comma list restricting which extensions are built (model,tokenizer,dataprep)
"""

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
from setuptools import Extension, setup


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def c_sources(*dirs):
    out = []
    for d in dirs:
        out += sorted(glob.glob(os.path.join("csrc", d, "*.c")))
    return out


# The C libraries of the data-prep extension: the zstd, gzip, bzip2 and xz decoders (docs/dataprep.md
# says why these). (name, pkg-config module, header, -l name, Debian, Fedora, Alpine, Homebrew package)
LIBRARIES = [
    ("libzstd", "libzstd", "zstd.h", "zstd", "libzstd-dev", "libzstd-devel", "zstd-dev", "zstd"),
    ("zlib", "zlib", "zlib.h", "z", "zlib1g-dev", "zlib-devel", "zlib-dev", "zlib"),
    ("libbz2", "bzip2", "bzlib.h", "bz2", "libbz2-dev", "bzip2-devel", "bzip2-dev", "bzip2"),
    ("liblzma", "liblzma", "lzma.h", "lzma", "liblzma-dev", "xz-devel", "xz-dev", "xz"),
]

LIBS_MISSING = """rwkv5: cannot build from source: the development files of {names} ({files}) were not found.
  Install them, then run pip again:
    Debian/Ubuntu:   apt-get install {deb} pkg-config
    Fedora/RHEL:     dnf install {rpm} pkgconf-pkg-config
    Alpine:          apk add {apk} pkgconf
    macOS:           brew install {brew} pkg-config
  Or install a binary wheel, which needs neither a compiler nor these libraries:  pip install --only-binary rwkv5 rwkv5
  (looked with `pkg-config`, then for the headers with the C compiler {cc!r})"""


def library_flags():
    """Compiler and linker flags for LIBRARIES: for each, pkg-config first, then whether the C
    compiler finds its header by itself (headers installed without a .pc file, as Debian's libbz2);
    when any is missing, stop with one message that says what to install."""
    cflags, libs, missing = [], [], []
    cc = os.environ.get("CC", "cc")
    for name, pc, header, lib, *packages in LIBRARIES:
        if shutil.which("pkg-config"):
            try:
                c = subprocess.check_output(
                    ["pkg-config", "--cflags", pc], text=True, stderr=subprocess.DEVNULL
                ).split()
                ls = subprocess.check_output(
                    ["pkg-config", "--libs", pc], text=True, stderr=subprocess.DEVNULL
                ).split()
                cflags += [f for f in c if f not in cflags]
                libs += ls
                continue
            except subprocess.CalledProcessError:
                pass
        try:
            probe = subprocess.run(
                cc.split() + ["-E", "-x", "c", "-"],
                input=f"#include <{header}>\n",
                capture_output=True,
                text=True,
            )
        except OSError:
            sys.exit(
                f"rwkv5: cannot build from source: no C compiler ({cc!r} not found).\n"
                f"  Install one (Debian/Ubuntu: apt-get install gcc), or install a binary wheel:\n"
                f"  pip install --only-binary rwkv5 rwkv5"
            )
        if probe.returncode == 0:
            libs.append("-l" + lib)
        else:
            missing.append((name, header, lib, packages))
    if missing:
        sys.exit(
            LIBS_MISSING.format(
                names=", ".join(m[0] for m in missing),
                files=", ".join(f"{m[1]}, lib{m[2]}.so" for m in missing),
                cc=cc,
                **{
                    k: " ".join(m[3][i] for m in missing)
                    for i, k in enumerate(("deb", "rpm", "apk", "brew"))
                },
            )
        )
    return cflags, libs


debug = env_flag("RWKV5_DEBUG")
sanitize = env_flag("RWKV5_SANITIZE")

cflags = ["-std=c11", "-Wall", "-Wextra", "-pthread", "-fvisibility=hidden", "-D_GNU_SOURCE"]
ldflags = ["-pthread", "-lm"]
if debug or sanitize:
    cflags += ["-O1" if sanitize else "-O0", "-g", "-fno-omit-frame-pointer", "-UNDEBUG"]
else:
    cflags += ["-O3", "-DNDEBUG"]
if sanitize:
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    cflags += san
    ldflags += san
if env_flag("RWKV5_NATIVE"):
    cflags.append("-march=native")

include_dirs = ["csrc", np.get_include()]
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

wanted = os.environ.get("RWKV5_EXTENSIONS", "model,tokenizer,dataprep").split(",")
extensions = []
if "model" in wanted:
    extensions.append(
        Extension(
            "rwkv5._model",
            sources=["csrc/py_model.c"] + c_sources("common", "model"),
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    )
if "tokenizer" in wanted:
    extensions.append(
        Extension(
            "rwkv5.tokenizer._tokenizer",
            sources=["csrc/py_tokenizer.c"]
            + c_sources("tokenizer"),  # csrc/common: the model's only
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    )
if "dataprep" in wanted:
    zc, zl = library_flags()
    extensions.append(
        Extension(
            "rwkv5.dataprep._dataprep",
            sources=["csrc/py_dataprep.c"] + c_sources("tokenizer", "dataprep"),
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=cflags + zc,
            extra_link_args=ldflags + zl,
        )
    )

setup(
    ext_modules=extensions,
    package_dir={
        "rwkv5": "rwkv5",
        "rwkv5.tokenizer": "tokenizer",
        "rwkv5.dataprep": "dataprep",
    },
    packages=["rwkv5", "rwkv5.formats", "rwkv5.tokenizer", "rwkv5.dataprep"],
    package_data={
        "rwkv5": ["py.typed", "data/*", "*.pyi"],
        "rwkv5.tokenizer": ["*.pyi"],
        "rwkv5.dataprep": ["*.pyi"],
    },
)
