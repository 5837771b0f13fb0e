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
    assert not re.search(r"^version\s*=", project, re.M) and re.search(r'dynamic\s*=\s*\["version"\]', project)
    assert 'version = {attr = "rwkv5.__version__"}' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", rwkv5.__version__)
    assert version("rwkv5") == rwkv5.__version__
    r = subprocess.run([sys.executable, "-m", "rwkv5", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"rwkv5 {rwkv5.__version__}"
