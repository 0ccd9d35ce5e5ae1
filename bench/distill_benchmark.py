"""Distillation benchmark: SmolLM2-135M-Instruct teacher -> 15-layer student, three ways.

Runs the real CLI step by step (each a subprocess, so its CPU time is measured exactly by
``os.wait4``) and writes one JSON with every step's command, wall and CPU seconds, the eval table
and machine facts:

    nice -n 10 .venv/bin/python bench/distill_benchmark.py --config bench/distill_config.toml \
        --answers 1131 --steps 120 --out bench/results/distill_benchmark.json

Steps: collect (resumes; teacher answers cached in bench/cache/teacher.jsonl) -> student (every
other layer) -> train sft / logits forward KL / logits JSD (optionally in parallel) -> eval on
the held-out prompts -> export the logit-KD student to GGUF (Q4_1, like the teacher's file) ->
llama.cpp decode speed, teacher vs student, interleaved prompt by prompt.
Every step skips work already done, so the script can be rerun after an interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "distillguard.cli", "distill"]

RUNS = {
    "sft": ["--method", "sft"],
    "logits-forward_kl": ["--method", "logits", "--loss", "forward_kl"],
    "logits-jsd": ["--method", "logits", "--loss", "jsd", "--beta", "0.5"],
}


def run_step(name: str, args: list[str], log_dir: Path) -> dict:
    """Run one CLI step; wall and CPU (user+sys of the child and its threads) seconds."""
    cmd = CLI + args
    log = (log_dir / f"{name}.log").open("w")
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
    rec = {"step": name, "command": shlex.join(["distillguard", "distill", *args]), "wall_s": round(time.time() - t0, 1),
           "cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "exit_code": os.waitstatus_to_exitcode(status)}
    _log_step(rec)
    return rec


STEP_LOG = ROOT / "bench" / "cache" / "steps.jsonl"


def _log_step(rec: dict) -> None:
    """Print and append to bench/cache/steps.jsonl: a rerun that skips finished steps keeps their timings."""
    rec = {**rec, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(rec), flush=True)
    with STEP_LOG.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def run_parallel(steps: dict[str, list[str]], log_dir: Path) -> list[dict]:
    """Start all steps, reap each with its own rusage."""
    procs = {}
    for name, args in steps.items():
        log = (log_dir / f"{name}.log").open("w")
        procs[name] = (subprocess.Popen(CLI + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), time.time(), args)
    out = []
    for name, (p, t0, args) in procs.items():
        _, status, ru = os.wait4(p.pid, 0)
        rec = {"step": name, "command": shlex.join(["distillguard", "distill", *args]), "wall_s": round(time.time() - t0, 1),
               "cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "exit_code": os.waitstatus_to_exitcode(status), "parallel": True}
        _log_step(rec)
        out.append(rec)
    return out


def llamacpp_speed(teacher: Path, student: Path, prompts: list[list[dict]], max_tokens: int, threads: int) -> dict:
    """Decode tokens/s of two GGUF files in llama.cpp, alternating prompt by prompt."""
    from llama_cpp import Llama

    models = {"teacher": Llama(str(teacher), n_ctx=1024, n_threads=threads, verbose=False),
              "student": Llama(str(student), n_ctx=1024, n_threads=threads, verbose=False)}
    tok = {k: 0 for k in models}
    secs = {k: 0.0 for k in models}
    try:
        for msgs in prompts:
            for name, llm in models.items():
                t0 = time.perf_counter()
                r = llm.create_chat_completion(msgs, max_tokens=max_tokens, temperature=0)
                secs[name] += time.perf_counter() - t0
                tok[name] += r["usage"]["completion_tokens"]
    finally:
        for llm in models.values():
            llm.close()
    speed = {k: tok[k] / secs[k] for k in models}
    return {"tokens": tok, "seconds": secs, "tokens_per_s": speed, "speedup": speed["student"] / speed["teacher"],
            "threads": threads, "max_tokens": max_tokens, "prompts": len(prompts)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/distill_config.toml")
    ap.add_argument("--answers", type=int, default=1131, help="prompts to collect answers for (collect.max_prompts)")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per training run")
    ap.add_argument("--train-minutes", type=float, default=None, help="wall-clock budget per training run")
    ap.add_argument("--parallel-train", action="store_true", help="run the three trainings at once")
    ap.add_argument("--skip-collect", action="store_true", help="use the cached answers as they are")
    ap.add_argument("--skip-eval", action="store_true", help="keep the eval results already written")
    ap.add_argument("--speed-prompts", type=int, default=6)
    ap.add_argument("--out", default="bench/results/distill_benchmark.json")
    a = ap.parse_args()

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from distillguard.config import load_settings
    from distillguard.distill.collect import load_records
    from distillguard.distill.data import split_records
    from distillguard.distill.modelio import resolve_teacher_path

    cfg = load_settings(ROOT / a.config).distill
    log_dir = ROOT / cfg.workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    c = ["--config", a.config]
    steps: list[dict] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    if not a.skip_collect:
        steps.append(run_step("collect", ["collect", *c, "--max-prompts", str(a.answers)], log_dir))
    steps.append(run_step("student", ["student", *c], log_dir))
    budget = ["--max-minutes", str(a.train_minutes)] if a.train_minutes else []
    train_steps = {name: ["train", *c, *args, "--max-steps", str(a.steps), *budget, "--name", name] for name, args in RUNS.items()}
    if a.parallel_train:
        steps += run_parallel(train_steps, log_dir)
    else:
        steps += [run_step(name, args, log_dir) for name, args in train_steps.items()]
    if not a.skip_eval:
        steps.append(run_step("eval", ["eval", *c], log_dir))
    steps.append(run_step("export", ["export", *c, "--model", str(cfg.students_dir() / "logits-forward_kl"), "--dtype", "q4_1"], log_dir))

    train_recs, held = split_records(ROOT / cfg.dataset_path(), cfg.heldout_fraction)
    export_dir = ROOT / cfg.export_output()
    gguf = next(export_dir.glob("*.q4_1.gguf"), None)
    speed = None
    if gguf is not None:
        t0, c0 = time.time(), time.process_time()
        speed = llamacpp_speed(resolve_teacher_path(cfg.teacher.model_path), gguf,
                               [r["messages"] for r in held[: a.speed_prompts]], cfg.eval.max_new_tokens, threads=1)
        rec = {"step": "llamacpp_speed", "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        _log_step(rec)
        steps.append(rec)

    eval_path = ROOT / cfg.eval_output()
    ev = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    train_summaries = {}
    for name in RUNS:
        f = ROOT / cfg.students_dir() / name / "distill_train.json"
        if f.is_file():
            d = json.loads(f.read_text())
            train_summaries[name] = {k: d[k] for k in ("steps", "stopped_at", "examples", "first_loss", "last_loss", "tokens", "seconds")}
            train_summaries[name]["config"] = d["config"]
    # Steps run earlier in the background (the long teacher collection), with their CPU time.
    background = [ROOT / "bench" / "cache" / n for n in ("collect_runs.jsonl", "background_steps.jsonl")]
    result = {
        "benchmark": "distill",
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_at_end": os.getloadavg()},
        "teacher": str(resolve_teacher_path(cfg.teacher.model_path)),
        "answers": {"total": len(load_records(ROOT / cfg.dataset_path())), "train": len(train_recs), "heldout": len(held)},
        "background_steps": [json.loads(x) for f in background if f.is_file() for x in f.read_text().splitlines() if x.strip()],
        "steps_this_run": steps,
        # every step of every run (a rerun skips finished steps; their first timings are here)
        "step_log": [json.loads(x) for x in STEP_LOG.read_text().splitlines()] if STEP_LOG.is_file() else [],
        "train": train_summaries,
        "eval": ev,
        "llamacpp_decode": speed,
    }
    if ev:
        rows = {m["name"]: m for m in ev["models"]}
        kd = rows.get("logits-forward_kl")
        result["goals"] = {
            "decode_speedup_hf_ge_1.8": kd and kd.get("speedup_vs_teacher"),
            "decode_speedup_llamacpp_ge_1.8": speed and speed["speedup"],
            "logit_kd_ppl_ratio_le_1.3": kd and kd.get("ppl_ratio_vs_teacher"),
            "logit_kd_top1_agreement_ge_0.70": kd and kd.get("top1_agreement"),
        }
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
