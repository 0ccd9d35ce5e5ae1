"""Shared pieces of the watermark benchmarks: prompts, machine facts, result files, the cache.

Prompts come from ../shared/datasets (chat-like sets). They are shuffled once with a fixed seed
and split: the first TUNE_N are the tuning split (scheme parameters were chosen on them), the rest
are the report split. Generated answers are cached under bench/cache/ and reused by every bench.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = ROOT / "bench" / "cache"
RESULTS = ROOT / "bench" / "results"
TUNE_N = 40
# the one key the benchmarks use (a bench key, not a secret anybody relies on)
BENCH_SECRET = b"distillguard-bench-watermark-key-0001"


def chat_prompts() -> list[str]:
    out: list[str] = []
    for name in ("vicuna_bench_questions.jsonl", "mt_bench_questions.jsonl"):
        for line in open(DATASETS / name, encoding="utf-8"):
            out.append(json.loads(line)["turns"][0])
    for line in open(DATASETS / "self_instruct_user_oriented.jsonl", encoding="utf-8"):
        r = json.loads(line)
        inp = (r.get("instances") or [{}])[0].get("input", "")
        out.append(r["instruction"] + ("\n\n" + inp if inp else ""))
    for line in open(DATASETS / "self_instruct_seed_tasks.jsonl", encoding="utf-8"):
        r = json.loads(line)
        inp = (r.get("instances") or [{}])[0].get("input", "")
        out.append(r["instruction"] + ("\n\n" + inp if inp else ""))
    random.Random(1234).shuffle(out)
    return out


def radioactivity_prompts() -> list[tuple[str, str]]:
    """(source, prompt) for the radioactivity students' training data: 1,000+ varied prompts.

    Every chat prompt (both splits: the students are not tuned on anything), then natural-questions
    and GSM8K questions interleaved. The GSM8K questions start at 1,000 of the seed-99 shuffle, so
    the GSM8K accuracy subset (the first few hundred) stays out of the students' training data.
    """
    out = [("chat", p) for p in chat_prompts()]
    nq = [json.loads(x)["question"] for x in open(DATASETS / "nq_open_dev.jsonl", encoding="utf-8")]
    random.Random(7).shuffle(nq)
    gsm = [json.loads(x)["question"] for x in open(DATASETS / "gsm8k_train.jsonl", encoding="utf-8")]
    random.Random(99).shuffle(gsm)
    for q_nq, q_gsm in zip(nq, gsm[1000:]):
        out.append(("nq_open", q_nq[:1].upper() + q_nq[1:] + "?"))
        out.append(("gsm8k", q_gsm))
    return out


def radio_order(idxs: list[int]) -> list[int]:
    """The fixed training order of the radioactivity prompts: ``idxs`` sorted by a hash of the index.

    A pseudo-random order that is the same for any subset (the order of a subset is the full
    order restricted to it), so a generation run cut short leaves exactly "the first K" prompts
    cached. "The first N" radioactivity answers are the first N of this order
    (watermark_batchgen.py generates in this order; watermark_radioactivity.py trains in it).
    """
    return sorted(set(idxs), key=lambda i: hashlib.sha256(f"radio-order-{int(i)}".encode()).digest())


def machine() -> dict:
    facts = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        facts["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return facts


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "timestamp": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def read_cache(name: str) -> list[dict]:
    p = CACHE / name
    if not p.is_file():
        return []
    return [json.loads(line) for line in open(p, encoding="utf-8") if line.strip()]


def append_cache(name: str, row: dict) -> None:
    """Append one JSON line with a single write() on an O_APPEND descriptor, so several processes
    (watermark_batchgen.py --shard) can append to the same cache without interleaving lines."""
    CACHE.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row) + "\n").encode("utf-8")
    fd = os.open(CACHE / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a short write on a regular file is rare; finish it
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
