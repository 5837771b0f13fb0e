"""Checkpoint and state file formats (readers and writers), none of which executes file content."""

# Each format module is reachable as an attribute (rwkv5.formats.safetensors, ...) once this
# package is imported, imported on first use like the submodules of rwkv5 itself.
SUBMODULES = ("hf", "pth", "rwkvcpp", "safetensors", "state_io", "zipfile_reader")


def __getattr__(name):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
