"""Submodules reachable as attributes of their package, imported on first use (PEP 562)."""

import importlib


def lazy_submodules(namespace, names):
    """Return the module-level ``__getattr__`` and ``__dir__`` for the package whose globals are
    ``namespace``: ``package.NAME`` imports ``package.NAME`` on first access for every NAME in ``names``."""
    package = namespace["__name__"]

    def __getattr__(name):
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
