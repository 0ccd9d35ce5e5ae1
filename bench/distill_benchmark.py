"""Distillation benchmark: SmolLM2-135M-Instruct teacher -> 15-layer student, three ways.

Runs the real CLI step by step (each a subprocess, so its CPU time is measured exactly by
``os.wait4``) and writes one JSON with every step's command, wall and CPU seconds, the eval table
and machine facts:

    nice -n 10 .venv/bin/python bench/distill_benchmark.py --config bench/distill_config.toml --answers 1060 \
        --run-steps logits-forward_kl=70,logits-jsd=30,sft=30 \
        --run-minutes logits-forward_kl=24,logits-jsd=10,sft=7 --speed-prompts 12

Steps: collect (resumes; teacher answers cached in bench/cache/teacher.jsonl; the config uses the
batched transformers teacher) -> student (the config's 15 layers) -> train logits forward KL /
logits JSD / sft (in that order, or in parallel) -> eval on the held-out prompts -> export the
logit-KD student to GGUF (Q4_1, like the teacher's file) -> llama.cpp prefill and decode speed,
teacher vs student, interleaved prompt by prompt.
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

# the main logit-KD run first: if the compute runs out, it is the one that finished
RUNS = {
    "logits-forward_kl": ["--method", "logits", "--loss", "forward_kl"],
    # session 9: forward KL plus hidden-state alignment (the stream handed to teacher layer 27)
    "logits-forward_kl-hidden": ["--method", "logits", "--loss", "forward_kl", "--hidden-weight", "1.0"],
    "logits-jsd": ["--method", "logits", "--loss", "jsd", "--beta", "0.5"],
    "sft": ["--method", "sft"],
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


def llamacpp_speed(teacher: Path, student: Path, prompts: list[list[int]], max_tokens: int, threads: int) -> dict:
    """Decode tokens/s of two GGUF files in llama.cpp, alternating prompt by prompt.

    Prompt processing (prefill) and decoding are timed apart, and every model decodes exactly
    ``max_tokens`` greedy tokens (end-of-turn masked): a student that stops earlier would
    otherwise spread the same prefill over fewer tokens and look slower than it decodes.
    """
    import numpy as np
    from llama_cpp import Llama

    models = {"teacher": Llama(str(teacher), n_ctx=1024, n_threads=threads, verbose=False),
              "student": Llama(str(student), n_ctx=1024, n_threads=threads, verbose=False)}
    st = {k: {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0} for k in models}
    try:
        for ids in prompts:
            for name, llm in models.items():
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(ids)
                t1 = time.perf_counter()
                for _ in range(max_tokens):
                    z = np.array(llm.scores[llm.n_tokens - 1], copy=True)
                    z[llm.token_eos()] = -np.inf
                    llm.eval([int(z.argmax())])
                t2 = time.perf_counter()
                s = st[name]
                s["prefill_tokens"] += len(ids)
                s["prefill_s"] += t1 - t0
                s["decode_tokens"] += max_tokens
                s["decode_s"] += t2 - t1
    finally:
        for llm in models.values():
            llm.close()
    speed = {k: v["decode_tokens"] / v["decode_s"] for k, v in st.items()}
    prefill = {k: v["prefill_tokens"] / v["prefill_s"] for k, v in st.items()}
    return {"decode_tokens_per_s": speed, "prefill_tokens_per_s": prefill, "detail": st,
            "speedup": speed["student"] / speed["teacher"], "prefill_speedup": prefill["student"] / prefill["teacher"],
            "threads": threads, "max_tokens": max_tokens, "prompts": len(prompts)}


def loss_curve(log: Path, points: int = 12) -> list[dict]:
    """The training loss averaged over ``points`` equal stretches of steps (from train_log.jsonl)."""
    if not log.is_file():
        return []
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    last = {r["step"]: r for r in rows}  # a resumed run logs the redone steps again: keep the last
    steps = [last[k] for k in sorted(last)]
    n = max(1, len(steps) // points)
    return [{"steps": f"{c[0]['step']}-{c[-1]['step']}", "loss": sum(r["loss"] for r in c) / len(c)}
            for c in (steps[i : i + n] for i in range(0, len(steps), n))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/distill_config.toml")
    ap.add_argument("--answers", type=int, default=1131, help="prompts to collect answers for (collect.max_prompts)")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per training run")
    ap.add_argument("--run-steps", default="", help="per-run steps, e.g. sft=60,logits-forward_kl=200 (else --steps)")
    ap.add_argument("--run-minutes", default="", help="per-run wall budgets, e.g. sft=7,logits-forward_kl=22 (else --train-minutes)")
    ap.add_argument("--train-minutes", type=float, default=None, help="wall-clock budget per training run")
    ap.add_argument("--parallel-train", action="store_true", help="run the three trainings at once")
    ap.add_argument("--skip-collect", action="store_true", help="use the cached answers as they are")
    ap.add_argument("--collect-only", action="store_true", help="collect (timed, logged) and stop")
    ap.add_argument("--skip-eval", action="store_true", help="keep the eval results already written")
    ap.add_argument("--speed-prompts", type=int, default=6)
    ap.add_argument("--speed-tokens", type=int, default=None, help="tokens decoded per prompt (default eval.max_new_tokens)")
    ap.add_argument("--runs", default="logits-forward_kl,logits-jsd,sft", help=f"training runs, of {', '.join(RUNS)}")
    ap.add_argument("--export-run", default="logits-forward_kl", help="the student exported to GGUF and timed in llama.cpp")
    ap.add_argument("--goal-run", default="logits-forward_kl", help="the logit-KD student the goals are read from")
    ap.add_argument("--note", default="", help="the design, written down before the run")
    ap.add_argument("--out", default="bench/results/distill_benchmark.json")
    a = ap.parse_args()
    runs = [r for r in a.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        ap.error(f"unknown run(s) {', '.join(unknown)}; pick from {', '.join(RUNS)}")

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
    if a.collect_only:
        return
    steps.append(run_step("student", ["student", *c], log_dir))
    per_run = {k: int(v) for k, v in (x.split("=") for x in a.run_steps.split(",") if x)}
    per_min = {k: float(v) for k, v in (x.split("=") for x in a.run_minutes.split(",") if x)}

    def budget(name: str) -> list[str]:
        m = per_min.get(name, a.train_minutes)
        return ["--max-minutes", str(m)] if m else []

    train_steps = {name: ["train", *c, *args, "--max-steps", str(per_run.get(name, a.steps)), *budget(name), "--name", name]
                   for name, args in RUNS.items() if name in runs}
    if a.parallel_train:
        steps += run_parallel(train_steps, log_dir)
    else:
        steps += [run_step(name, args, log_dir) for name, args in train_steps.items()]
    if not a.skip_eval:
        steps.append(run_step("eval", ["eval", *c], log_dir))
    steps.append(run_step("export", ["export", *c, "--model", str(cfg.students_dir() / a.export_run), "--dtype", "q4_1"], log_dir))

    train_recs, held = split_records(ROOT / cfg.dataset_path(), cfg.heldout_fraction)
    export_dir = ROOT / cfg.export_output()
    gguf = next(export_dir.glob("*.q4_1.gguf"), None)
    speed = None
    if gguf is not None:
        t0, c0 = time.time(), time.process_time()
        from distillguard.distill.data import prompt_ids
        from distillguard.distill.modelio import load_teacher

        tok = load_teacher(resolve_teacher_path(cfg.teacher.model_path))[1]
        speed = llamacpp_speed(resolve_teacher_path(cfg.teacher.model_path), gguf,
                               [prompt_ids(tok, r["messages"]) for r in held[: a.speed_prompts]], a.speed_tokens or cfg.eval.max_new_tokens, threads=1)
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
            train_summaries[name] = {k: d.get(k) for k in ("steps", "stopped_at", "examples", "first_loss", "last_loss", "tokens",
                                                           "seconds", "cpu_seconds")}
            done = d.get("stopped_at") or d["steps"]
            if d.get("cpu_seconds") and done:
                train_summaries[name]["cpu_s_per_step"] = d["cpu_seconds"] / done
                train_summaries[name]["tokens_per_cpu_s"] = d["tokens"] / d["cpu_seconds"]
            train_summaries[name]["config"] = d["config"]
            train_summaries[name]["loss_curve"] = loss_curve(f.parent / "train_log.jsonl")
    # Steps run earlier in the background (the long teacher collection), with their CPU time.
    background = [ROOT / "bench" / "cache" / n for n in ("collect_runs.jsonl", "background_steps.jsonl")]
    result = {
        "benchmark": "distill",
        "command": shlex.join([sys.executable, *sys.argv]),
        "note": a.note,
        # settings given as DISTILLGUARD_* overrides reach the CLI steps without showing in the command
        "env_overrides": {k: v for k, v in os.environ.items() if k.startswith("DISTILLGUARD_")},
        "exported_run": a.export_run,
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
        kd = rows.get(a.goal_run)
        result["goals"] = {
            "run": a.goal_run,
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
