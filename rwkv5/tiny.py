"""The small trained model that ships inside the package.

A byte-level RWKV-5.2 model (vocabulary 256: token id = byte value; 3 layers x 96, 6 heads of
16; 413k parameters, float32, 1.7 MB) trained by ``tools/train_tiny.py`` on multilingual text
generated from faker's locale data in 16 languages. It knows spelling and script, not
meaning; its training curve and bits per byte per language are in docs/tiny-model.md. It is
what ``make demo``, the notebooks and the tests use when they need *a* trained model; for real
text, load an RWKV-5 World checkpoint with :func:`rwkv5.load`.

    >>> import rwkv5.tiny
    >>> model = rwkv5.tiny.load()
    >>> model.config.vocab_size
    256
    >>> text = "".join(model.generate("Der Zug", max_tokens=20, seed=0))
"""

from __future__ import annotations

import pathlib

PATH = pathlib.Path(__file__).resolve().parent / "data" / "tiny-5v2-bytes.safetensors"


def load(**kwargs):
    """``rwkv5.load(PATH, **kwargs)``: the shipped model (GroupNorm eps 64e-5, as it was trained)."""
    from .loading import load as load_checkpoint

    if not PATH.is_file():
        raise OSError(
            f"{PATH}: the shipped model is missing from this installation of rwkv5 "
            "(reinstall the package, or run tools/train_tiny.py in a source checkout)"
        )
    return load_checkpoint(PATH, **kwargs)
