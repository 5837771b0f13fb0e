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
from ._lazy import lazy_submodules  # noqa: E402

__all__ = ["Model", "State", "ModelConfig", "load", "ops", "set_num_threads", "get_num_threads"]

# Every public submodule is reachable as an attribute after a bare `import rwkv5`, the way
# `rwkv5.ops` is; those not imported above are imported on first use (module __getattr__), so
# `import rwkv5` stays as cheap as it was.
SUBMODULES = (
    "dataprep",
    "demo",
    "formats",
    "generation",
    "loading",
    "model",
    "ops",
    "reference",
    "saving",
    "scoring",
    "storage",
    "testing",
    "tiny",
    "tokenizer",
)

__getattr__, __dir__ = lazy_submodules(globals(), SUBMODULES)
