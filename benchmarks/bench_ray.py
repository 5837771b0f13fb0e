"""Data-prep on Ray vs the local engine, on one generated multilingual JSONL corpus.

    python benchmarks/bench_ray.py [--quick] [--json OUT.json]

Rows: `--engine local` (tasks one after another in this process, 1 and 2 tokenizer threads per
task), a ProcessPoolExecutor of 2 processes, and Ray with 1 and 2 local worker CPUs (one tokenizer
thread per task). Every run must write byte-identical outputs (checked: SHA-256 of the .bin/.idx
and the manifest without its timing). Ray's fixed costs are measured separately: `ray.init` of a
fresh local instance, the first build (worker processes start on demand) and the round trip of an
empty remote task.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the committee debates the budget.",
    "Voix ambiguë d'un cœur qui, au zéphyr, préfère les jattes de kiwis et le café noir.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю, сказал учитель ученикам.",
    "我能吞下玻璃而不伤身体。天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。",
    "いろはにほへとちりぬるを わかよたれそつねならむ うゐのおくやまけふこえて",
    "다람쥐 헌 쳇바퀴에 타고파. 키스의 고유조건은 입술끼리 만나야 하고 특별한 기술은 필요치 않다.",
    "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق",
    "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम",
    "def f(x):\n    return [i * i for i in range(x) if i % 3 == 0]  # code, too\n",
]


def make_corpus(folder: str, n_files: int, mb_per_file: float, seed: int = 0) -> int:
    """n_files JSONL files of about mb_per_file MB of mixed-language documents; returns total bytes."""
    rng = random.Random(seed)
    total = 0
    for fi in range(n_files):
        path = os.path.join(folder, f"corpus-{fi:02d}.jsonl")
        target = int(mb_per_file * 1e6)
        with open(path, "w", encoding="utf-8") as f:
            size = 0
            while size < target:
                text = " ".join(rng.choice(TEXTS) for _ in range(rng.randint(2, 30)))
                line = json.dumps({"text": text, "lang": "mixed"}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
        total += os.path.getsize(path)
    return total


def _digest(prefix: str) -> str:
    h = hashlib.sha256()
    for ext in (".bin", ".idx"):
        with open(prefix + ext, "rb") as f:
            h.update(f.read())
    with open(prefix + ".manifest.json", encoding="utf-8") as f:
        m = json.load(f)
    m.pop("timing", None)
    h.update(json.dumps(m, sort_keys=True).encode())
    return h.hexdigest()


def _build_once(corpus: str, out_dir: str, name: str, task_size: int, **kw):
    from rwkv5.dataprep import build

    prefix = os.path.join(out_dir, name)
    t0 = time.perf_counter()
    m = build([corpus], prefix, task_size=task_size, log=lambda s: None, **kw)
    dt = time.perf_counter() - t0
    digest = _digest(prefix)
    for ext in (".bin", ".idx", ".manifest.json"):
        os.remove(prefix + ext)
    return dt, m, digest


def run(quick: bool = False) -> dict:
    import ray
    from rwkv5.dataprep.build import (
        DEFAULTS,
        default_vocab_path,
        expand_inputs,
        load_tokenizer,
        plan_tasks,
    )
    from rwkv5.dataprep.engines import RayExecutor

    n_files, mb = (4, 1.0) if quick else (8, 8.0)
    task_size = (256 << 10) if quick else (1 << 20)
    reps = 1 if quick else 3
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    rows, digests, notes = [], {}, []
    try:
        corpus = os.path.join(tmp, "corpus")
        os.makedirs(corpus)
        total = make_corpus(corpus, n_files, mb)
        n_tasks = len(plan_tasks(expand_inputs([corpus]), {**DEFAULTS, "task_size": task_size}))
        out = os.path.join(tmp, "out")
        os.makedirs(out)

        def row(engine, workers, t, extra=""):
            task_s, total_s = t
            rows.append(
                [
                    engine,
                    workers,
                    n_tasks,
                    round(total / 1e6, 1),
                    round(task_s, 3),
                    round(n_tasks / task_s, 1),
                    round(total / 1e6 / task_s, 1),
                    round(total_s, 3),
                    extra,
                ]
            )

        def best(label, **kw):
            times = []
            for _ in range(reps):
                dt, m, dg = _build_once(corpus, out, "o", task_size, **kw)
                times.append((m["timing"]["tokenize_seconds"], dt))
                digests[label] = dg
            return min(times), m

        t0 = time.perf_counter()
        load_tokenizer(
            default_vocab_path()
        )  # each process loads the vocab once; not part of the rate
        t_vocab = time.perf_counter() - t0
        dt, m = best("local-1", workers=1)
        row("local", "1 thread", dt)
        tokens = m["totals"]["tokens"]
        dt, _ = best("local-2", workers=2)
        row("local", "2 threads", dt)
        with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
            _build_once(corpus, out, "o", task_size, executor=ex, workers=1)  # start the processes
            dt, _ = best("pool-2", executor=ex, workers=1)
        row("process pool", "2 processes", dt)

        for ncpu in (1, 2):
            t0 = time.perf_counter()
            ray.init(
                address="local",
                num_cpus=ncpu,
                include_dashboard=False,
                object_store_memory=100 << 20,
                logging_level="ERROR",
                log_to_driver=False,
            )
            t_init = time.perf_counter() - t0
            try:
                ex = RayExecutor(num_cpus=1)
                first, _, digests[f"ray-{ncpu}-first"] = _build_once(
                    corpus, out, "o", task_size, executor=ex, workers=1
                )
                dt, _ = best(f"ray-{ncpu}", executor=ex, workers=1)
                row(
                    "ray",
                    f"{ncpu} worker{'s' if ncpu > 1 else ''}",
                    dt,
                    f"ray.init {t_init:.2f} s; first build {first:.2f} s",
                )
                if ncpu == 2:
                    noop = ray.remote(lambda: None)
                    ray.get([noop.remote() for _ in range(20)])
                    k = 200 if quick else 1000
                    t0 = time.perf_counter()
                    ray.get([noop.remote() for _ in range(k)])
                    per_task = (time.perf_counter() - t0) / k
                    t0 = time.perf_counter()
                    for _ in range(50):
                        ray.get(noop.remote())
                    serial = (time.perf_counter() - t0) / 50
                    notes.append(
                        f"Ray fixed costs: ray.init of a local instance {t_init:.2f} s; empty remote task "
                        f"{per_task * 1e3:.2f} ms each when {k} are in flight, {serial * 1e3:.2f} ms "
                        f"round trip one at a time"
                    )
            finally:
                ray.shutdown()

        same = len(set(digests.values())) == 1
        if not same:
            raise AssertionError(f"outputs differ between engines: {digests}")
        notes.insert(
            0,
            f"corpus: {n_files} JSONL files, {total / 1e6:.1f} MB, {tokens} tokens, {n_tasks} tasks "
            f"(--task-size {task_size}); best of {reps} run(s) each; every engine wrote byte-identical "
            f"outputs (SHA-256 of .bin/.idx and the manifest without timing)",
        )
        notes.append(
            f"machine: {os.cpu_count()} CPUs; times include the driver's merge and the SHA-256 check "
            f"of each completion record (task phase = planning to the last verified record; total adds "
            f"the driver's merge, which is the same for every engine); loading the vocab takes {t_vocab:.2f} s once per process "
            f"(done before timing here; inside 'first build' for Ray); 1-minute load average "
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes share the CPUs)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "title": "rwkv5.dataprep: Ray engine vs local engine (same corpus, same outputs)",
        "columns": [
            "engine",
            "workers",
            "tasks",
            "input MB",
            "task phase s",
            "tasks/s",
            "MB/s",
            "total s (with merge)",
            "notes",
        ],
        "rows": rows,
        "notes": notes,
    }


def _print(res: dict) -> None:
    print(res["title"])
    cols = res["columns"]
    table = [cols] + [[str(c) for c in r] for r in res["rows"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    for n in res["notes"]:
        print("- " + n)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    result = run(quick=a.quick)
    _print(result)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    sys.exit(0)
