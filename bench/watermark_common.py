"""Shared pieces of the watermark benchmarks: prompts, machine facts, result files, the cache.

Prompts come from ../shared/datasets (chat-like sets). They are shuffled once with a fixed seed
and split: the first TUNE_N are the tuning split (scheme parameters were chosen on them), the rest
are the report split. Generated answers are cached under bench/cache/ and reused by every bench.
"""

from __future__ import annotations

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


def machine() -> dict:
    facts = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torch

        facts["torch"] = torch.__version__
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
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / name, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
