"""Writes the walkthrough notebooks (without outputs). Run: python notebooks/make_notebooks.py

The notebooks are generated from this file so that their code is reviewed like any other code;
tests/test_notebooks.py executes each of them.
"""
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

FIND_MODEL = '''import numpy as np
import matplotlib.pyplot as plt
import rwkv5
import rwkv5.tiny

# The small trained byte-level RWKV-5.2 model that ships inside the package (docs/tiny-model.md).
# For a real RWKV-5 World checkpoint: model = rwkv5.load("RWKV-5-World-0.4B-v2-20231113-ctx4096.pth", dtype="bf16")
model = rwkv5.tiny.load()
model'''

quickstart = [
    new_markdown_cell("# rwkv5 quickstart\n\nLoad a model, run it in both modes (parallel and recurrent), "
                      "look at its next-token distribution and its state, and generate text.\n\n"
                      "With a real World model you would write `rwkv5.load('RWKV-5-World-0.4B-v2.pth', dtype='bf16')`; "
                      "here we use the small trained byte-level model that ships inside the package (`rwkv5.tiny`): it has "
                      "learned spelling and script in 16 languages, not meaning."),
    new_code_cell(FIND_MODEL),
    new_code_cell("model.config"),
    new_markdown_cell("## Both modes agree\n`mode='parallel'` processes chunks of positions as matrix products "
                      "(the chunked form of the WKV recurrence); `mode='recurrent'` goes one token at a time."),
    new_code_cell('''tokens = list("The quick brown fox jumps over the lazy dog".encode())
par, state_p = model.forward(tokens, mode="parallel", full_output=True)
rec, state_r = model.forward(tokens, mode="recurrent", full_output=True)
print("max |logit difference|:", np.abs(par - rec).max())
print("max |state difference|:", np.abs(state_p.att_kv - state_r.att_kv).max())'''),
    new_markdown_cell("## The next-token distribution"),
    new_code_cell('''from rwkv5.generation import softmax
logits, state = model.forward(list(b"The quick brown fox jumps over the lazy "))
p = softmax(logits)
top = np.argsort(p)[::-1][:15]
plt.figure(figsize=(8, 3))
plt.bar([repr(chr(t)) for t in top], p[top])
plt.title("next byte after 'The quick brown fox jumps over the lazy '")
plt.ylabel("probability"); plt.tight_layout(); plt.show()'''),
    new_markdown_cell("## The state: constant size, one per layer\n`att_kv` holds, per layer and head, an N×N "
                      "matrix (key × value) — the model's memory of everything so far."),
    new_code_cell('''norms = np.linalg.norm(state.att_kv.reshape(state.att_kv.shape[0], -1), axis=1)
plt.figure(figsize=(6, 3))
plt.plot(norms, marker="o"); plt.xlabel("layer"); plt.ylabel("‖att_kv‖"); plt.title("state norm per layer")
plt.tight_layout(); plt.show()
print("state arrays:", state.att_x.shape, state.att_kv.shape, state.ffn_x.shape)'''),
    new_markdown_cell("## Generation\nSampling follows the ChatRWKV pipeline (penalties, top-p, temperature); "
                      "the same seed gives the same text."),
    new_code_cell('''for piece in model.generate("Once upon a time", max_tokens=120, temperature=1.0, top_p=0.85, seed=0):
    print(piece, end="")'''),
    new_code_cell('''print("perplexity of a sentence:", model.perplexity("The quick brown fox jumps over the lazy dog."))'''),
]

tokenizer = [
    new_markdown_cell("# The RWKV World tokenizer\n\n65,536 ids, greedy longest match over UTF-8 bytes. "
                      "This notebook compares how many bytes one token covers per language, and the speed of the "
                      "C tokenizer against the pure-Python reference (`TRIE_TOKENIZER` style)."),
    new_code_cell('''import json, time, pathlib
import numpy as np
import matplotlib.pyplot as plt
import rwkv5
from rwkv5.tokenizer import WorldTokenizer

tok = WorldTokenizer()
print(tok.n_vocab, "ids; 'Hello world' ->", tok.encode("Hello world"))'''),
    new_code_cell('''corpus = pathlib.Path(rwkv5.__file__).parent / "data" / "sample_corpus.jsonl"
docs = [json.loads(l) for l in corpus.read_text(encoding="utf-8").splitlines()]
per_lang = {}
for d in docs:
    b = len(d["text"].encode()); t = len(tok.encode(d["text"]))
    s = per_lang.setdefault(d["lang"], [0, 0]); s[0] += b; s[1] += t
langs = sorted(per_lang, key=lambda l: per_lang[l][0] / per_lang[l][1])
bpt = [per_lang[l][0] / per_lang[l][1] for l in langs]
plt.figure(figsize=(9, 3)); plt.bar(langs, bpt); plt.ylabel("UTF-8 bytes per token")
plt.title("bytes per token by language (sample corpus)"); plt.tight_layout(); plt.show()'''),
    new_markdown_cell("## Round trip and invalid UTF-8\nEvery byte is a token, so any byte string encodes and decodes back exactly."),
    new_code_cell('''raw = bytes([0xE6, 0xFF, 0x41, 0xC3])   # not valid UTF-8
ids = tok.encode(raw)
print(ids, tok.decode_bytes(ids) == raw, repr(tok.decode(ids, errors="replace")))'''),
    new_markdown_cell("## Speed against the pure-Python reference"),
    new_code_cell('''from tqdm import tqdm   # the text bar: tqdm.auto would want ipywidgets in Jupyter
from rwkv5.tokenizer.reference import ReferenceTokenizer
ref = ReferenceTokenizer()
text = "\\n".join(d["text"] for d in docs) * 20
data = text.encode()
def rate(f, reps):
    t0 = time.perf_counter()
    for _ in tqdm(range(reps), leave=False):
        f(text)
    return len(data) * reps / (time.perf_counter() - t0) / 1e6
c_rate, py_rate = rate(tok.encode, 50), rate(ref.encode, 2)
assert tok.encode(text) == ref.encode(text)
plt.figure(figsize=(5, 3)); plt.bar(["C (rwkv5)", "pure Python"], [c_rate, py_rate]); plt.yscale("log")
plt.ylabel("MB/s (one thread)"); plt.tight_layout(); plt.show()
print(f"C {c_rate:.1f} MB/s, Python {py_rate:.2f} MB/s: {c_rate / py_rate:.0f}x")'''),
]

dataprep = [
    new_markdown_cell("# Preparing a multilingual training set\n\nBuild RWKV-LM binidx shards from the sample "
                      "corpus, look at the statistics, inspect documents, and get the `--magic_prime` line."),
    new_code_cell('''import json, pathlib, tempfile
import numpy as np
import matplotlib.pyplot as plt
import rwkv5
from rwkv5.dataprep import build, open_shards, verify, inspect_docs

corpus = pathlib.Path(rwkv5.__file__).parent / "data" / "sample_corpus.jsonl"
out = pathlib.Path(tempfile.mkdtemp()) / "sample"
manifest = build([str(corpus)], str(out), lang_field="lang", ctx_len=128, workers=2, log=print)'''),
    new_code_cell('''totals = manifest["totals"]; totals'''),
    new_code_cell('''per_script = manifest["statistics"]["per_script"]
names = sorted(per_script, key=lambda s: -per_script[s]["tokens"])
plt.figure(figsize=(8, 3))
plt.bar(names, [per_script[s]["tokens"] for s in names]); plt.ylabel("tokens"); plt.title("tokens per script")
plt.xticks(rotation=30); plt.tight_layout(); plt.show()'''),
    new_markdown_cell("## Reading it back\nEach document is a uint16 array ending with the end-of-document token 0."),
    new_code_cell('''with open_shards(str(out)) as shards:
    first = shards[0]
print(first[:12], "... ends with", first[-1])
for index, n_tokens, text in inspect_docs(str(out), doc=9, count=2):
    print(index, n_tokens, text[:80])'''),
    new_code_cell('''print(verify(str(out)))
print("RWKV-LM arguments:", manifest["rwkv_lm_args"])'''),
    new_markdown_cell("## A multilingual mix\n\nCorpora such as FineWeb-2 and CulturaX come as one folder of "
                      "Parquet files per language, and a few languages hold most of the text. Here such a corpus "
                      "of 600 : 120 : 20 documents is written (`by_language/<lang>/train/part-0.parquet`, several "
                      "row groups each), then built with `mix_temperature=0.3` (mT5's choice): language *i* "
                      "gets a share of the output tokens proportional to n_i^0.3 (n_i = its input tokens), so "
                      "the small languages are repeated (whole passes, then a seeded subsample) and the large one "
                      "is subsampled. The corpus is tokenized once; the mix is a selection over the tokenized "
                      "documents (docs/dataprep.md, \"Multilingual mixing\"). Parquet needs pyarrow "
                      "(`pip install 'rwkv5[parquet]'`)."),
    new_code_cell('''import random
import pyarrow as pa
import pyarrow.parquet as pq
samples = {}
for line in corpus.read_text(encoding="utf-8").splitlines():
    rec = json.loads(line)
    samples.setdefault(rec.get("lang"), []).append(rec["text"])
rng = random.Random(0)
folder = out.parent / "by_language"
for lang, n_docs in {"en": 600, "fr": 120, "ru": 20}.items():
    texts = []
    for i in range(n_docs):
        text = rng.choice(samples[lang])
        texts.append(f"{i}. " + text[: rng.randint(40, len(text))])
    (folder / lang / "train").mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(n_docs)), "text": texts, "lang": [lang] * n_docs})
    pq.write_table(table, folder / lang / "train" / "part-0.parquet", row_group_size=64)
print(sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet")))'''),
    new_code_cell('''mixed = build([str(folder)], str(out.parent / "mixed"), lang_field="lang", mix_temperature=0.3,
               shuffle=True, seed=1, workers=2, log=print)
from rwkv5.dataprep.tools import stats_table
print(stats_table(str(out.parent / "mixed")))'''),
    new_code_cell('''mix = mixed["mix"]["languages"]
langs = list(mix)
x = np.arange(len(langs))
plt.figure(figsize=(6, 3))
plt.bar(x - 0.2, [mix[l]["input_share"] for l in langs], 0.4, label="input")
plt.bar(x + 0.2, [mix[l]["realized_share"] for l in langs], 0.4, label="mixed (temperature 0.3)")
plt.xticks(x, langs); plt.ylabel("share of tokens"); plt.legend(); plt.tight_layout(); plt.show()
for l in langs:
    print(f"{l}: input {mix[l]['input_share']:.3f} -> target {mix[l]['target_share']:.3f}, "
          f"realized {mix[l]['realized_share']:.3f}, {mix[l]['epochs']:.2f} epochs")'''),
]

for name, cells in (("01_quickstart", quickstart), ("02_tokenizer", tokenizer), ("03_dataprep", dataprep)):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, HERE / f"{name}.ipynb")
    print("wrote", HERE / f"{name}.ipynb")
