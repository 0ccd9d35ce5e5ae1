"""The attacker's side after the campaign: train a student on what it collected (the distill
pipeline, sequence-level KD), then the arena audits that student for radioactivity with the
gateway's watermark key (open-weight reading mode), and measures its quality against the teacher.

The student starts from every-other layers of the served model: it stands in for "an open base
model of the same tokenizer family", which reading-mode audits need (same token ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from distillguard import jsonl
from distillguard.arena.scenario import Scenario
from distillguard.arena.server import ArenaServer


def write_records(collected: dict[str, list[dict[str, Any]]], path: Path, heldout_fraction: float) -> int:
    from distillguard.distill.prompts import is_heldout, prompt_id

    seen = set()
    with open(path, "w", encoding="utf-8") as fh:
        for persona, recs in collected.items():
            for r in recs:
                pid = prompt_id(r["messages"])
                if pid in seen or not r["response"].strip():
                    continue
                seen.add(pid)
                fh.write(json.dumps({
                    "id": pid, "messages": r["messages"], "prompt": r["messages"][-1]["content"],
                    "response": r["response"], "reasoning": None, "finish_reason": "length",
                    "prompt_tokens": None, "completion_tokens": r["completion_tokens"], "teacher": "gateway",
                    "source": persona, "task": None, "reference": None, "logprobs": None,
                    "heldout": is_heldout(pid, heldout_fraction)}, ensure_ascii=False) + "\n")
    return len(seen)


def distill_config(sc: Scenario, workdir: Path, dataset: Path, model_path: Path | None, name: str) -> Any:
    from distillguard.distill.config import DistillConfig

    d = sc.distill
    return DistillConfig.model_validate({
        "workdir": workdir,
        "heldout_fraction": d.heldout_fraction,
        "teacher": {"kind": "local", "model_path": model_path, "n_threads": sc.engine_threads},
        "collect": {"output": dataset},
        "student": {"num_layers": d.num_layers, "output": workdir.parent / "student-init"},
        "train": {"method": "sft", "name": name, "max_steps": d.max_steps, "batch_size": d.batch_size,
                  "max_length": d.max_length, "learning_rate": d.learning_rate, "warmup_steps": min(4, d.max_steps),
                  "save_every": max(1, d.max_steps), "threads": sc.torch_threads},
        "eval": {"max_prompts": d.eval_prompts, "generate_prompts": d.eval_generate,
                 "max_new_tokens": d.eval_max_new_tokens, "threads": sc.torch_threads},
    })


def train_and_audit(sc: Scenario, out: Path, server: ArenaServer, collected: dict[str, list[dict[str, Any]]],
                    model_path: Path | None, console: Console) -> dict[str, Any]:
    from distillguard.distill.evaluate import evaluate
    from distillguard.distill.student import build_student
    from distillguard.distill.train import train

    root = out / "attacker"
    root.mkdir(exist_ok=True)
    dataset = root / "collected.jsonl"
    n = write_records(collected, dataset, sc.distill.heldout_fraction)
    result: dict[str, Any] = {"collected_answers": n, "dataset": str(dataset)}
    if n < 4:
        result["skipped"] = f"only {n} distinct answers collected: too few to train on"
        return result
    cfg = distill_config(sc, root / "distill", dataset, model_path, "student")
    s = build_student(cfg)
    result["student_init"] = {"layers": s.layers, "params": s.student_params, "teacher_params": s.teacher_params}
    console.print(f"  student: {s.student_params / 1e6:.1f}M parameters (teacher {s.teacher_params / 1e6:.1f}M), "
                  f"training {sc.distill.max_steps} steps on {n} answers")
    tr = train(cfg, progress=True, force=True)
    result["train"] = {"steps": tr.steps, "examples": tr.examples, "first_loss": tr.first_loss, "last_loss": tr.last_loss,
                       "output": str(tr.output)}

    control_dir, contexts = None, None
    if sc.distill.control or sc.audit.enabled:
        # the same prompts answered without a watermark: the control student's data, and what the
        # audit has the suspects read (reading the watermarked texts themselves biases the test)
        limit = None if sc.distill.control else sc.audit.max_texts
        ctrl_cfg = _control_answers(sc, root, dataset, model_path, console, limit)
        contexts = ctrl_cfg.collect.output
        if sc.distill.control:
            control_dir = train(ctrl_cfg, progress=True, force=True).output
            result["control"] = {"output": str(control_dir)}

    if sc.audit.enabled:
        result["radioactivity"] = _audit(sc, server, collected, tr.output, cfg.student_init_path(), control_dir,
                                         contexts)
    try:
        ev = evaluate(cfg, progress=True)
        result["quality"] = ev
    except Exception as exc:  # noqa: BLE001 - quality numbers are reported as missing, the run goes on
        result["quality"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    return result


def _audit(sc: Scenario, server: ArenaServer, collected: dict[str, list[dict[str, Any]]], student: Path,
           student_init: Path, control: Path | None, contexts_path: Path) -> dict[str, Any]:
    from distillguard.watermark.audit import Example, audit_open_weights
    from distillguard.watermark.keys import KeyRing
    from distillguard.watermark.processors import WatermarkService

    cfg = server.watermark_config()
    keys = KeyRing.from_secret(server.watermark_key)
    tok = WatermarkService(cfg, keys).tokenizer
    examples = [Example(prompt=r["messages"], answer=r["response"]) for recs in collected.values() for r in recs
                if r["response"].strip()]
    contexts = [Example(prompt=r["messages"], answer=r["response"])
                for r in jsonl.loads(contexts_path.read_text(encoding="utf-8")) if r.get("response", "").strip()]
    contexts = contexts[: sc.audit.max_texts]
    out: dict[str, Any] = {"contexts": f"{len(contexts)} unwatermarked answers to the attacker's prompts ({contexts_path})"}
    res = audit_open_weights(student, examples, cfg.scheme_params(), keys, reference_tokenizer=tok,
                             control_keys=sc.audit.control_keys, reference_model=student_init, progress=True,
                             contexts=contexts)
    out["student"] = res.to_dict()
    if control is not None:
        out["control_student"] = audit_open_weights(control, examples, cfg.scheme_params(), keys, reference_tokenizer=tok,
                                                    control_keys=sc.audit.control_keys, progress=True,
                                                    contexts=contexts).to_dict()
    return out


def control_prompts(dataset: Path, out: Path, limit: int | None = None) -> Path:
    """The single-turn prompts of the attacker's dataset (the first ``limit``), as a prompt file for
    the control teacher (the same questions, answered without a watermark)."""
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for r in jsonl.loads(dataset.read_text(encoding="utf-8")):
            if len(r["messages"]) == 1 and (limit is None or n < limit):
                fh.write(json.dumps({"prompt": r["messages"][0]["content"]}, ensure_ascii=False) + "\n")
                n += 1
    return out


def _control_answers(sc: Scenario, root: Path, dataset: Path, model_path: Path | None, console: Console,
                     limit: int | None = None) -> Any:
    """Same prompts, answered by the same model with no watermark (local engine, temperature 0.7);
    returns the control's distill config (its collect output holds the answers). The control
    student trains on them; the audit reads them."""
    from distillguard.distill.collect import collect
    from distillguard.distill.config import PromptSource

    prompts = control_prompts(dataset, root / "control_prompts.jsonl", limit)
    cfg = distill_config(sc, root / "control", root / "control" / "teacher.jsonl", model_path, "control")
    data = cfg.model_dump()
    data["collect"].update(sources=[PromptSource(path=prompts, field="prompt").model_dump()],
                           max_tokens=max(r["completion_tokens"] for r in jsonl.loads(dataset.read_text(encoding="utf-8"))),
                           temperature=0.7)
    from distillguard.distill.config import DistillConfig

    cfg = DistillConfig.model_validate(data)
    console.print("  control: the same prompts answered without a watermark (local teacher)")
    collect(cfg, progress=True)
    return cfg
