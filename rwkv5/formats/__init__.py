"""Checkpoint and state file formats (readers and writers), none of which executes file content."""

from rwkv5._lazy import lazy_submodules

# Each format module is reachable as an attribute (rwkv5.formats.safetensors, ...) once this
# package is imported, imported on first use like the submodules of rwkv5 itself.
SUBMODULES = ("checkpoint", "hf", "pth", "rwkvcpp", "safetensors", "state_io", "zipfile_reader")

__getattr__, __dir__ = lazy_submodules(globals(), SUBMODULES)
