"""rwkv5: RWKV-5 ("Eagle") language models on the CPU, the RWKV World tokenizer, and
multilingual training-data preparation, with a C core.

    >>> import rwkv5
    >>> model = rwkv5.load("RWKV-5-World-0.4B-v2.pth", dtype="bf16")
    >>> tok = rwkv5.tokenizer.WorldTokenizer()
    >>> logits, state = model.forward(tok.encode("The capital of France is"))
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402
from ._model import get_num_threads, set_num_threads  # noqa: E402
from .loading import load  # noqa: E402
from .model import Model, ModelConfig, State  # noqa: E402

__all__ = ["Model", "State", "ModelConfig", "load", "ops", "set_num_threads", "get_num_threads"]

def __getattr__(name):
    # `rwkv5.tokenizer` / `rwkv5.dataprep` after a bare `import rwkv5`, imported on first use
    if name in ("tokenizer", "dataprep"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
