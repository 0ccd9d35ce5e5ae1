"""bench/distill_gpu.py, the recipe a lent GPU machine runs for #5, end to end on the tiny model.

The device machine has no ../shared (the prompt files travel with --datasets) and runs every step
in one process; here it runs on the CPU with the tiny random teacher, so the recipe cannot rot
between the sessions that get a GPU.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ROWS = {
    "nq_open_dev.jsonl": [{"question": f"who wrote book number {i}"} for i in range(4)],
    "gsm8k_train.jsonl": [{"question": f"Tom has {i} apples and buys {i} more. How many?", "answer": f"#### {2 * i}"} for i in range(4)],
    "self_instruct_seed_tasks.jsonl": [{"instruction": f"Write a haiku about the number {i}."} for i in range(2)],
    "self_instruct_user_oriented.jsonl": [{"instruction": f"Plan a {i}-day trip."} for i in range(2)],
    "vicuna_bench_questions.jsonl": [{"turns": [f"Explain idea {i}."]} for i in range(2)],
    "mt_bench_questions.jsonl": [{"turns": [f"Describe city {i}.", "Shorter."]} for i in range(2)],
    "humaneval.jsonl": [{"prompt": f"def add_{i}(a, b):\n    \"\"\"Add two numbers.\"\"\"\n"} for i in range(2)],
}


def test_gpu_recipe_runs_every_step_and_writes_its_json(tmp_path, tiny_teacher):
    data = tmp_path / "datasets"
    data.mkdir()
    for name, rows in ROWS.items():
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "distill_gpu.json"
    cmd = [sys.executable, "bench/distill_gpu.py", "--device", "cpu", "--teacher", str(tiny_teacher), "--datasets", str(data),
           "--workdir", str(tmp_path / "run"), "--layers", "0,3", "--max-steps", "2", "--batch-size", "4", "--precision", "fp32",
           "--eval-prompts", "4", "--generate-prompts", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert [s["step"] for s in d["steps"]] == ["collect", "student", "train", "eval"]
    assert d["collect"]["total"] == sum(len(v) for v in ROWS.values()) and d["collect"]["failed"] == 0
    assert d["answers"]["train"] + d["answers"]["heldout"] == d["answers"]["total"]
    assert d["train"]["device"] == "cpu" and d["train"]["steps"] == 2 and d["train"]["tokens"] > 0
    names = [m["name"] for m in d["eval"]["models"]]
    assert names == ["teacher", "student-init", "logits-forward_kl"]
    assert d["eval"]["models"][0]["top1_agreement"] == 1.0 and d["eval"]["device"] == "cpu"
    assert d["goals"]["logit_kd_top1_agreement_ge_0.70"] == d["eval"]["models"][2]["top1_agreement"]
    assert d["machine"]["device"] == "cpu" and "--device cpu" in d["command"]


def test_gpu_recipe_refuses_an_absent_gpu_before_collecting(tmp_path, tiny_teacher):
    import torch

    if torch.cuda.is_available():
        return
    r = subprocess.run([sys.executable, "bench/distill_gpu.py", "--device", "cuda", "--teacher", str(tiny_teacher),
                        "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "x.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "device 'cuda' asked for" in r.stderr
    assert not (tmp_path / "run" / "teacher.jsonl").exists()
