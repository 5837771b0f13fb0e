import importlib


def test_package_and_extensions_import():
    rwkv5 = importlib.import_module("rwkv5")
    assert rwkv5.__version__
    for name in ("rwkv5._model", "rwkv5.tokenizer._tokenizer", "rwkv5.dataprep._dataprep"):
        importlib.import_module(name)


def test_one_version_source():
    """pyproject.toml takes the version from rwkv5.__version__; the installed metadata and the CLI agree."""
    import pathlib
    import re
    import subprocess
    import sys
    from importlib.metadata import version

    import rwkv5

    pyproject = (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M) and re.search(
        r'dynamic\s*=\s*\["version"\]', project
    )
    assert 'version = {attr = "rwkv5.__version__"}' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", rwkv5.__version__)
    assert version("rwkv5") == rwkv5.__version__
    r = subprocess.run([sys.executable, "-m", "rwkv5", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"rwkv5 {rwkv5.__version__}"


def test_building_without_library_headers_says_what_to_install(tmp_path):
    """setup.py with pkg-config finding no library and a compiler that sees no system headers: one
    message naming the packages to install, exit status 1, before anything is compiled."""
    import os
    import pathlib
    import shutil
    import subprocess
    import sys

    import pytest

    if not shutil.which("cc"):
        pytest.skip("no C compiler: the probe for <zstd.h> needs one")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path), CC="cc -nostdinc")
    r = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=root, env=env, capture_output=True, text=True
    )
    assert r.returncode == 1
    assert (
        "development files of libzstd, zlib, libbz2, liblzma (zstd.h, libzstd.so, zlib.h, libz.so, bzlib.h, "
        "libbz2.so, lzma.h, liblzma.so) were not found"
    ) in r.stderr
    assert "apt-get install libzstd-dev zlib1g-dev libbz2-dev liblzma-dev pkg-config" in r.stderr
    assert "dnf install libzstd-devel zlib-devel bzip2-devel xz-devel" in r.stderr
    assert "Traceback" not in r.stderr
    # and with the headers where the compiler looks, the same command goes through
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=root, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_csrc_common_is_linked_only_into_the_model_extension():
    """csrc/common (thread pool, CPU detection, polled runner) is the model's: the tokenizer and
    data-prep extensions do not carry a copy of it."""
    import pathlib

    import pytest

    import rwkv5._model
    import rwkv5.dataprep._dataprep
    import rwkv5.tokenizer._tokenizer

    names = (b"rwkv5_parallel_for", b"rwkv5_cpu_isa", b"rwkv5_run_polled")
    model = pathlib.Path(rwkv5._model.__file__).read_bytes()
    if not all(n in model for n in names):
        pytest.skip("a stripped build: the extensions carry no symbol names to look for")
    for ext in (rwkv5.tokenizer._tokenizer, rwkv5.dataprep._dataprep):
        data = pathlib.Path(ext.__file__).read_bytes()
        assert not [n for n in names if n in data], f"{ext.__name__} links csrc/common"


def test_extension_stubs_name_what_the_extensions_define():
    """Each C extension has a .pyi beside it (the package ships py.typed) whose top-level names are
    exactly the extension's (so a function added in C without a stub, or a stale stub, fails here)."""
    import ast
    import importlib
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    stubs = {
        "rwkv5._model": "rwkv5/_model.pyi",
        "rwkv5.tokenizer._tokenizer": "tokenizer/_tokenizer.pyi",
        "rwkv5.dataprep._dataprep": "dataprep/_dataprep.pyi",
    }
    for name, rel in stubs.items():
        tree = ast.parse((root / rel).read_text(), rel)
        declared = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                declared.add(node.name)
            elif isinstance(node, ast.AnnAssign):
                declared.add(node.target.id)
        declared = {
            n for n in declared if not (n.startswith("_") and n[1:2].isupper())
        }  # stub-only aliases
        module = importlib.import_module(name)
        defined = {n for n in dir(module) if not n.startswith("__")}
        assert declared == defined, (
            f"{rel}: missing {sorted(defined - declared)}, stale {sorted(declared - defined)}"
        )
