import importlib


def test_package_and_extensions_import():
    rwkv5 = importlib.import_module("rwkv5")
    assert rwkv5.__version__
    for name in ("rwkv5._model", "rwkv5.tokenizer._tokenizer", "rwkv5.dataprep._dataprep"):
        importlib.import_module(name)
