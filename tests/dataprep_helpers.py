"""Shared helpers for the dataprep tests: corpus generators that know what they wrote, an
independent binidx reader written from docs/dataprep.md ("Outputs"), and the reference tokenizer."""

import functools
import json
import os
import random
import struct

import numpy as np

SAMPLES = {
    "en": ("The quick brown fox jumps over the lazy dog.", "Latin"),
    "fr": ("Voix ambiguë d'un cœur qui, au zéphyr, préfère les jattes de kiwis.", "Latin"),
    "ru": ("Съешь же ещё этих мягких французских булок, да выпей чаю.", "Cyrillic"),
    "el": ("Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "Greek"),
    "ar": ("نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر", "Arabic"),
    "he": ("דג סקרן שט בים מאוכזב ולפתע מצא חברה", "Hebrew"),
    "hi": ("ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश", "Devanagari"),
    "th": ("เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน", "Thai"),
    "zh": ("我能吞下玻璃而不伤身体。天地玄黄，宇宙洪荒。", "Han"),
    "ja": ("いろはにほへとちりぬるを わかよたれそつねならむ", "Kana"),
    "ko": ("다람쥐 헌 쳇바퀴에 타고파. 키스의 고유조건은 입술끼리 만나야 하고", "Hangul"),
    "sym": ("🙂🚀 1234 !!! 😀 — 42 % $ 7", "Common"),
}


@functools.lru_cache(maxsize=1)
def ref_tokenizer():
    """RWKV's own Python TRIE_TOKENIZER (the reference; only that submodule is imported)."""
    import importlib.util
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    spec = importlib.util.find_spec("rwkv")
    return TRIE_TOKENIZER(
        os.path.join(list(spec.submodule_search_locations)[0], "rwkv_vocab_v20230424.txt")
    )


@functools.lru_cache(maxsize=None)
def ref_encode(text: str) -> tuple:
    return tuple(ref_tokenizer().encode(text)) + (0,)


def read_binidx_independent(prefix):
    """Read PREFIX.idx/.bin the way RWKV-LM's MMapIndexedDataset does (magic, version, dtype, sizes, pointers, doc_idx)."""
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", idx[9:17])
    assert version == 1
    assert idx[17] == 8  # uint16
    n, doc_count = struct.unpack("<QQ", idx[18:34])
    off = 34
    sizes = np.frombuffer(idx, dtype="<i4", count=n, offset=off)
    off += 4 * n
    pointers = np.frombuffer(idx, dtype="<i8", count=n, offset=off)
    off += 8 * n
    doc_idx = np.frombuffer(idx, dtype="<i8", count=doc_count, offset=off)
    assert off + 8 * doc_count == len(idx)
    tokens = np.fromfile(prefix + ".bin", dtype="<u2")
    docs = [tokens[p // 2 : p // 2 + s] for p, s in zip(pointers.tolist(), sizes.tolist())]
    return docs, doc_idx


def gen_corpus(seed, n_records, bad=True):
    """Lines of a JSONL corpus plus what a correct reader must make of them.

    Returns (lines: list[bytes] without newlines, expected: list[(kind, payload)]) where kind is
    "doc" (payload: text), "blank", or a skip reason."""
    rng = random.Random(seed)
    langs = list(SAMPLES)
    lines, expected = [], []
    for i in range(n_records):
        r = rng.random()
        if bad and r < 0.03:
            lines.append(b'{"text": "unterminated')
            expected.append(("malformed_json", None))
            continue
        if bad and r < 0.05:
            lines.append(b'{"title": "no text here"}')
            expected.append(("missing_field", None))
            continue
        if bad and r < 0.06:
            lines.append(b'{"text": 12}')
            expected.append(("field_not_string", None))
            continue
        if bad and r < 0.07:
            lines.append(b'{"text": ""}')
            expected.append(("empty", None))
            continue
        if bad and r < 0.08:
            lines.append(b'{"text": "bad \xff\xfe bytes"}')
            expected.append(("invalid_utf8", None))
            continue
        if bad and r < 0.09:
            lines.append(b'{"text": "lone \\ud800 surrogate"}')
            expected.append(("lone_surrogate", None))
            continue
        if bad and r < 0.10:
            lines.append(b"   ")
            expected.append(("blank", None))
            continue
        lang = rng.choice(langs)
        base = SAMPLES[lang][0]
        k = rng.randint(1, 6)
        parts = [
            base[rng.randint(0, len(base) - 1) :] if rng.random() < 0.3 else base for _ in range(k)
        ]
        text = rng.choice([" ", "\n", "\t", "\n\n", ' "q" ', " \\ "]).join(parts)
        rec = {"id": i, "text": text, "lang": lang, "meta": {"n": [1, 2.5, None, True]}}
        line = json.dumps(rec, ensure_ascii=rng.random() < 0.4).encode("utf-8")
        if rng.random() < 0.1:
            line += b"\r"  # CRLF line ending
        lines.append(line)
        expected.append(("doc", text, lang))
    return lines, expected


def write_jsonl(path, lines, bom=False, final_newline=True):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    if bom:
        data = b"\xef\xbb\xbf" + data
    with open(path, "wb") as f:
        f.write(data)
    return data
