"""`distill eval`: how faithful each student is to its teacher, on held-out prompts.

Teacher-forced on the teacher's held-out answers (all models see the same tokens):
  top-1 agreement  share of answer positions where the model's argmax = the teacher's argmax
  KL               mean KL(teacher || model) of the next-token distributions
  perplexity       exp(mean NLL) of the teacher's answer tokens under the model
Free-running (greedy, batch 1, models interleaved prompt by prompt so they share the machine's load):
  ROUGE-L          F1 of the model's answer vs the teacher's collected answer (same token budget)
  GSM8K accuracy   final number vs the reference, for prompts from GSM8K
  tokens/s         decode speed
plus the parameter count. Rows: teacher, the untrained initial student, each trained student.
The teacher-forced metrics get 95% bootstrap intervals over held-out prompts, and the per-prompt
sums are kept in the JSON (``per_prompt``), so two runs can be compared prompt by prompt.
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from distillguard.distill.config import DistillConfig
from distillguard.distill.data import DataError, answer_logits, collate, encode, prompt_ids, split_records, to_device
from distillguard.distill.losses import kl
from distillguard.distill.modelio import check_same_tokenizer, load_model, load_teacher, param_count, resolve_device, resolve_teacher_path


# ---------------------------------------------------------------- text metrics


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    c, r = _words(candidate), _words(reference)
    if not c or not r:
        return float(c == r)
    prev = [0] * (len(r) + 1)
    for x in c:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """GSM8K convention: the answer follows '####'; otherwise take the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    nums = _NUM.findall(tail)
    if not nums:
        return None
    n = nums[-1].replace(",", "").rstrip(".")
    try:
        v = float(n)
    except ValueError:
        return None
    return str(int(v)) if v == int(v) else str(v)


# ---------------------------------------------------------------- evaluation


@dataclass
class ModelRow:
    name: str
    path: str
    params: int
    top1_agreement: float | None = None
    kl: float | None = None
    perplexity: float | None = None
    rouge_l: float | None = None
    gsm8k_accuracy: float | None = None
    gsm8k_n: int = 0
    tokens_per_s: float | None = None
    generated_tokens: int = 0
    #: 95% bootstrap intervals over held-out prompts (top1_agreement, kl, perplexity, ppl_ratio_vs_teacher)
    ci95: dict[str, list[float]] | None = None


def model_list(cfg: DistillConfig) -> list[tuple[str, Path]]:
    """Teacher first, then the initial student, each trained student, and any extra models."""
    models = [("teacher", resolve_teacher_path(cfg.teacher.model_path))] if cfg.teacher.kind == "local" else []
    if (cfg.student_init_path() / "config.json").is_file():
        models.append(("student-init", cfg.student_init_path()))
    if cfg.students_dir().is_dir():
        for d in sorted(cfg.students_dir().iterdir()):
            if (d / "distill_train.json").is_file() and (d / "config.json").is_file():
                models.append((d.name, d))
    models += list(cfg.eval.models.items())
    return models


def _load_for_eval(name: str, path: Path, threads: int, device: Any) -> tuple[Any, Any]:
    if name == "teacher":
        return load_teacher(path, threads=threads, device=device)
    model, tok = load_model(path, threads=threads)
    return model.to(device), tok


def evaluate(cfg: DistillConfig, progress: bool = True) -> dict[str, Any]:
    import torch

    e = cfg.eval
    torch.set_num_threads(e.threads)
    device = resolve_device(e.device)
    _, held = split_records(cfg.dataset_path(), cfg.heldout_fraction)
    if not held:
        raise DataError(
            f"no held-out answers in {cfg.dataset_path()} (heldout_fraction = {cfg.heldout_fraction}); "
            "collect more prompts or raise heldout_fraction"
        )
    specs = model_list(cfg)
    if not specs:
        raise DataError("nothing to evaluate: run `distill student` / `distill train` first")
    loaded = [(name, path, *_load_for_eval(name, path, e.threads, device)) for name, path in specs]
    tok = loaded[0][3]
    for name, _, _, t in loaded[1:]:
        check_same_tokenizer(tok, t, what=f"evaluating {name} against the teacher")
    has_teacher = specs[0][0] == "teacher"
    rows = {name: ModelRow(name, str(path), param_count(m)) for name, path, m, _ in loaded}

    examples = [x for x in (encode(r, tok, cfg.train.max_length, cfg.train.include_reasoning) for r in held[: e.max_prompts]) if x]
    gen_recs = held[: e.generate_prompts]
    # per held-out prompt: answer tokens, and each model's agreements, NLL and KL summed over them
    # (the totals below; bootstrap intervals; and paired comparisons of runs from the JSON)
    tok_per_prompt: list[int] = []
    per_prompt = {n: {"agree": [], "nll": [], "kl": []} for n in rows}
    gen: dict[str, dict[str, float]] = {n: {"rouge": 0.0, "tokens": 0, "seconds": 0.0, "gsm_ok": 0, "gsm_n": 0} for n in rows}
    with Progress(disable=not progress) as bar:
        t_forced = bar.add_task("eval teacher-forced", total=len(examples))
        for i in range(0, len(examples), 4):
            batch = to_device(collate(examples[i : i + 4], tok.pad_token_id), device)
            mask = batch["target_mask"]
            targets = batch["input_ids"][:, 1:][mask]
            sizes = mask.sum(1).tolist()  # answer rows of each prompt, in order
            tok_per_prompt += sizes

            t_logp = None
            with torch.no_grad():
                for name, _, model, _ in loaded:
                    logits = answer_logits(model, batch)
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    if t_logp is None and has_teacher:
                        t_logp = logp
                    pp = per_prompt[name]
                    pp["nll"] += _per_prompt(-logp.gather(-1, targets[:, None])[:, 0], sizes)
                    if t_logp is not None:
                        pp["agree"] += _per_prompt(logp.argmax(-1) == t_logp.argmax(-1), sizes)
                        pp["kl"] += _per_prompt(kl(t_logp, logp), sizes)
            bar.update(t_forced, advance=len(batch["input_ids"]))

        t_gen = bar.add_task("eval greedy answers", total=len(gen_recs) * len(loaded))
        for rec in gen_recs:
            p = prompt_ids(tok, rec["messages"])
            ref_ids = tok(rec["response"], add_special_tokens=False)["input_ids"][: e.max_new_tokens]
            reference = tok.decode(ref_ids, skip_special_tokens=True)
            for name, _, model, mtok in loaded:
                text, n_new, secs = greedy(model, mtok, p, e.max_new_tokens)
                g = gen[name]
                g["rouge"] += rouge_l(text, reference)
                g["tokens"] += n_new
                g["seconds"] += secs
                if rec.get("task") == "gsm8k" and rec.get("reference"):
                    g["gsm_n"] += 1
                    g["gsm_ok"] += int(final_number(text) == final_number(rec["reference"]))
                bar.update(t_gen, advance=1)

    n_tok = sum(tok_per_prompt)
    for name, row in rows.items():
        pp = per_prompt[name]
        if n_tok:
            row.perplexity = math.exp(sum(pp["nll"]) / n_tok)
            if has_teacher:
                row.top1_agreement = sum(pp["agree"]) / n_tok
                row.kl = sum(pp["kl"]) / n_tok
            row.ci95 = bootstrap_ci(tok_per_prompt, pp, per_prompt["teacher"] if has_teacher else None)
        g = gen[name]
        if gen_recs:
            row.rouge_l = g["rouge"] / len(gen_recs)
            row.tokens_per_s = g["tokens"] / g["seconds"] if g["seconds"] else None
            row.generated_tokens = int(g["tokens"])
        if g["gsm_n"]:
            row.gsm8k_accuracy = g["gsm_ok"] / g["gsm_n"]
            row.gsm8k_n = int(g["gsm_n"])

    result: dict[str, Any] = {
        "dataset": str(cfg.dataset_path()),
        "heldout_prompts_scored": len(examples),
        "heldout_tokens_scored": n_tok,
        "heldout_prompts_generated": len(gen_recs),
        "max_new_tokens": e.max_new_tokens,
        "threads": e.threads,
        "device": str(device),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "models": [asdict(r) for r in rows.values()],
        "per_prompt": {"ids": [x.id for x in examples], "answer_tokens": tok_per_prompt, **per_prompt},
    }
    if has_teacher:
        t_row = rows["teacher"]
        for r in result["models"]:
            r["speedup_vs_teacher"] = (r["tokens_per_s"] / t_row.tokens_per_s) if r["tokens_per_s"] and t_row.tokens_per_s else None
            r["ppl_ratio_vs_teacher"] = (r["perplexity"] / t_row.perplexity) if r["perplexity"] and t_row.perplexity else None
    out = cfg.eval_output()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def _per_prompt(values: Any, sizes: list[int]) -> list[float]:
    """Per-token values (answer rows of consecutive prompts) summed per prompt."""
    import torch

    return [float(x.sum()) for x in torch.split(values.float(), sizes)]


def bootstrap_ci(tokens: list[int], model: dict[str, list[float]], teacher: dict[str, list[float]] | None,
                 rounds: int = 2000, seed: int = 0) -> dict[str, list[float]] | None:
    """95% percentile-bootstrap intervals, resampling held-out prompts (the unit that varies).

    Token-level metrics are ratios of sums over the resampled prompts; the perplexity ratio is
    paired (the teacher's NLL on the same resample), so it does not carry the teacher's noise twice.
    """
    import numpy as np

    n = len(tokens)
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(rounds, n))
    tok = np.asarray(tokens, dtype=float)[idx].sum(1)
    stats = {"perplexity": np.exp(np.asarray(model["nll"])[idx].sum(1) / tok)}
    if teacher is not None and model["agree"]:
        stats["top1_agreement"] = np.asarray(model["agree"])[idx].sum(1) / tok
        stats["kl"] = np.asarray(model["kl"])[idx].sum(1) / tok
        stats["ppl_ratio_vs_teacher"] = np.exp((np.asarray(model["nll"]) - np.asarray(teacher["nll"]))[idx].sum(1) / tok)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in stats.items()}


def greedy(model: Any, tok: Any, prompt: list[int], max_new_tokens: int) -> tuple[str, int, float]:
    """Greedy answer (batch 1): (text, new tokens, seconds)."""
    import torch

    ids = torch.tensor([prompt], device=model.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    secs = time.perf_counter() - t0
    new = out[0, len(prompt) :].tolist()
    return tok.decode(new, skip_special_tokens=True), len(new), secs


def render_table(result: dict[str, Any], console: Console | None = None) -> None:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    t = Table(title=f"distill eval: {result['heldout_prompts_scored']} held-out prompts ({result['heldout_tokens_scored']} answer tokens), "
                    f"{result['heldout_prompts_generated']} answered greedily")
    for col in ["model", "params", "top-1 agree", "KL(T||S)", "ppl", "ppl/teacher", "ROUGE-L", "GSM8K", "tok/s", "speed-up"]:
        t.add_column(col, justify="left" if col == "model" else "right")
    def ci(r: dict[str, Any], key: str, fmt: str) -> str:
        lo_hi = (r.get("ci95") or {}).get(key)
        return "" if not lo_hi or r["name"] == "teacher" else f" ({format(lo_hi[0], fmt)}–{format(lo_hi[1], fmt)})"

    for r in result["models"]:
        gsm = "-" if r["gsm8k_accuracy"] is None else f"{r['gsm8k_accuracy']:.0%} of {r['gsm8k_n']}"
        t.add_row(
            r["name"], f"{r['params'] / 1e6:.1f}M", f(r["top1_agreement"], ".1%") + ci(r, "top1_agreement", ".1%"),
            f(r["kl"], ".3f"), f(r["perplexity"], ".3f"),
            f(r.get("ppl_ratio_vs_teacher"), ".2f") + ci(r, "ppl_ratio_vs_teacher", ".2f"), f(r["rouge_l"], ".3f"), gsm, f(r["tokens_per_s"], ".1f"),
            f(r.get("speedup_vs_teacher"), ".2f"),
        )
    (console or Console()).print(t)
