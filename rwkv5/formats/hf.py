"""Hugging Face RWKV-5 parameter names -> RWKV-LM names (docs/model.md §7.2).

The HF port (``Rwkv5ForCausalLM``) renames but never changes values: ``rwkv.`` prefix on
everything except ``head.weight``; ``emb.`` -> ``embeddings.``; ``blocks.0.ln0`` ->
``blocks.0.pre_ln``; ``.att.`` -> ``.attention.``; ``.ffn.`` -> ``.feed_forward.``;
``time_mix_k/v/r/g`` -> ``time_mix_key/value/receptance/gate``. We undo exactly that.
"""

from __future__ import annotations

import re

__all__ = ["is_hf_names", "hf_to_rwkvlm"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(attention|feed_forward|pre_ln)\.")
_MIX = {
    "time_mix_key": "time_mix_k",
    "time_mix_value": "time_mix_v",
    "time_mix_receptance": "time_mix_r",
    "time_mix_gate": "time_mix_g",
}


def is_hf_names(names) -> bool:
    """True when the names look like the HF port's (any ``rwkv.``/``embeddings.`` key)."""
    return any(
        n.startswith(("rwkv.", "embeddings.")) or ".attention." in n or ".feed_forward." in n
        for n in names
    )


def hf_name_to_rwkvlm(name: str) -> str:
    n = name[len("rwkv.") :] if name.startswith("rwkv.") else name
    if n.startswith("embeddings."):
        n = "emb." + n[len("embeddings.") :]
    m = _BLOCK.match(n)
    if m:
        i, part = m.group(1), m.group(2)
        rest = n[m.end() :]
        part = {"attention": "att", "feed_forward": "ffn", "pre_ln": "ln0"}[part]
        if part == "ln0" and i != "0":
            raise ValueError(f"HF name {name!r}: pre_ln exists only in block 0")
        rest = _MIX.get(rest, rest)
        n = f"blocks.{i}.{part}.{rest}"
    return n


def hf_to_rwkvlm(sd: dict) -> dict:
    """Rename every key of ``sd`` from HF to RWKV-LM names; refuses two keys mapping to one name."""
    out = {}
    for k, v in sd.items():
        nk = hf_name_to_rwkvlm(k)
        if nk in out:
            raise ValueError(f"HF names {k!r} and another key both map to {nk!r}")
        out[nk] = v
    return out
