"""Benchmark: the arena's `full` scenario (or any scenario), results recorded in
bench/results/arena_<scenario>.json with the command line and machine facts.

    nice -n 10 .venv/bin/python bench/arena_full.py [--scenario full] [--out runs/arena-full] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="full")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="results file (default bench/results/arena_<scenario>.json)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console

    from distillguard.arena.report import headline
    from distillguard.arena.runner import run_arena
    from distillguard.arena.scenario import load_scenario

    sc = load_scenario(args.scenario)
    out = (args.out or Path("runs") / f"arena-{sc.name}").resolve()
    m = run_arena(sc, out, Console(stderr=True))
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_start": m["timing"]["load_avg_start"]},
        "scenario": sc.name,
        "out": str(out),
        "headline": headline(m),
        "legitimate_impact": m["legitimate_impact"],
        "attacker_yield": m["attacker_yield"],
        "detection": {k: v for k, v in m["detection"].items() if k not in ("series", "table")},
        "watermark": m["watermark"],
        "student": {k: v for k, v in m["student"].items() if k != "quality"},
        "student_quality": (m["student"].get("quality") or {}).get("models"),
        "timing": m["timing"],
    }
    res = args.json or Path(__file__).parent / "results" / f"arena_{sc.name}.json"
    res.parent.mkdir(exist_ok=True)
    res.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["headline"], indent=2))
    print(f"recorded in {res}")


if __name__ == "__main__":
    main()
