"""Build for rwkv5: three C extensions compiled from csrc/ against the NumPy C API.

Layout of csrc/ (the model's math: docs/model.md):
  common/     thread pool, CPU feature detection, polled runner      (pure C; the model only)
  model/      RWKV-5 forward pass and kernels                        (pure C)
  tokenizer/  World tokenizer (vocab parser, trie encoder, decoder)  (pure C)
  dataprep/   corpus readers, JSON field extractor, shard writers    (pure C, libzstd)
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


ZSTD_MISSING = """rwkv5: cannot build from source: the libzstd development files (zstd.h, libzstd.so) were not found.
  Install them, then run pip again:
    Debian/Ubuntu:   apt-get install libzstd-dev pkg-config
    Fedora/RHEL:     dnf install libzstd-devel pkgconf-pkg-config
    Alpine:          apk add zstd-dev pkgconf
    macOS:           brew install zstd pkg-config
  Or install a binary wheel, which needs neither a compiler nor libzstd:  pip install --only-binary rwkv5 rwkv5
  (looked with `pkg-config libzstd`, then for <zstd.h> with the C compiler {cc!r})"""


def zstd_flags():
    """Compiler and linker flags for libzstd: pkg-config first, then whether the C compiler finds
    <zstd.h> by itself (headers installed without a .pc file); otherwise stop with a message that
    says what to install."""
    if shutil.which("pkg-config"):
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", "libzstd"], text=True,
                                             stderr=subprocess.DEVNULL).split()
            libs = subprocess.check_output(["pkg-config", "--libs", "libzstd"], text=True,
                                           stderr=subprocess.DEVNULL).split()
            return cflags, libs
        except subprocess.CalledProcessError:
            pass
    cc = os.environ.get("CC", "cc")
    try:
        probe = subprocess.run(cc.split() + ["-E", "-x", "c", "-"], input="#include <zstd.h>\n",
                               capture_output=True, text=True)
        found = probe.returncode == 0
    except OSError:
        sys.exit(f"rwkv5: cannot build from source: no C compiler ({cc!r} not found).\n"
                 f"  Install one (Debian/Ubuntu: apt-get install gcc), or install a binary wheel:\n"
                 f"  pip install --only-binary rwkv5 rwkv5")
    if found:
        return [], ["-lzstd"]
    sys.exit(ZSTD_MISSING.format(cc=cc))


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
    extensions.append(Extension(
        "rwkv5._model",
        sources=["csrc/py_model.c"] + c_sources("common", "model"),
        include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args=cflags, extra_link_args=ldflags,
    ))
if "tokenizer" in wanted:
    extensions.append(Extension(
        "rwkv5.tokenizer._tokenizer",
        sources=["csrc/py_tokenizer.c"] + c_sources("tokenizer"),   # csrc/common: the model's only
        include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args=cflags, extra_link_args=ldflags,
    ))
if "dataprep" in wanted:
    zc, zl = zstd_flags()
    extensions.append(Extension(
        "rwkv5.dataprep._dataprep",
        sources=["csrc/py_dataprep.c"] + c_sources("tokenizer", "dataprep"),
        include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args=cflags + zc, extra_link_args=ldflags + zl,
    ))

setup(
    ext_modules=extensions,
    package_dir={
        "rwkv5": "rwkv5",
        "rwkv5.tokenizer": "tokenizer",
        "rwkv5.dataprep": "dataprep",
    },
    packages=["rwkv5", "rwkv5.formats", "rwkv5.tokenizer", "rwkv5.dataprep"],
    package_data={"rwkv5": ["py.typed", "data/*", "*.pyi"], "rwkv5.tokenizer": ["*.pyi"], "rwkv5.dataprep": ["*.pyi"]},
)
