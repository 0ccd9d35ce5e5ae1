"""Training-step speed of logit KD in float32 vs bfloat16 mixed precision, same run, same batches.

    .venv/bin/python bench/distill_precision.py --config bench/distill_config.toml --rounds 6

Uses the benchmark's real student (``distill student``), teacher and cached teacher answers. Each
round times one optimizer step of the real ``batch_loss`` in each precision on the same batch,
alternating which goes first, so load from other processes falls on both alike. Also records the
loss both precisions give for the same weights and batch (no update): mixed precision should
change it by well under a percent. Writes bench/results/distill_precision.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/distill_config.toml")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--loss", default="forward_kl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/distill_precision.json")
    a = ap.parse_args()

    import torch
    from rich.progress import track

    from distillguard.config import load_settings
    from distillguard.distill.data import collate, make_batches
    from distillguard.distill.modelio import load_model, load_teacher, resolve_teacher_path
    from distillguard.distill.train import batch_loss, prepare

    torch.set_num_threads(a.threads)
    cfg = load_settings(ROOT / a.config).distill
    cfg.train.method, cfg.train.loss = "logits", a.loss
    student, tok = load_model(ROOT / cfg.student_init_path(), threads=a.threads)
    teacher32, _ = load_teacher(resolve_teacher_path(cfg.teacher.model_path), threads=a.threads)
    teacher16 = copy.deepcopy(teacher32).to(torch.bfloat16)  # as train() does for bf16
    examples, _ = prepare(cfg, tok)
    batches = make_batches(examples, cfg.train.batch_size)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def step(precision: str, batch: dict) -> float:
        cfg.train.precision = precision
        t0 = time.process_time()
        loss, _ = batch_loss(student, teacher16 if precision == "bf16" else teacher32, batch, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.process_time() - t0

    cpu = {"fp32": [], "bf16": []}
    tokens = []
    # batches from the middle of the length-sorted list: typical lengths
    picks = [batches[len(batches) // 2 + i] for i in range(a.rounds + 1)]
    step("fp32", collate([examples[i] for i in picks[0]], tok.pad_token_id))  # warm-up, both
    step("bf16", collate([examples[i] for i in picks[0]], tok.pad_token_id))
    for r in track(range(a.rounds), description="timing steps"):
        batch = collate([examples[i] for i in picks[r + 1]], tok.pad_token_id)
        tokens.append(int(batch["attention_mask"].sum()))
        order = ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")
        for p in order:
            cpu[p].append(step(p, batch))

    student.eval()
    batch = collate([examples[i] for i in picks[1]], tok.pad_token_id)
    same = {}
    with torch.no_grad():
        for p in ("fp32", "bf16"):
            cfg.train.precision = p
            same[p] = float(batch_loss(student, teacher16 if p == "bf16" else teacher32, batch, cfg)[0])
    med = {p: statistics.median(v) for p, v in cpu.items()}
    result = {
        "benchmark": "distill_precision",
        "command": shlex.join([sys.executable, *sys.argv]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg": os.getloadavg(),
                    "cpu_flags_bf16": sorted(f for f in Path("/proc/cpuinfo").read_text().split() if "bf16" in f or "amx" in f)
                    if Path("/proc/cpuinfo").is_file() else None},
        "setup": {"student": str(cfg.student_init_path()), "teacher": str(resolve_teacher_path(cfg.teacher.model_path)),
                  "loss": a.loss, "batch_size": cfg.train.batch_size, "threads": a.threads, "rounds": a.rounds,
                  "mean_tokens_per_batch": statistics.mean(tokens),
                  "timed": "CPU seconds (process_time) of one optimizer step: student+teacher forward, KD loss, backward, AdamW"},
        "cpu_s_per_step": {p: {"median": med[p], "all": v} for p, v in cpu.items()},
        "speedup_bf16_vs_fp32": med["fp32"] / med["bf16"],
        "tokens_per_cpu_s": {p: statistics.mean(tokens) / med[p] for p in med},
        "same_batch_loss": {**same, "relative_difference": abs(same["bf16"] - same["fp32"]) / abs(same["fp32"])},
    }
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("speedup_bf16_vs_fp32", "tokens_per_cpu_s", "same_batch_loss")}, indent=2))


if __name__ == "__main__":
    main()
