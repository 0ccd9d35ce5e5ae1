"""What the policy leaves an attacker worth: a student trained on what the attacker obtained with
the policy vs one trained on undefended outputs (issue #6, third measured item). Small scale.

    nice -n 10 .venv/bin/python bench/policy_student_quality.py [--prompts 120] [--steps 40] \
        [--policy-result bench/results/policy_simulation.json] [--kind attack-gsm8k]

1. The attacker's prompts: gsm8k training questions in an elicitation template (as the maths
   sweep of ``detect/traffic.py`` sends them), answered by the teacher (SmolLM2 through the
   distillation pipeline, ``distillguard distill collect``, greedy, batched transformers engine,
   no watermark: the quality question is about quantity, not the mark): the *undefended* dataset.
2. The *defended* dataset: what the policy let the attacker have, in the proportions measured by
   ``bench/policy_simulation.py`` for attackers of ``--kind`` (served in full / served degraded,
   i.e. cut to ``degrade.max_tokens`` tokens / refused): the first answers in full, the next
   ones cut, the rest missing. (Detection flags a campaign after its first requests, so what the
   attacker keeps is its first answers.) The held-out prompts are the same in both datasets.
3. One initial student (``distill student``: half the teacher's layers), two trainings with the
   same number of steps (``distill train``, sequence-level KD), one evaluation of both against
   the teacher on the held-out prompts (``distill eval``: teacher-forced token agreement, KL and
   perplexity on the teacher's answers; ROUGE-L of a few greedy answers against the teacher's).

Every step is the ``distillguard distill`` CLI with a config file written here, so a reader can
rerun any step by hand. Results: bench/results/policy_student_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
TEMPLATE = "{q}\nLet's think step by step."  # detect/traffic.py ATTACK_TEMPLATES[0]


def proportions(result_path: Path, kind: str) -> dict[str, Any]:
    """Per-request outcome shares of the attackers of ``kind`` under the policy (policy_simulation)."""
    res = json.loads(result_path.read_text())
    at = res["attackers"]
    g = at[{"single": "single_account"}.get(kind, kind)] if kind in ("single", "hydra", "all") else \
        at["single_account_by_kind"].get(kind)
    if g is None:
        sys.exit(f"error: no attackers of kind {kind!r} in {result_path}; kinds: {sorted(at['single_account_by_kind'])}")
    n = g["requests"]
    refused, degraded = g["requests_refused"], g["requests_degraded"]
    cap = (res["setup"].get("policy_config") or {}).get("degrade", {}).get("max_tokens")
    return {"kind": kind, "requests": n, "full": (n - refused - degraded) / n, "degraded": degraded / n,
            "refused": refused / n, "degrade_max_tokens": cap, "yield_ratio_tokens": g["yield_ratio"],
            "source": str(result_path), "source_timestamp": res.get("timestamp")}


def toml_config(workdir: Path, dataset: Path, student_init: Path, name: str, steps: int, max_tokens: int,
                prompts: Path | None, extra_models: dict[str, Path] | None = None) -> str:
    lines = [
        "[distill]", f'workdir = "{workdir}"', "heldout_fraction = 0.2", "",
        # transformers, many prompts per forward pass: far faster than one llama.cpp stream on a
        # busy 2-core machine (see bench/distill_config.toml)
        "[distill.teacher]", 'kind = "local"', "n_threads = 1", 'engine = "batched"', "",
        "[distill.collect]", f'output = "{dataset}"', f"max_tokens = {max_tokens}", "temperature = 0.0",
        "batch_size = 32", "",
    ]
    if prompts is not None:
        lines += ["[[distill.collect.sources]]", f'path = "{prompts}"', 'field = "prompt"', 'answer_field = "answer"',
                  'task = "gsm8k"', ""]
    # the layer choice of bench/distill_config.toml (picked there on train-split answers)
    lines += ["[distill.student]", "layers = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 27, 28, 29]",
              f'output = "{student_init}"', "",
              "[distill.train]", 'method = "sft"', f'name = "{name}"', f"max_steps = {steps}", "batch_size = 4",
              "max_length = 320", "learning_rate = 5e-4", "warmup_steps = 4", f"save_every = {steps}", "threads = 2", "",
              "[distill.eval]", "max_prompts = 100", "generate_prompts = 6", "max_new_tokens = 96", "threads = 2"]
    if extra_models:
        lines += ["", "[distill.eval.models]"] + [f'{k} = "{v}"' for k, v in extra_models.items()]
    return "\n".join(lines) + "\n"


def run(cmd: list[str], log: Path) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} failed (exit {r.returncode}); see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=256,
                    help="teacher answer length (the attacker asks for long answers; longer than degrade.max_tokens)")
    ap.add_argument("--steps", type=int, default=40, help="training steps for each student (the same for both)")
    ap.add_argument("--policy-result", type=Path, default=ROOT / "bench" / "results" / "policy_simulation.json")
    ap.add_argument("--kind", default="all",
                    help="whose outcome shares to apply: all | single | hydra | an attacker kind (attack-gsm8k, ...)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "cache" / "policy_student")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "policy_student_quality.json")
    args = ap.parse_args()
    t_start = time.time()
    load0 = os.getloadavg()
    cli = str(Path(sys.executable).with_name("distillguard"))
    share = proportions(args.policy_result, args.kind)
    w = args.workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    log = w / "pipeline.log"

    # 1. prompts and the undefended dataset (collect resumes: a rerun reuses the answers)
    prompts = w / "prompts.jsonl"
    with open(DATASETS / "gsm8k_train.jsonl", encoding="utf-8") as src, open(prompts, "w", encoding="utf-8") as fh:
        for i, line in enumerate(src):
            if i >= args.prompts:
                break
            r = json.loads(line)
            fh.write(json.dumps({"prompt": TEMPLATE.format(q=r["question"]), "answer": r["answer"]}) + "\n")
    undefended = w / "undefended.jsonl"
    init = w / "student-init"
    cfg_a = w / "undefended.toml"
    cfg_a.write_text(toml_config(w / "run-undefended", undefended, init, "undefended", args.steps, args.max_tokens, prompts))
    run([cli, "distill", "collect", "-c", str(cfg_a)], log)
    run([cli, "distill", "student", "-c", str(cfg_a), "--force"], log)

    # 2. the defended dataset: the same held-out records, the attacker's share of the training ones
    from transformers import AutoTokenizer

    from distillguard.distill.data import split_records

    train, held = split_records(undefended, 0.2)
    tok = AutoTokenizer.from_pretrained(init)  # the student's (= the teacher's) tokenizer
    n_full = round(len(train) * share["full"])
    n_cut = round(len(train) * share["degraded"])
    cap = share["degrade_max_tokens"]
    defended_train = []
    for r in train[:n_full]:
        defended_train.append(r)
    for r in train[n_full:n_full + n_cut]:
        ids = tok(r["response"], add_special_tokens=False)["input_ids"]
        if cap is not None and len(ids) > cap:
            r = {**r, "response": tok.decode(ids[:cap]), "completion_tokens": cap, "finish_reason": "length"}
        defended_train.append(r)
    defended = w / "defended.jsonl"
    with open(defended, "w", encoding="utf-8") as fh:
        for r in defended_train + held:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    def tokens(recs: list[dict[str, Any]]) -> int:
        return sum(len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in recs)

    if not defended_train:
        print("the policy left the attacker no training answers at this scale: the defended student is the "
              "initial student", file=sys.stderr)

    # 3. one initial student, two trainings of equal steps, one evaluation
    cfg_b = w / "defended.toml"
    cfg_b.write_text(toml_config(w / "run-defended", defended, init, "defended", args.steps, args.max_tokens, None))
    run([cli, "distill", "train", "-c", str(cfg_a), "--force"], log)
    extra = {}
    if defended_train:
        run([cli, "distill", "train", "-c", str(cfg_b), "--force"], log)
        extra = {"defended": w / "run-defended" / "students" / "defended"}
    cfg_e = w / "eval.toml"
    cfg_e.write_text(toml_config(w / "run-undefended", undefended, init, "undefended", args.steps, args.max_tokens,
                                 prompts, extra))
    eval_json = w / "eval.json"
    run([cli, "distill", "eval", "-c", str(cfg_e), "--json", str(eval_json)], log)
    ev = json.loads(eval_json.read_text())

    result = {
        "bench": "policy_student_quality",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_start": load0, "load_avg_end": os.getloadavg()},
        "scale_note": (f"small scale: {args.prompts} gsm8k prompts, teacher answers up to {args.max_tokens} tokens, "
                       f"{args.steps} training steps of batch 4 per student; the outcome shares come from the policy "
                       "simulation's attackers of this kind"),
        "policy_outcome_shares": share,
        "datasets": {
            "undefended": {"train_answers": len(train), "train_tokens": tokens(train), "heldout": len(held),
                           "file": str(undefended)},
            "defended": {"train_answers": len(defended_train), "full": n_full, "cut_to_max_tokens": n_cut,
                         "train_tokens": tokens(defended_train), "heldout": len(held), "file": str(defended)},
        },
        "eval": ev,
        "configs": [str(cfg_a), str(cfg_b), str(cfg_e)],
        "seconds": round(time.time() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("policy_outcome_shares", "datasets")}, indent=1, default=str))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
