"""Train the small byte-level RWKV-5.2 model that ships in the package (rwkv5/data/).

    pip install -e ".[train]"            # torch (CPU) and the pinned faker that makes the text
    python tools/train_tiny.py           # ~10 min on one core; writes rwkv5/data/tiny-5v2-bytes.safetensors
    python tools/train_tiny.py --check   # retrain into a temp file and compare with the shipped one

The text: `faker` (MIT) generates documents in 16 languages from its locale data - sentences
drawn from each locale's word list where it has one, plus names, addresses, companies, jobs,
dates and phone numbers - seeded, so the same faker version gives the same bytes. The text is
word salad in the right script and spelling, which is what a model of this size can learn;
the project's own sample corpus (rwkv5/data/sample_corpus.jsonl, natural prose written for
the project) is never trained on and serves as an out-of-distribution check.

The model: RWKV-5.2 (x052) exactly as RWKV-LM names and computes it - byte vocabulary (256),
LayerNorms, token shift, per-channel decay w = exp(-exp(time_decay)), bonus time_faaaa,
SiLU gate, GroupNorm(y / 8, eps 1e-5) (= GroupNorm(y, eps 64e-5), the value rwkv5.load uses
for safetensors files), squared-ReLU channel mix. The WKV runs in a chunked matrix form with
only non-negative powers of the decay (wkv_chunked below).

Reproducibility: everything is seeded, torch runs on one thread with deterministic
algorithms, and the script verifies the saved file with rwkv5 (logits of rwkv5.load against
this torch forward). With the same torch build on the same kind of CPU, a rerun reproduces
the file bit for bit; docs/tiny-model.md states what was measured.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "rwkv5" / "data" / "tiny-5v2-bytes.safetensors"
SAMPLE = ROOT / "rwkv5" / "data" / "sample_corpus.jsonl"
FAKER_VERSION = "40.63.0"  # the text depends on it: pinned in the `train` extra too

# language -> (faker locale, whether faker's lorem provider has real words in that language)
LANGUAGES = {
    "en": ("en_US", True),
    "de": ("de_DE", True),
    "fr": ("fr_FR", True),
    "es": ("es_ES", True),
    "pl": ("pl_PL", True),
    "ru": ("ru_RU", True),
    "el": ("el_GR", True),
    "ar": ("ar_AA", True),
    "zh": ("zh_CN", True),
    "ja": ("ja_JP", True),
    "th": ("th_TH", True),
    "vi": ("vi_VN", True),
    "he": ("he_IL", False),
    "hi": ("hi_IN", False),
    "ko": ("ko_KR", False),
    "tr": ("tr_TR", False),
}


class Config:
    n_layer = 3
    n_embd = 96
    head_size = 16
    n_ffn = 336  # int(3.5 * 96) // 32 * 32
    vocab = 256
    ctx = 128  # training window (bytes)
    chunk = 16  # WKV chunk length in the matrix form
    batch = 12
    steps = 1000
    lr = 3e-3
    lr_final = 2e-4
    warmup = 100
    seed = 20240
    bytes_per_language = 240_000  # training text per language (held-out text is extra)
    heldout_docs = 60  # per language


# -- the text -------------------------------------------------------------------------------------


def make_corpus(cfg, out=sys.stdout):
    """{lang: (train_docs, heldout_docs)}: faker documents, seeded per language and split."""
    import faker

    if faker.VERSION != FAKER_VERSION:
        print(
            f"warning: faker {faker.VERSION} is not {FAKER_VERSION}: the text (and so the model) differs",
            file=out,
        )
    corpus = {}
    for i, (lang, (locale, has_words)) in enumerate(sorted(LANGUAGES.items())):
        fk = faker.Faker(locale)
        fk.seed_instance(cfg.seed + i)
        docs, size = [], 0
        while size < cfg.bytes_per_language or len(docs) < cfg.heldout_docs * 5:
            d = _document(fk, has_words)
            docs.append(d)
            size += len(d.encode("utf-8")) + 2
        # held-out documents: every 5th of the first 5 * heldout_docs
        held = [d for j, d in enumerate(docs) if j % 5 == 4 and j < 5 * cfg.heldout_docs]
        train = [d for j, d in enumerate(docs) if not (j % 5 == 4 and j < 5 * cfg.heldout_docs)]
        corpus[lang] = (train, held)
    return corpus


def _document(fk, has_words):
    """One short document: a record (name, job, address, ...) and, where the locale has words, prose."""
    r = fk.random
    fields = {  # faker's plain date() depends on today's date: a fixed range keeps the text fixed
        "job": fk.job,
        "company": fk.company,
        "address": fk.address,
        "phone_number": fk.phone_number,
        "city": fk.city,
        "date": lambda: fk.date_between_dates(
            datetime.date(1950, 1, 1), datetime.date(2020, 12, 31)
        ),
    }
    lines = [fk.name()]
    for field in r.sample(sorted(fields), k=3):
        lines.append(str(fields[field]()).replace("\n", ", "))
    if has_words:
        lines.append(fk.paragraph(nb_sentences=r.randint(2, 5)))
    else:
        lines.append(", ".join(fk.city() for _ in range(r.randint(2, 4))))
    return "\n".join(lines)


def training_stream(corpus):
    """All training documents of all languages, interleaved, each followed by a blank line."""
    import numpy as np

    docs = []
    longest = max(len(t) for t, _ in corpus.values())
    for j in range(longest):
        for lang in sorted(corpus):
            train = corpus[lang][0]
            if j < len(train):
                docs.append(train[j])
    data = "\n\n".join(docs).encode("utf-8")
    return np.frombuffer(data, dtype=np.uint8).copy()


# -- the model (torch) ----------------------------------------------------------------------------


def build_model(cfg):
    import torch
    from torch import nn

    class TinyRWKV52(nn.Module):
        def __init__(self):
            super().__init__()
            C, L, F, V = cfg.n_embd, cfg.n_layer, cfg.n_ffn, cfg.vocab
            self.H, self.N = C // cfg.head_size, cfg.head_size
            self.p = nn.ParameterDict()
            P = lambda t: nn.Parameter(t.float())  # noqa: E731
            g = torch.Generator().manual_seed(cfg.seed)

            def normal(rows, cols, scale):
                return torch.randn(rows, cols, generator=g) * (scale / math.sqrt(cols))

            ramp = torch.arange(C) / C
            self.names = {}
            sd = {
                "emb.weight": torch.rand(V, C, generator=g) * 2e-4 - 1e-4,
                "blocks.0.ln0.weight": torch.ones(C),
                "blocks.0.ln0.bias": torch.zeros(C),
                "ln_out.weight": torch.ones(C),
                "ln_out.bias": torch.zeros(C),
                "head.weight": normal(V, C, 0.5),
            }
            for i in range(L):
                p = f"blocks.{i}."
                depth = i / max(L - 1, 1)  # 0 .. 1
                keep = 1.0 - i / L  # 1 .. 1/L
                for n in ("ln1", "ln2"):
                    sd[p + n + ".weight"], sd[p + n + ".bias"] = torch.ones(C), torch.zeros(C)
                sd[p + "att.time_mix_k"] = (ramp**keep).view(1, 1, C)
                sd[p + "att.time_mix_v"] = (ramp**keep + 0.3 * depth).clamp(max=1).view(1, 1, C)
                sd[p + "att.time_mix_r"] = (ramp ** (0.5 * keep)).view(1, 1, C)
                sd[p + "att.time_mix_g"] = (ramp ** (0.5 * keep)).view(1, 1, C)
                n = torch.arange(C) / (C - 1)
                sd[p + "att.time_decay"] = (-6 + 5 * n ** (0.7 + 1.3 * depth)).view(self.H, self.N)
                zigzag = ((torch.arange(C) + 1) % 3 - 1) * 0.1
                sd[p + "att.time_faaaa"] = (depth * (1 - n) + zigzag).view(self.H, self.N)
                for m in ("receptance", "key", "value", "gate"):
                    sd[p + f"att.{m}.weight"] = normal(C, C, 1.0)
                sd[p + "att.output.weight"] = torch.zeros(C, C)
                sd[p + "att.ln_x.weight"], sd[p + "att.ln_x.bias"] = torch.ones(C), torch.zeros(C)
                sd[p + "ffn.time_mix_k"] = (ramp**keep).view(1, 1, C)
                sd[p + "ffn.time_mix_r"] = (ramp**keep).view(1, 1, C)
                sd[p + "ffn.key.weight"] = normal(F, C, 1.0)
                sd[p + "ffn.receptance.weight"] = torch.zeros(C, C)
                sd[p + "ffn.value.weight"] = torch.zeros(C, F)
            for name, t in sd.items():
                key = name.replace(".", "__")
                self.names[name] = key
                self.p[key] = P(t)

        def w(self, name):
            return self.p[self.names[name]]

        def state_dict_rwkv(self):
            return {name: self.p[key].detach() for name, key in self.names.items()}

        def forward(self, idx):
            """idx (B, T) int64 -> logits (B, T, V); every sequence starts from the zero state."""
            import torch.nn.functional as Fn

            B, T = idx.shape
            C, H, N = cfg.n_embd, self.H, self.N
            w = self.w
            x = Fn.embedding(idx, w("emb.weight"))
            x = Fn.layer_norm(x, (C,), w("blocks.0.ln0.weight"), w("blocks.0.ln0.bias"), 1e-5)
            for i in range(cfg.n_layer):
                p = f"blocks.{i}."
                a = Fn.layer_norm(x, (C,), w(p + "ln1.weight"), w(p + "ln1.bias"), 1e-5)
                prev = Fn.pad(a, (0, 0, 1, -1))  # token shift, zero before t = 0

                def mix(m, a=a, prev=prev, p=p):
                    mu = w(p + "att.time_mix_" + m).view(C)
                    return a * mu + prev * (1 - mu)

                r = mix("r") @ w(p + "att.receptance.weight").T
                k = mix("k") @ w(p + "att.key.weight").T
                v = mix("v") @ w(p + "att.value.weight").T
                gate = Fn.silu(mix("g") @ w(p + "att.gate.weight").T)
                logw = -torch.exp(w(p + "att.time_decay").float())  # log of the decay, (H, N)
                y = wkv_chunked(r, k, v, logw, w(p + "att.time_faaaa"), H, N, cfg.chunk)
                y = Fn.group_norm(
                    y.reshape(B * T, C) / 8,
                    H,
                    w(p + "att.ln_x.weight"),
                    w(p + "att.ln_x.bias"),
                    1e-5,
                ).view(B, T, C)
                x = x + (y * gate) @ w(p + "att.output.weight").T
                b = Fn.layer_norm(x, (C,), w(p + "ln2.weight"), w(p + "ln2.bias"), 1e-5)
                prevb = Fn.pad(b, (0, 0, 1, -1))
                mk, mr = w(p + "ffn.time_mix_k").view(C), w(p + "ffn.time_mix_r").view(C)
                xk, xr = b * mk + prevb * (1 - mk), b * mr + prevb * (1 - mr)
                kk = torch.relu(xk @ w(p + "ffn.key.weight").T) ** 2
                x = x + torch.sigmoid(xr @ w(p + "ffn.receptance.weight").T) * (
                    kk @ w(p + "ffn.value.weight").T
                )
            x = Fn.layer_norm(x, (C,), w("ln_out.weight"), w("ln_out.bias"), 1e-5)
            return x @ w("head.weight").T

    return TinyRWKV52()


def wkv_chunked(r, k, v, logw, u, H, N, chunk):
    """The RWKV-5.2 WKV over (B, T, H*N) inputs from a zero state, in chunks of `chunk` tokens.

    Within chunk c (the recurrence unrolled over the chunk), with S_c the state before it and t, s positions in the chunk:
        y_t     = (r_t * w^t) S_c + sum_{s<t} (r_t * w^(t-1-s) . k_s) v_s + (r_t * u . k_t) v_t
        S_{c+1} = w^L S_c + sum_s (k_s * w^(L-1-s))^T v_s
    All powers of w are non-negative (exp of log w times a count >= 0): nothing overflows.
    Everything but the short scan over chunk states runs batched over all chunks at once.
    """
    import torch

    B, T0, _ = r.shape
    L = chunk
    if T0 % L:  # zeros after the end: outputs are causal, so the first T0 do not change
        r, k, v = (torch.nn.functional.pad(z, (0, 0, 0, L - T0 % L)) for z in (r, k, v))
    T = r.shape[1]
    nc = T // L
    r, k, v = (z.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4) for z in (r, k, v))  # (B, H, nc, L, N)
    t = torch.arange(L, dtype=torch.float32)
    lower = t.view(L, 1) - 1 - t.view(1, L)  # t - 1 - s
    lw = logw.view(H, 1, 1, N)
    # D[h, t, s, i] = w_i^(t-1-s) for s < t, else 0
    D = torch.exp(lower.clamp(min=0).view(1, L, L, 1) * lw) * (lower >= 0).float().view(1, L, L, 1)
    w_t = torch.exp(t.view(1, L, 1) * logw.view(H, 1, N)).view(1, H, 1, L, N)  # w^t
    w_tail = torch.exp((L - 1 - t).view(1, L, 1) * logw.view(H, 1, N)).view(1, H, 1, L, N)
    w_all = torch.exp(L * logw).view(1, H, N, 1)  # w^L on the key index
    # intra-chunk: A[t, s] = sum_i r_t[i] D[t, s, i] k_s[i], and u on the diagonal
    A = ((r.unsqueeze(-2) * D.view(1, H, 1, L, L, N)) * k.unsqueeze(-3)).sum(-1)  # (B, H, nc, L, L)
    diag = (r * u.view(1, H, 1, 1, N) * k).sum(-1, keepdim=True)  # (B, H, nc, L, 1)
    y = A @ v + diag * v
    # inter-chunk: the state before each chunk, from each chunk's contribution
    contrib = (k * w_tail).transpose(-1, -2) @ v  # (B, H, nc, N, N)
    states = [torch.zeros(B, H, N, N, dtype=r.dtype)]
    for c in range(nc - 1):
        states.append(w_all * states[-1] + contrib[:, :, c])
    S = torch.stack(states, dim=2)  # (B, H, nc, N, N)
    y = y + (r * w_t) @ S
    return y.permute(0, 2, 3, 1, 4).reshape(B, T, H * N)[:, :T0]


# -- training and evaluation ----------------------------------------------------------------------


def bits_per_byte(model, docs, max_len=2048):
    """Mean bits per predicted byte over documents, each scored from the zero state."""
    import torch
    import torch.nn.functional as Fn

    nll, n = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor(list(d.encode("utf-8")[:max_len]), dtype=torch.long).view(1, -1)
            if ids.shape[1] < 2:
                continue
            logits = model(ids[:, :-1])
            nll += Fn.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    return nll / n / math.log(2)


def sample_corpus():
    docs = {}
    with open(SAMPLE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                docs.setdefault(d["lang"], []).append(d["text"])
    return docs


def train(cfg, out_path, log=print):
    import numpy as np
    import torch
    import torch.nn.functional as Fn

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    corpus = make_corpus(cfg)
    data = training_stream(corpus)
    digest = hashlib.sha256(data.tobytes()).hexdigest()
    log(
        f"training text: {len(data):,} bytes in {sum(len(t) for t, _ in corpus.values())} documents, "
        f"{len(corpus)} languages, sha256 {digest[:16]} ({time.perf_counter() - t_start:.1f} s to generate)"
    )
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"model: {cfg.n_layer} layers x {cfg.n_embd}, {cfg.n_embd // cfg.head_size} heads of {cfg.head_size}, "
        f"ffn {cfg.n_ffn}, {n_params:,} parameters"
    )
    decay = {p for name, p in model.p.items() if p.ndim == 2 and "time_" not in name}
    opt = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if p in decay], "weight_decay": 0.0},
            {"params": [p for p in model.parameters() if p not in decay], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        eps=1e-8,
    )
    rng = np.random.default_rng(cfg.seed)
    held_probe = [d for lang in sorted(corpus) for d in corpus[lang][1][:4]]
    curve = []
    loss_avg, t0 = None, time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if step <= cfg.warmup:
            lr = cfg.lr * step / cfg.warmup
        else:
            f = (step - cfg.warmup) / (cfg.steps - cfg.warmup)
            lr = cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * f))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(data) - cfg.ctx - 1, size=cfg.batch)
        xy = torch.from_numpy(
            np.stack([data[s : s + cfg.ctx + 1] for s in starts]).astype(np.int64)
        )
        logits = model(xy[:, :-1])
        loss = Fn.cross_entropy(logits.reshape(-1, cfg.vocab), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 100 == 0 or step == cfg.steps:
            held = bits_per_byte(model, held_probe)
            curve.append((step, loss_avg / math.log(2), held))
            log(
                f"step {step:5d}  lr {lr:.2e}  train {loss_avg / math.log(2):.3f} bits/byte  "
                f"held-out {held:.3f} bits/byte  ({time.perf_counter() - t0:.0f} s)"
            )
    train_seconds = time.perf_counter() - t0

    per_lang = {lang: bits_per_byte(model, corpus[lang][1]) for lang in sorted(corpus)}
    sample = {lang: bits_per_byte(model, docs) for lang, docs in sorted(sample_corpus().items())}
    save(
        model,
        cfg,
        out_path,
        {
            "trained_by": "tools/train_tiny.py",
            "seed": str(cfg.seed),
            "steps": str(cfg.steps),
            "text": f"faker {FAKER_VERSION} locale data, {len(corpus)} languages, sha256 {digest}",
            "torch": torch.__version__,
            "gn_eps": repr(64e-5),
        },
    )
    return {
        "curve": curve,
        "heldout": per_lang,
        "sample": sample,
        "params": n_params,
        "train_seconds": train_seconds,
        "text_bytes": len(data),
        "text_sha256": digest,
    }


def save(model, cfg, path, metadata):
    """RWKV-LM names and shapes, float32, written with rwkv5's own safetensors writer."""
    from rwkv5.formats.safetensors import write_safetensors

    tensors = {name: t.numpy().copy() for name, t in model.state_dict_rwkv().items()}
    write_safetensors(path, tensors, metadata=metadata)


def check_against_rwkv5(model, path, text="The weather today is sunny. Der Zug nach Hamburg."):
    """max |logit(rwkv5.load(path)) - logit(torch)|, parallel and recurrent modes."""
    import numpy as np
    import torch

    import rwkv5

    ids = list(text.encode("utf-8"))
    with torch.no_grad():
        want = model(torch.tensor(ids).view(1, -1))[0].numpy()
    m = rwkv5.load(path)
    got = {
        mode: m.forward(ids, mode=mode, full_output=True)[0] for mode in ("parallel", "recurrent")
    }
    return {mode: float(np.abs(g - want).max()) for mode, g in got.items()}, float(
        np.abs(want).max()
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default=str(OUT), help="output safetensors file (default: the shipped one)"
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="train into a temporary file and compare it with --out instead of writing --out",
    )
    ap.add_argument(
        "--steps", type=int, default=Config.steps, help="optimizer steps (default %(default)s)"
    )
    ap.add_argument(
        "--json", help="also write the training curve and bits/byte figures to this JSON file"
    )
    args = ap.parse_args(argv)
    cfg = Config()
    cfg.steps = args.steps
    target = pathlib.Path(args.out)
    tmpdir = tempfile.mkdtemp(prefix="rwkv5-train-") if args.check else None
    path = pathlib.Path(tmpdir) / target.name if args.check else target
    result = train(cfg, path)

    import torch  # noqa: F401  (already imported by train)
    from rwkv5.formats.safetensors import read_safetensors

    model = build_model(cfg)
    sd = read_safetensors(path)[0]
    with torch.no_grad():
        for name, key in model.names.items():
            model.p[key].copy_(torch.from_numpy(sd[name].copy()))
    diffs, largest = check_against_rwkv5(model, path)
    result["rwkv5_vs_torch"] = diffs

    print("\nheld-out bits/byte per language (faker text not trained on):")
    for lang, b in result["heldout"].items():
        print(f"  {lang:6s} {b:.3f}")
    print("sample corpus (natural prose, never trained on) bits/byte per language:")
    for lang, b in result["sample"].items():
        print(f"  {lang:6s} {b:.3f}")
    print(
        f"rwkv5.load vs this torch forward: max |dlogit| parallel {diffs['parallel']:.2e}, "
        f"recurrent {diffs['recurrent']:.2e} (largest |logit| {largest:.1f})"
    )
    print(f"{path}: {path.stat().st_size:,} bytes, trained in {result['train_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.check:
        same = target.is_file() and target.read_bytes() == path.read_bytes()
        if same:
            print(f"check: identical to {target}, bit for bit")
        else:
            import numpy as np

            a, b = read_safetensors(target)[0], read_safetensors(path)[0]
            worst = max(
                float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
                for k in a
            )
            print(f"check: differs from {target}: max |dweight| {worst:.3e}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
