"""Data preparation throughput, side by side (docs/performance.md).

run(quick) -> {"title", "columns", "rows", "notes"}; every ratio is measured in the same run:

* the tokenizer's own multi-thread batch encode (wt_encode_batch) on the same document texts —
  the ceiling for a pipeline that must also read, parse, validate, count and write;
* `rwkv5-prep build` end to end (a subprocess: Python start, planning, tasks, merge, SHA-256,
  manifest) on the .jsonl and on the same data as .jsonl.zst, .jsonl.gz (and, in full mode,
  .jsonl.xz and .jsonl.bz2: slow to write and to read) and as .parquet (pyarrow, row groups of 8192
  rows, the id column too), with 1 and 2 worker threads; its peak RSS from wait4(); and once more
  on a .parquet of the same documents four times over (peak RSS must not grow with the input);
* RWKV-LM's make_data.py approach (json.loads + rwkv's Python TRIE_TOKENIZER + a Python binidx
  writer) on a slice of the same file.

Quick mode: a ~40 MB corpus. Full mode: a >= 1 GB corpus generated under /tmp and deleted after.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

SAMPLES = {
    "en": "The quick brown fox jumps over the lazy dog while the committee reviews its annual report on rivers.",
    "fr": "Voix ambiguë d'un cœur qui, au zéphyr, préfère les jattes de kiwis et la forêt après la pluie.",
    "de": "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg, sagte die Lehrerin am Montag.",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю, сказал он и открыл окно в сад.",
    "el": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία και γράφω ένα μακρύ γράμμα στη θάλασσα.",
    "ar": "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق في المكتبة",
    "he": "דג סקרן שט בים מאוכזב ולפתע מצא חברה חדשה ליד הספינה הישנה",
    "hi": "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम",
    "th": "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน จงฝ่าฟันพัฒนาวิชาการ",
    "zh": "我能吞下玻璃而不伤身体。天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。寒来暑往，秋收冬藏。",
    "ja": "いろはにほへとちりぬるを わかよたれそつねならむ うゐのおくやまけふこえて あさきゆめみしゑひもせす",
    "ko": "다람쥐 헌 쳇바퀴에 타고파. 키스의 고유조건은 입술끼리 만나야 하고 특별한 기술은 필요치 않다.",
    "code": "def f(x):\n    return {\"a\": [1, 2, 3], 'b': x * 2}  # comment\n\nfor i in range(10):\n    print(i)\n",
}


def gen_corpus(path: str, target_bytes: int, seed: int = 0) -> int:
    """Multilingual JSONL: documents of 50..3000 words drawn from per-language samples."""
    rng = random.Random(seed)
    vocab = {k: v.replace("\n", " \n ").split(" ") for k, v in SAMPLES.items()}
    keys = list(SAMPLES)
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        buf = []
        while total < target_bytes:
            lang = rng.choice(keys)
            words = vocab[lang]
            n = rng.randint(50, 3000)
            start = rng.randrange(len(words))
            text = " ".join(
                words[(start + i * 7 + rng.randrange(3)) % len(words)] for i in range(n)
            )
            line = json.dumps({"id": total, "text": text, "lang": lang}, ensure_ascii=False) + "\n"
            buf.append(line)
            total += len(line.encode("utf-8"))
            if len(buf) >= 1000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    return total


def jsonl_to_parquet(src: str, dst: str, rows_per_group: int = 8192) -> None:
    """The same documents, in the same order, as Parquet (id, text, lang), written a row group at a
    time so that the conversion never holds the corpus in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("lang", pa.string())])
    with open(src, encoding="utf-8") as f, pq.ParquetWriter(dst, schema, compression="zstd") as w:
        rows = []
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == rows_per_group:
                w.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            w.write_table(pa.Table.from_pylist(rows, schema=schema))


def gen_short_corpus(path: str, long_path: str, target_bytes: int, seed: int = 1) -> int:
    """Short documents (chat turns, sentences): the texts of the long-document corpus at long_path
    cut into pieces of 100..200 bytes of UTF-8 (at character boundaries), so that short and long
    corpora hold the same text (languages, bytes per token) and differ only in document length."""
    rng = random.Random(seed)
    total = 0
    with open(long_path, encoding="utf-8") as fi, open(path, "w", encoding="utf-8") as f:
        buf = []
        for line in fi:
            rec = json.loads(line)
            data = rec["text"].encode("utf-8")
            a = 0
            while a < len(data) and total < target_bytes:
                b = min(len(data), a + rng.randint(100, 200))
                while b < len(data) and (data[b] & 0xC0) == 0x80:  # not inside a character
                    b += 1
                text = data[a:b].decode("utf-8")
                out = (
                    json.dumps({"id": total, "text": text, "lang": rec["lang"]}, ensure_ascii=False)
                    + "\n"
                )
                buf.append(out)
                total += len(out.encode("utf-8"))
                a = b
            if len(buf) >= 5000:
                f.write("".join(buf))
                buf = []
            if total >= target_bytes:
                break
        f.write("".join(buf))
    return total


def text_bytes_of(path: str) -> int:
    """Bytes of UTF-8 text in the "text" fields of a .jsonl file."""
    with open(path, "rb") as f:
        return sum(len(json.loads(line)["text"].encode("utf-8")) for line in f)


_CHILD = """
import sys
from rwkv5.dataprep.__main__ import main
rc = main(sys.argv[1:])
# VmHWM belongs to the process's own address space (new at exec), unlike ru_maxrss, which Linux
# carries over from the parent at fork
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print("VMHWM_KB", hwm[0].split()[1] if hwm else -1, file=sys.stderr)
sys.exit(rc)
"""


def run_build(inputs, out, workers, extra=()):
    """rwkv5-prep build in a new process: (seconds, CPU seconds, peak RSS bytes or None)."""
    cmd = [
        sys.executable,
        "-c",
        _CHILD,
        "build",
        *inputs,
        "--out",
        out,
        "--workers",
        str(workers),
        "--lang-field",
        "lang",
        "--no-progress",
        *extra,
    ]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stderr.close()
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"build failed: {err}")
    kb = [int(l.split()[1]) for l in err.splitlines() if l.startswith("VMHWM_KB")]
    return dt, ru.ru_utime + ru.ru_stime, (kb[0] * 1024 if kb and kb[0] > 0 else None)


def cpu_seconds():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def texts_of(path: str, limit_bytes: int):
    out, n = [], 0
    with open(path, "rb") as f:
        for line in f:
            t = json.loads(line)["text"].encode("utf-8")
            out.append(t)
            n += len(line)
            if n >= limit_bytes:
                break
    return out, n


def make_data_approach(path: str, out: str, limit_bytes: int):
    """RWKV-LM make_data.py's per-line work: json.loads, TRIE_TOKENIZER.encode, append 0, write
    uint16 to .bin, sizes to a binidx .idx (its round-trip decode check left out, in its favour)."""
    import importlib.util

    import numpy as np
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    spec = importlib.util.find_spec("rwkv")
    tok = TRIE_TOKENIZER(
        os.path.join(list(spec.submodule_search_locations)[0], "rwkv_vocab_v20230424.txt")
    )
    lines, n = [], 0
    with open(path, "rb") as f:
        for line in f:
            lines.append(line)
            n += len(line)
            if n >= limit_bytes:
                break
    t0 = time.perf_counter()
    sizes = []
    with open(out + ".bin", "wb") as fb:
        for line in lines:
            ids = tok.encode(json.loads(line)["text"]) + [0]
            fb.write(np.array(ids, dtype=np.uint16).tobytes())
            sizes.append(len(ids))
    sz = np.array(sizes, dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(sz[:-1] * 2)]).astype(np.int64)
    with open(out + ".idx", "wb") as fi:
        fi.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8))
        fi.write(struct.pack("<Q", len(sz)) + struct.pack("<Q", len(sz) + 1))
        fi.write(
            sz.astype(np.int32).tobytes()
            + ptr.tobytes()
            + np.arange(len(sz) + 1, dtype=np.int64).tobytes()
        )
    return time.perf_counter() - t0, n


def _loopback_s3():
    """moto's S3 server in this process on 127.0.0.1 (the test server of tests/s3server.py), and
    the environment that points the build's child processes at it (and nowhere else); None when
    moto or s3fs is not installed."""
    try:
        import boto3
        import s3fs  # noqa: F401 (the builds need it)
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    import logging
    import socket

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": "127.0.0.1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    client.create_bucket(Bucket="bench")
    return server, client, env


def s3_rows(inputs: dict, tmp: str, rows: list, notes: list) -> None:
    """Local vs s3:// on a loopback server: the same files built from disk and from the server,
    alternating, best of 2 each; input MB/s end to end and of the tasks alone."""
    s3 = _loopback_s3()
    if s3 is None:
        notes.append(
            "moto or s3fs not installed: the s3:// rows are skipped (pip install 'rwkv5[s3]' 'moto[server]')"
        )
        return
    server, client, env = s3
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for label, path in inputs.items():
            key = os.path.basename(path)
            client.upload_file(path, "bench", key)
            n = os.path.getsize(path)
            for th in (1, 2):
                best = {}
                for _ in range(2):
                    for where, inp in (("local", path), ("s3", f"s3://bench/{key}")):
                        out = os.path.join(tmp, f"out_s3cmp_{where}")
                        dt, _cpu, _rss = run_build([inp], out, th)
                        with open(out + ".manifest.json") as f:
                            tk = json.load(f)["timing"]["tokenize_seconds"]
                        e2e, tasks = n / dt / 1e6, n / tk / 1e6
                        old = best.get(where, (0, 0))
                        best[where] = (max(old[0], e2e), max(old[1], tasks))
                        for ext in (".bin", ".idx", ".manifest.json"):
                            if os.path.exists(out + ext):
                                os.remove(out + ext)
                for where in ("local", "s3"):
                    e2e, tasks = best[where]
                    what = "from disk" if where == "local" else "from s3:// (moto on 127.0.0.1)"
                    rows.append(
                        [
                            f"rwkv5-prep build .{label} {what}, {n / 1e6:.0f} MB",
                            th,
                            round(e2e, 1),
                            None,
                            None,
                            None,
                            None,
                        ]
                    )
                    rows.append(
                        [
                            f"  its tasks alone ({where}; s3 / local = {tasks / best['local'][1]:.2f})",
                            th,
                            round(tasks, 1),
                            None,
                            None,
                            None,
                            None,
                        ]
                    )
            client.delete_object(Bucket="bench", Key=key)
        notes.append(
            "s3:// rows: the same file read from disk and from moto's S3 server on loopback, alternating, "
            "best of 2; target s3 / local >= 0.7. What bounds the s3 path here: moto is a Python "
            "(werkzeug) server in the benchmark process, sharing the 2 cores with the build; the build "
            "reads 8 MiB ranged GETs with 2 blocks of read-ahead on a fetch thread and pipes them to the "
            "C reader (one extra copy); a real store adds its latency per GET, which the read-ahead hides "
            "while a GET takes less time than tokenizing a block; end to end also pays the import of s3fs/botocore (about 1 s) and the planning requests, which dominate small files"
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def run(quick: bool = False) -> dict:
    from rwkv5.dataprep import _dataprep
    from rwkv5.dataprep.build import default_vocab_path, load_tokenizer

    size = 40_000_000 if quick else 1_100_000_000
    tmp = tempfile.mkdtemp(prefix="rwkv5_bench_dataprep_", dir="/tmp")
    rows, notes = [], []
    try:
        src = os.path.join(tmp, "corpus.jsonl")
        t0 = time.perf_counter()
        nbytes = gen_corpus(src, size)
        notes.append(
            f"corpus: {nbytes / 1e6:.0f} MB multilingual JSONL ({len(SAMPLES)} languages incl. code), "
            f"generated in {time.perf_counter() - t0:.0f} s under {tmp} (deleted after)"
        )
        zsrc = None
        try:
            import zstandard

            zsrc = os.path.join(tmp, "corpus.jsonl.zst")
            with open(src, "rb") as fi, open(zsrc, "wb") as fo:
                zstandard.ZstdCompressor(level=3, write_checksum=True).copy_stream(fi, fo)
        except ImportError:
            notes.append("zstandard not installed: .jsonl.zst rows skipped")
        psrc = None
        try:
            psrc = os.path.join(tmp, "corpus.parquet")
            jsonl_to_parquet(src, psrc)
        except ImportError:
            psrc = None
            notes.append(
                "pyarrow not installed: .parquet rows skipped (pip install 'rwkv5[parquet]')"
            )
        packed = {"jsonl": src, "jsonl.zst": zsrc}
        # the other codecs from the standard library, at their command-line tools' default levels
        import bz2
        import gzip
        import lzma

        codecs = [("jsonl.gz", lambda f: gzip.open(f, "wb", compresslevel=6))]
        if not quick:
            codecs += [
                ("jsonl.xz", lambda f: lzma.open(f, "wb", preset=6)),
                ("jsonl.bz2", lambda f: bz2.open(f, "wb", compresslevel=9)),
            ]
        for label, opener in codecs:
            packed[label] = os.path.join(tmp, "corpus." + label)
            with open(src, "rb") as fi, opener(packed[label]) as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
        notes.append(
            "compressed inputs: "
            + ", ".join(
                f".{k} {os.path.getsize(v) / 1e6:.1f} MB"
                for k, v in packed.items()
                if v and k != "jsonl"
            )
            + " (the generated corpus repeats a few sentences: it compresses far better than real text, "
            "which flatters the decoders; docs/dataprep.md measures them on text of real entropy)"
        )

        # text bytes of the whole corpus (tokens are made of these bytes; JSON adds quotes/keys)
        tok = load_tokenizer(default_vocab_path()).capsule
        slice_bytes = min(nbytes, 200_000_000)
        texts, sl = texts_of(src, slice_bytes)
        text_bytes_slice = sum(map(len, texts))
        text_ratio = text_bytes_slice / sl  # text bytes per input byte
        batch, batch_cpu = {}, {}

        def measure_batch(th):
            """best of 2 wall-clock MB/s, and CPU seconds per MB of text (less sensitive to other load)"""
            best, cpu = 0.0, float("inf")
            for _ in range(2):
                c0, t0 = cpu_seconds(), time.perf_counter()
                _dataprep.encode_batch_count(tok, texts, th)
                best = max(best, text_bytes_slice / (time.perf_counter() - t0) / 1e6)
                cpu = min(cpu, (cpu_seconds() - c0) / (text_bytes_slice / 1e6))
            return best, cpu

        for th in (1, 2):
            batch[th], batch_cpu[th] = measure_batch(th)
            rows.append(
                [
                    "tokenizer batch encode (C wt_encode_batch, texts in memory)",
                    th,
                    None,
                    round(batch[th], 1),
                    1.0,
                    None,
                    1.0,
                ]
            )
        try:
            from rwkv5.tokenizer import WorldTokenizer

            wt = WorldTokenizer()
            strs = [t.decode("utf-8") for t in texts]
            for th in (1, 2):
                for as_numpy, what in (
                    (False, "lists out"),
                    (True, "as_numpy=True: ragged ids + offsets out"),
                ):
                    t0 = time.perf_counter()
                    wt.encode_batch(strs, num_threads=th, as_numpy=as_numpy)
                    mb = text_bytes_slice / (time.perf_counter() - t0) / 1e6
                    rows.append(
                        [
                            f"WorldTokenizer.encode_batch (public API: str in, {what})",
                            th,
                            None,
                            round(mb, 1),
                            round(mb / batch[th], 3),
                            None,
                            None,
                        ]
                    )
            del strs
        except ImportError:
            notes.append("rwkv5.tokenizer.WorldTokenizer not importable: its row is skipped")
        ours = {}
        packed["parquet"] = psrc
        for label, inp in packed.items():
            if inp is None:
                continue
            for th in (1, 2):
                # the reference is measured again right before each build: the machine is shared
                b_mb, b_cpu = measure_batch(th)
                batch[th], batch_cpu[th] = max(batch[th], b_mb), min(batch_cpu[th], b_cpu)
                out = os.path.join(tmp, f"out_{label.replace('.', '_')}_{th}")
                dt, cpu, rss = run_build([inp], out, th)
                # input MB/s counts the bytes of the .jsonl for every container (the same documents)
                mb_in = nbytes / dt / 1e6
                mb_text = mb_in * text_ratio
                ours[(label, th)] = mb_text
                cpu_per_mb = cpu / (nbytes * text_ratio / 1e6)
                rows.append(
                    [
                        f"rwkv5-prep build .{label} -> binidx (end to end, a new process)",
                        th,
                        round(mb_in, 1),
                        round(mb_text, 1),
                        round(mb_text / b_mb, 3),
                        round(rss / 2**20) if rss else None,
                        round(b_cpu / cpu_per_mb, 3),
                    ]
                )
                with open(out + ".manifest.json") as f:
                    tk = json.load(f)["timing"]["tokenize_seconds"]
                rows.append(
                    [
                        "  its tasks alone (read, parse, validate, count, tokenize, write parts)",
                        th,
                        round(nbytes / tk / 1e6, 1),
                        round(nbytes / tk / 1e6 * text_ratio, 1),
                        round(nbytes / tk / 1e6 * text_ratio / b_mb, 3),
                        None,
                        None,
                    ]
                )
                for ext in (".bin", ".idx", ".manifest.json"):
                    if os.path.exists(out + ext):
                        os.remove(out + ext)

        for (label, th), mb in sorted(ours.items()):
            if label != "jsonl" and ("jsonl", th) in ours:
                notes.append(
                    f".{label} / .jsonl text MB/s with {th} worker(s): {mb / ours[('jsonl', th)]:.2f}"
                    + {"jsonl.gz": " (target >= 0.6)", "parquet": " (target >= 0.8)"}.get(label, "")
                )
        if psrc:
            notes.append(
                f"the .parquet input is {os.path.getsize(psrc) / 1e6:.0f} MB (zstd, 8192-row groups); "
                f"its peak RSS should stay flat in the input size (target < 1 GiB for a 2 GB file): "
                f"a task holds one data page of the text column (pyarrow's writer closes a page every "
                f"1024 rows at most) and ~4 MiB batches"
            )
            # the same documents four times over: peak RSS must not follow the input's size
            p4 = os.path.join(tmp, "corpus-x4.parquet")
            import pyarrow.parquet as pq

            with pq.ParquetWriter(p4, pq.read_schema(psrc), compression="zstd") as w:
                for _ in range(4):
                    pf = pq.ParquetFile(psrc)
                    for g in range(pf.num_row_groups):
                        w.write_table(pf.read_row_group(g))
            out = os.path.join(tmp, "out_parquet_x4")
            dt, _cpu, rss = run_build([p4], out, 2)
            rows.append(
                [
                    "rwkv5-prep build .parquet, the same documents 4 times (peak RSS vs input size)",
                    2,
                    round(4 * nbytes / dt / 1e6, 1),
                    None,
                    None,
                    round(rss / 2**20) if rss else None,
                    None,
                ]
            )
            for ext in (".bin", ".idx", ".manifest.json"):
                if os.path.exists(out + ext):
                    os.remove(out + ext)
            os.remove(p4)

        # local vs s3:// on a loopback server (issue 16): a cut of the corpus, and the Parquet file
        cut = os.path.join(tmp, "s3cut.jsonl")
        with open(src, "rb") as fi, open(cut, "wb") as fo:
            left = 40_000_000 if quick else 200_000_000
            for line in fi:
                fo.write(line)
                left -= len(line)
                if left <= 0:
                    break
        s3_rows({"jsonl": cut, **({"parquet": psrc} if psrc and quick else {})}, tmp, rows, notes)
        os.remove(cut)

        # short documents (100..200 bytes of text each) against the long-document corpus, measured
        # in turns in this run: the per-document cost of the build shows as the ratio of text MB/s
        short = os.path.join(tmp, "short.jsonl")
        gen_short_corpus(short, src, 20_000_000 if quick else 200_000_000)
        short_text = text_bytes_of(short)
        long_cut = os.path.join(tmp, "long_cut.jsonl")
        with (
            open(src, "rb") as fi,
            open(long_cut, "wb") as fo,
        ):  # the long corpus, cut to the same text
            n = 0
            for line in fi:
                fo.write(line)
                n += len(json.loads(line)["text"].encode("utf-8"))
                if n >= short_text:
                    break
        long_text = text_bytes_of(long_cut)
        n_short = sum(1 for _ in open(short, "rb"))
        for th in (1, 2):
            best = {"short": 0.0, "long": 0.0}
            for _ in range(2):
                for what, inp, tb in (("long", long_cut, long_text), ("short", short, short_text)):
                    out = os.path.join(tmp, f"out_{what}_{th}")
                    dt, _cpu, _rss = run_build([inp], out, th)
                    with open(out + ".manifest.json") as f:
                        tk = json.load(f)["timing"]["tokenize_seconds"]
                    best[what] = max(best[what], tb / tk / 1e6)
                    for ext in (".bin", ".idx", ".manifest.json"):
                        if os.path.exists(out + ext):
                            os.remove(out + ext)
            rows.append(
                [
                    "  tasks on long documents (the start of the .jsonl above)",
                    th,
                    None,
                    round(best["long"], 1),
                    None,
                    None,
                    None,
                ]
            )
            rows.append(
                [
                    f"  tasks on short documents (the same text cut into {n_short} docs of 100-200 bytes)",
                    th,
                    None,
                    round(best["short"], 1),
                    round(best["short"] / best["long"], 3),
                    None,
                    None,
                ]
            )
        notes.append(
            "short-document rows: text MB/s of the build's tasks (manifest tokenize_seconds, best of 2, "
            "long and short runs alternating); the ratio column of the short row is short / long "
            "(target >= 0.7)"
        )

        md_bytes = 2_000_000 if quick else 8_000_000
        dt, n = make_data_approach(src, os.path.join(tmp, "md"), md_bytes)
        md = n / dt / 1e6
        rows.append(
            [
                f"make_data.py approach (TRIE_TOKENIZER + Python binidx, first {n / 1e6:.0f} MB)",
                1,
                round(md, 2),
                round(md * text_ratio, 2),
                None,
                None,
                None,
            ]
        )
        best_ours = max(ours.values()) / text_ratio if ours else 0
        notes.append(
            f"rwkv5-prep vs make_data approach: {best_ours / md:.0f}x (input MB/s, best configuration)"
        )
        notes.append(
            "end to end includes ~0.25 s of fixed cost (interpreter and NumPy start, vocab load, "
            "SHA-256 of parts and outputs, fsync of the outputs), which dominates small corpora"
        )
        notes.append(
            "ratio = text MB/s / the C batch encode's text MB/s with the same number of threads "
            "(the same wt_encode_batch that WorldTokenizer.encode_batch calls, without the Python "
            "list conversion); "
            "targets: >= 0.8, >= 20x make_data, peak RSS < 1024 MiB"
        )
        notes.append(
            f"text bytes are {100 * text_ratio:.1f}% of the input bytes (JSON keys, quotes, escapes)"
        )
        notes.append(
            "CPU-time ratio = the batch encode's CPU seconds per MB of text / the build's (user+sys of "
            "the whole process): the share of the build's CPU that is tokenization, robust to other "
            "load on a shared machine; the wall-clock ratio uses the batch encode measured right "
            "before each build"
        )
        notes.append(
            "the machine has 2 cores: with 2 workers the reader/writer thread shares them with the "
            "tokenizer threads, while encode_batch has them to itself"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "title": "data preparation: input MB/s, end to end vs the tokenizer's batch encode and make_data",
        "columns": [
            "measurement",
            "threads",
            "input MB/s",
            "text MB/s",
            "ratio to encode_batch",
            "peak RSS MiB",
            "CPU-time ratio",
        ],
        "rows": rows,
        "notes": notes,
    }


if __name__ == "__main__":
    r = run(quick="--quick" in sys.argv)
    print(json.dumps(r, indent=1))
