"""The radioactivity audit through the product's CLI, on the students bench/watermark_radioactivity.py saved.

bench/watermark_radioactivity.py calls the audit functions directly. This script runs the same
audit the way a user would: `distillguard watermark audit` in a subprocess, with files on disk.
- The served (watermarked) texts and the unwatermarked contexts are the first N answers of the
  training order, written as events JSONL (prompt and answer, cut to 128 tokens as trained).
  Contexts identical to a served text are left out, as the bench does.
- The bench key goes in a key file.
- The teacher (bench/cache/smollm2_hf) is the --scoring-model.
The students come from a run with ``--save-students`` (bench/cache/radioactivity/student_*). The
two audits run side by side, each in its own process with one torch thread.

    .venv/bin/python bench/radioactivity_cli.py --n 1000 --name radioactivity_cli_e2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, CACHE, radio_order, read_cache, write_result  # noqa: E402


def write_inputs(out: Path, cache: str, wm_config: str, n: int) -> dict:
    """Events JSONL of the first ``n`` served answers and their unwatermarked contexts, plus the key file."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(CACHE / "smollm2_hf")
    by: dict[int, dict[str, dict]] = {}
    for r in read_cache(cache):
        if r.get("task") == "radio":
            by.setdefault(r["idx"], {})[r["config"]] = r
    order = radio_order([i for i, d in by.items() if wm_config in d])[:n]
    out.mkdir(parents=True, exist_ok=True)

    def answer(row: dict) -> tuple[str, str]:  # (prompt, answer as trained on: at most 128 tokens)
        return row["prompt"], tok.decode(row["token_ids"][:128], skip_special_tokens=True)

    def write_events(path: Path, pairs: list[tuple[str, str]]) -> None:
        path.write_text("".join(json.dumps({"ts": 0, "account": "bench", "request": {"messages": [
            {"role": "user", "content": q}]}, "response": {"text": t}}) + "\n" for q, t in pairs))

    served = [answer(by[i][wm_config]) for i in order]
    served_texts = {t.strip() for _, t in served}
    contexts = [c for c in (answer(by[i]["none"]) for i in order) if c[1].strip() not in served_texts]
    write_events(out / "served.jsonl", served)
    write_events(out / "contexts.jsonl", contexts)
    (out / "key").write_text(BENCH_SECRET.decode() + "\n")
    return {"served": len(served), "contexts": len(contexts), "left_out_identical": len(served) - len(contexts)}


def audit(student: Path, out: Path, shift: bool) -> dict:
    cli = Path(sys.executable).with_name("distillguard")
    cmd = [str(cli), "watermark", "audit", "--suspect", str(student), "--texts", str(out / "served.jsonl"),
           "--contexts", str(out / "contexts.jsonl"), "--key-file", str(out / "key"),
           "--scoring-model", str(CACHE / "smollm2_hf"), "--json"] + (["--shift"] if shift else [])
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    res = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"command": " ".join(cmd), "result": res, "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="the first N answers of the training order")
    ap.add_argument("--cache", default="wm_radio.jsonl")
    ap.add_argument("--wm-config", default="gumbel1_reseed")
    ap.add_argument("--students", default="student_watermarked,student_control",
                    help="folders in bench/cache/radioactivity (from --save-students)")
    ap.add_argument("--top1", action="store_true", help="the gated top-1 reading audit instead of the shift audit")
    ap.add_argument("--name", default="radioactivity_cli")
    a = ap.parse_args()
    out = CACHE / "radioactivity" / "cli"
    inputs = write_inputs(out, a.cache, a.wm_config, a.n)
    students = [CACHE / "radioactivity" / s for s in a.students.split(",")]
    missing = [str(s) for s in students if not (s / "config.json").is_file()]
    if missing:
        raise SystemExit(f"no saved student at {', '.join(missing)}: run bench/watermark_radioactivity.py "
                         "--save-students first")
    with ThreadPoolExecutor(max_workers=len(students)) as pool:
        runs = list(pool.map(lambda s: audit(s, out, not a.top1), students))
    result = {"setup": {"n": a.n, "wm_config": a.wm_config, "inputs": inputs,
                        "audit": "gated top-1 reading" if a.top1 else "shift (reference = --scoring-model)",
                        "note": "the product CLI in a subprocess, one torch thread each, the two side by side"},
              "audits": {s.name: r for s, r in zip(students, runs)}}
    for s, r in zip(students, runs):
        print(f"{s.name}: p = {r['result']['p_value']:.3g} ({r['result']['tuples_scored']} scored, "
              f"{r['wall_s']:.0f} s)")
    print("wrote", write_result(a.name, result))


if __name__ == "__main__":
    main()
