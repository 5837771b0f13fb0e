"""Multilingual mixing: choose how often each document appears so that languages get the shares of
the output asked for (docs/dataprep.md, "Multilingual mixing").

A selection over documents already tokenized (their token counts are in the task parts' metadata),
so the build tokenizes once and then selects. With n_i the input tokens of language i (each
document counted with its end-of-document token, unique documents after --dedup):

* ``--mix-temperature ALPHA``: target share p_i = n_i^ALPHA / sum_j n_j^ALPHA (ALPHA = 1 keeps the
  natural mix, 0 gives every language the same share, 0.3 is mT5's choice);
* ``--mix-weights en=0.3,fr=0.2``: p_i = w_i / sum_j w_j over the languages present; languages not
  named get ``--mix-default-weight`` or, without it, are dropped.

Language i is given t_i = p_i * T tokens, T = ``--mix-tokens`` (default: all input tokens), never
more than ``--mix-max-epochs`` x n_i (the rest is the shortfall, reported). It gets floor(t_i / n_i)
whole passes over its documents, then the shortest prefix of a seeded permutation of its documents
whose tokens come nearest to the remainder. Everything depends only on the documents, the options
and the seed: not on the number of workers, the engine, or an interruption.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .errors import DataprepError

MIX_DEFAULTS = dict(
    mix_temperature=None,
    mix_weights=None,
    mix_default_weight=None,
    mix_tokens=None,
    mix_max_epochs=10,
)


def mixing(options: dict) -> bool:
    """True when the options ask for a mix."""
    return options.get("mix_temperature") is not None or options.get("mix_weights") is not None


def _number(name: str, value, lo: float, lo_open: bool = False) -> float:
    """A finite number >= lo (> lo when lo_open), from a number or its text; else a one-line error."""
    if isinstance(value, bool):
        raise DataprepError(f"{name}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataprepError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(x) or x < lo or (lo_open and x == lo):
        raise DataprepError(
            f"{name}: expected a finite number {'>' if lo_open else '>='} {lo:g}, got {value!r}"
        )
    return x


def parse_weights(value) -> dict:
    """--mix-weights 'en=0.3,fr=0.2' (or a dict) -> {"en": 0.3, "fr": 0.2}; one-line errors."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str):
        items = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            lang, eq, w = part.partition("=")
            if not eq:
                raise DataprepError(
                    f"--mix-weights: expected LANG=WEIGHT pairs separated by commas "
                    f"(e.g. en=0.3,fr=0.2), got {part!r}"
                )
            items.append((lang.strip(), w.strip()))
    else:
        raise DataprepError(
            f"--mix-weights: expected 'LANG=WEIGHT,...' or a dict, got {type(value).__name__}"
        )
    out = {}
    for lang, w in items:
        if not isinstance(lang, str) or not lang:
            raise DataprepError(f"--mix-weights: a language name is empty or not text ({lang!r})")
        if lang in out:
            raise DataprepError(f"--mix-weights: language {lang!r} is given twice")
        out[lang] = _number(f"--mix-weights {lang}", w, 0.0)
    if not out:
        raise DataprepError("--mix-weights: no LANG=WEIGHT pair given")
    if not any(out.values()):
        raise DataprepError("--mix-weights: every weight is 0")
    return out


def check_mix_options(o: dict) -> None:
    """Validate and normalise the mix_* options in place (one-line DataprepError for a bad value)."""
    t, w = o.get("mix_temperature"), o.get("mix_weights")
    if t is not None and w is not None:
        raise DataprepError("--mix-temperature and --mix-weights exclude each other: give one")
    if t is not None:
        o["mix_temperature"] = _number("--mix-temperature", t, 0.0)
    if w is not None:
        o["mix_weights"] = parse_weights(w)
    if o.get("mix_default_weight") is not None:
        if w is None:
            raise DataprepError("--mix-default-weight needs --mix-weights")
        o["mix_default_weight"] = _number("--mix-default-weight", o["mix_default_weight"], 0.0)
    if o.get("mix_tokens") is not None:
        v = o["mix_tokens"]
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataprepError(
                f"--mix-tokens: expected a token count >= 1, got {o['mix_tokens']!r}"
            )
        o["mix_tokens"] = int(v)
    o["mix_max_epochs"] = _number("--mix-max-epochs", o.get("mix_max_epochs", 10), 1.0)
    if (o.get("mix_tokens") is not None) and not mixing(o):
        raise DataprepError("--mix-tokens needs --mix-temperature or --mix-weights")
    if mixing(o):
        if int(o.get("epochs", 1)) != 1:
            raise DataprepError(
                "--epochs cannot be combined with --mix-temperature/--mix-weights: the mix "
                "decides how often each document repeats (use --mix-tokens)"
            )
        if not o.get("lang_field") and not o.get("lang_from_path"):
            raise DataprepError(
                "--mix-temperature/--mix-weights need the language of each document: "
                "pass --lang-field NAME (or --lang-from-path REGEX)"
            )


def _lang_rng(seed: int, lang: str) -> np.random.Generator:
    """A generator of its own per language: a language's choice does not depend on the others."""
    h = int.from_bytes(hashlib.sha256(lang.encode("utf-8", "surrogatepass")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), h]))


def _subsample(tokens: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of whole documents (a prefix of a seeded permutation) whose tokens sum nearest to
    `target` (ties: the shorter prefix), in input order."""
    if target <= 0 or len(tokens) == 0:
        return np.zeros(0, np.int64)
    perm = rng.permutation(len(tokens))
    cum = np.concatenate([[0], np.cumsum(tokens[perm])])
    m = int(np.searchsorted(cum, target))  # first prefix with cum >= target
    if m > len(tokens):
        m = len(tokens)
    elif m > 0 and target - cum[m - 1] <= cum[m] - target:
        m -= 1
    return np.sort(perm[:m])


def plan_mix(names: list, doc_lang: np.ndarray, doc_tokens: np.ndarray, options: dict):
    """The mixed selection of documents.

    names: language names; doc_lang: per unique document, its index in `names`; doc_tokens: its
    tokens (with the end-of-document token). Returns (order, report): `order` lists document
    indices, a document once per time it is used, sorted by (pass, input position) — pass 0 is the
    first pass over every language; `report` is the manifest's "mix" object. Warnings (shortfall,
    languages named but absent) are in report["warnings"]."""
    doc_tokens = np.asarray(doc_tokens, dtype=np.int64)
    doc_lang = np.asarray(doc_lang, dtype=np.int64)
    n_in = (
        np.bincount(doc_lang, weights=doc_tokens, minlength=len(names)).astype(np.int64)
        if len(names)
        else np.zeros(0, np.int64)
    )
    d_in = np.bincount(doc_lang, minlength=len(names)) if len(names) else np.zeros(0, np.int64)
    present = [i for i in range(len(names)) if d_in[i] > 0]
    total_in = int(n_in.sum())
    warnings = []
    alpha, weights = options.get("mix_temperature"), options.get("mix_weights")
    raw = {}
    if alpha is not None:
        method = "temperature"
        # n_i^ALPHA / max_j n_j^ALPHA, in log space: a large ALPHA must not overflow a float
        logs = {i: math.log(n_in[i]) if n_in[i] > 0 else -math.inf for i in present}
        top = max(logs.values(), default=0.0)
        for i in present:
            raw[i] = math.exp(alpha * (logs[i] - top)) if logs[i] > -math.inf else float(alpha == 0)
    else:
        method = "weights"
        default = options.get("mix_default_weight")
        for i in present:
            w = weights.get(names[i], default)
            raw[i] = 0.0 if w is None else float(w)
        absent = sorted(k for k in weights if k not in {names[i] for i in present})
        if absent:
            warnings.append(
                f"mix: --mix-weights names language(s) with no document in the input: "
                f"{', '.join(absent)} (their weight is left out)"
            )
    wsum = sum(raw.values())
    if present and wsum <= 0:
        raise DataprepError(
            f"--mix-weights: none of the input's languages ({', '.join(names[i] for i in present)}) "
            f"has a weight above 0; name them or pass --mix-default-weight"
        )
    total_req = int(options["mix_tokens"]) if options.get("mix_tokens") is not None else total_in
    max_ep = float(options["mix_max_epochs"])
    seed = int(options.get("seed", 0))
    langs_out, parts_pass, parts_doc = {}, [], []
    out_tokens = {}
    for i in present:
        share = raw[i] / wsum
        target = share * total_req
        cap = max_ep * n_in[i]
        wanted = min(target, cap)
        t_i = int(round(wanted))
        idx = np.flatnonzero(doc_lang == i)
        tok_i = doc_tokens[idx]
        passes = t_i // int(n_in[i])
        rest = t_i - passes * int(n_in[i])
        for k in range(passes):
            parts_pass.append(np.full(len(idx), k, np.int64))
            parts_doc.append(idx)
        sub = idx[_subsample(tok_i, rest, _lang_rng(seed, names[i]))]
        parts_pass.append(np.full(len(sub), passes, np.int64))
        parts_doc.append(sub)
        got = passes * int(n_in[i]) + int(doc_tokens[sub].sum())
        out_tokens[i] = got
        entry = {
            "input_documents": int(d_in[i]),
            "input_tokens": int(n_in[i]),
            "input_share": round(int(n_in[i]) / total_in, 6) if total_in else 0.0,
            "weight": round(raw[i], 6),
            "target_share": round(share, 6),
            "target_tokens": int(round(target)),
            "output_documents": int(passes * len(idx) + len(sub)),
            "output_tokens": got,
            "epochs": round(got / int(n_in[i]), 4),
            "shortfall_tokens": 0,
        }
        if target > cap:
            entry["shortfall_tokens"] = int(round(target - cap))
            warnings.append(
                f"mix: language {names[i]} needs {target / n_in[i]:.2f} epochs of its "
                f"{int(n_in[i])} tokens for its share {share:.4f}; capped at --mix-max-epochs "
                f"{max_ep:g}: {entry['shortfall_tokens']} tokens short"
            )
        langs_out[names[i]] = entry
    total_out = sum(out_tokens.values())
    for i in present:
        langs_out[names[i]]["realized_share"] = (
            round(out_tokens[i] / total_out, 6) if total_out else 0.0
        )
    if parts_doc:
        k_all, d_all = np.concatenate(parts_pass), np.concatenate(parts_doc)
        order = d_all[np.lexsort((d_all, k_all))]
    else:
        order = np.zeros(0, np.int64)
    report = {
        "method": method,
        "temperature": alpha,
        "weights": weights,
        "default_weight": options.get("mix_default_weight"),
        "requested_tokens": total_req,
        "input_tokens": total_in,
        "output_tokens": int(total_out),
        "shortfall_tokens": int(sum(e["shortfall_tokens"] for e in langs_out.values())),
        "max_epochs": max_ep,
        "seed": seed,
        "languages": dict(sorted(langs_out.items(), key=lambda kv: -kv[1]["input_tokens"])),
        "warnings": warnings,
    }
    return order, report
