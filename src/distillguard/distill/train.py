"""`distill train`: fit the student to the teacher, one readable loop.

Three methods, chosen by ``train.method``:
- ``sft``    sequence-level KD (Kim & Rush 2016): cross-entropy on the teacher's answer tokens;
             works across tokenizers because only text crosses over.
- ``logits`` token-level KD on the full next-token distributions of a local teacher run alongside
             (forward KL, reverse KL or generalised JSD, with temperature).
- ``topk``   token-level KD from the top-k logprobs an API returned at collect time, the rest of
             the mass in a tail bucket.

KD and CE are computed on answer tokens only; ``train.hidden_weight`` adds hidden-state alignment
(every real token) for a student made of kept teacher layers. ``train.precision = "bf16"`` runs the forward passes under
bfloat16 autocast (mixed precision), about twice as fast on CPUs with AMX. Checkpoints (model + optimizer + scheduler + step) go to
``<output>/checkpoint`` every ``save_every`` steps; rerunning the same command resumes from it.
Batch order is a pure function of (seed, step), so a resumed run sees the same batches.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distillguard.distill.config import DistillConfig
from distillguard.distill.data import (
    DataError, Example, answer_logits, collate, encode, encode_topk, make_batches, split_records, to_device, token_index,
)
from distillguard.distill.losses import alignment_pairs, hidden_alignment_loss, kd_loss, topk_kd_loss
from distillguard.distill.modelio import check_same_tokenizer, load_model, load_teacher, resolve_device, resolve_teacher_path


@dataclass
class TrainSummary:
    output: Path
    method: str
    loss: str
    steps: int
    resumed_from: int
    examples: int
    skipped: int
    first_loss: float | None
    last_loss: float | None
    seconds: float
    tokens: int
    #: steps actually run when max_minutes stopped training before ``steps``
    stopped_at: int | None = None
    #: CPU seconds (all threads, this process) spent in the training steps
    cpu_seconds: float | None = None
    #: where it trained ("cpu", "cuda", ...)
    device: str | None = None


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine to 10%

    return f


def autocast(precision: str, device_type: str = "cpu") -> Any:
    """bfloat16 autocast on ``device_type`` for ``precision == "bf16"``, else a no-op context.

    Only the forward passes run in bfloat16; the losses take ``.float()`` logits, and the master
    weights and AdamW state stay float32 (standard mixed precision).
    """
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX-512 BF16 or AMX).

    Without them (AVX2-only CPUs, e.g. many AMD EPYC VMs) torch emulates bf16 and autocast is
    far slower than fp32: on an AVX2-only AMD EPYC a logit-KD step of the 15-layer SmolLM2 student
    took 121 CPU-s in bf16 against 12.5 in fp32 (9.7x; bench/results/distill_precision_avx2.json).
    """
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in checks if f is not None)


def batch_loss(student: Any, teacher: Any, batch: dict[str, Any], cfg: DistillConfig,
               pairs: list[tuple[int, int]] | None = None) -> tuple[Any, dict[str, float]]:
    """The loss of one batch: KD / CE on answer tokens, hidden alignment (``pairs``) on every real token."""
    import torch
    import torch.nn.functional as F

    t = cfg.train
    mask = batch["target_mask"]
    align = t.method == "logits" and t.hidden_weight > 0
    if align and not pairs:
        raise DataError("train.hidden_weight > 0 needs the (student, teacher) layer pairs to align")
    dtype = batch["input_ids"].device.type
    with autocast(t.precision, dtype):
        s = answer_logits(student, batch, hidden=align)  # [N answer tokens, V] (, hidden states)
    s, s_hidden = s if align else (s, None)
    targets = batch["input_ids"][:, 1:][mask]
    ce = F.cross_entropy(s.float(), targets)
    if t.method == "sft":
        return ce, {"ce": float(ce.detach())}
    parts: dict[str, float] = {}
    extra = 0.0
    if t.method == "logits":
        with torch.no_grad(), autocast(t.precision, dtype):
            tl = answer_logits(teacher, batch, hidden=align)
        tl, t_hidden = tl if align else (tl, None)
        kd = kd_loss(s, tl, t.loss, t.beta, t.temperature)
        if align:
            hl = hidden_alignment_loss(s_hidden, t_hidden, pairs, batch["attention_mask"])
            extra = t.hidden_weight * hl
            parts["hidden"] = float(hl.detach())
    else:
        kd = topk_kd_loss(s, batch["top_ids"], batch["top_logp"], batch["top_valid"], t.loss, t.beta)
    return kd + t.ce_weight * ce + extra, {"kd": float(kd.detach()), "ce": float(ce.detach()), **parts}


def layer_pairs(cfg: DistillConfig, teacher: Any) -> list[tuple[int, int]] | None:
    """The hidden states to align, from the kept layers ``distill student`` recorded (None when off)."""
    t = cfg.train
    if t.hidden_weight <= 0:
        return None
    if t.method != "logits":
        raise DataError(f"train.hidden_weight needs method 'logits' (a local teacher's hidden states), not {t.method!r}")
    src = Path(t.student or cfg.student_init_path())
    meta = src / "distill_student.json"
    kept = json.loads(meta.read_text()).get("kept_layers") if meta.is_file() else None
    if not kept:
        raise DataError(
            f"train.hidden_weight > 0 needs a student made of kept teacher layers, and {src} records none "
            "(no distill_student.json with kept_layers): build it with `distill student` and student.layers, or set hidden_weight = 0"
        )
    pairs = alignment_pairs(kept, int(teacher.config.num_hidden_layers))
    if not pairs:
        raise DataError(f"the student keeps teacher layers {kept} with none dropped between them: nothing to align; set hidden_weight = 0")
    return pairs


def prepare(cfg: DistillConfig, tok: Any) -> tuple[list[Example], int]:
    t = cfg.train
    train_recs, _ = split_records(cfg.dataset_path(), cfg.heldout_fraction)
    if t.method == "topk":
        if not any(r.get("logprobs") for r in train_recs):
            raise DataError(
                "train.method = 'topk' needs teacher logprobs, and the dataset has none: collect again with "
                "collect.top_logprobs = 5 (if the teacher's API returns them), or use method 'sft'"
            )
        index = token_index(tok)
        made = [encode_topk(r, tok, t.max_length, index) for r in train_recs]
    else:
        made = [encode(r, tok, t.max_length, t.include_reasoning) for r in train_recs]
    examples = [e for e in made if e is not None]
    if not examples:
        hint = " (their tokens are not in the student's vocabulary: use method 'sft')" if t.method == "topk" else ""
        raise DataError(f"none of the {len(train_recs)} training answers could be used{hint}")
    return examples, len(made) - len(examples)


def train(cfg: DistillConfig, progress: bool = True, force: bool = False) -> TrainSummary:
    import torch

    t = cfg.train
    done = cfg.train_output() / "distill_train.json"
    if done.is_file() and not force:
        d = json.loads(done.read_text())
        d.pop("config", None)
        d["output"] = Path(d["output"])
        return TrainSummary(**d)  # finished earlier: nothing to resume
    torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    device = resolve_device(t.device)
    if t.precision == "bf16" and device.type == "cpu" and not bf16_is_fast():
        warnings.warn(
            "train.precision = 'bf16' on a CPU without AVX-512 BF16 or AMX: torch emulates bfloat16 here and "
            "training runs many times slower than fp32 (about 10x on an AVX2-only EPYC); set train.precision = 'fp32' (or --precision fp32)",
            stacklevel=2,
        )
    out = cfg.train_output()
    ckpt = out / "checkpoint"
    student_src = t.student or cfg.student_init_path()
    if not Path(student_src).exists():
        raise DataError(f"student {student_src} does not exist; run `distillguard distill student` first")
    resumed_from = 0
    state: dict[str, Any] | None = None
    if (ckpt / "trainer_state.pt").is_file():
        # on the CPU first: a checkpoint written on a GPU resumes anywhere (the optimizer moves its state to the params)
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False, map_location="cpu")
        student, tok = load_model(ckpt, threads=t.threads)
        resumed_from = int(state["step"])
    else:
        student, tok = load_model(student_src, threads=t.threads)
    student.to(device)

    teacher = None
    if t.method == "logits":
        if cfg.teacher.kind == "openai":
            raise DataError(
                "train.method = 'logits' needs a local teacher (its full logits); the teacher is an API: "
                "use method 'topk' (collect with top_logprobs) or 'sft'"
            )
        teacher, teacher_tok = load_teacher(resolve_teacher_path(cfg.teacher.model_path), threads=t.threads, device=device)
        check_same_tokenizer(teacher_tok, tok)
        if t.precision == "bf16":
            # frozen: cast once, not at every forward under autocast; a copy, because the cached
            # teacher is shared with later steps in this process (eval scores against float32)
            teacher = copy.deepcopy(teacher).to(torch.bfloat16)
    pairs = layer_pairs(cfg, teacher)  # None when off; a clear error for a method without a teacher

    examples, skipped = prepare(cfg, tok)
    batches = make_batches(examples, t.batch_size)
    per_epoch = math.ceil(len(batches) / t.grad_accum)
    total = t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * per_epoch))

    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=t.learning_rate, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(t.warmup_steps, total))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    student.train()

    def batch_at(g: int) -> list[Example]:
        epoch, pos = divmod(g, len(batches))
        order = list(range(len(batches)))
        random.Random(t.seed * 1000003 + epoch).shuffle(order)
        return [examples[i] for i in batches[order[pos]]]

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    first_loss = last_loss = None
    tokens = 0
    stopped_at = None
    t0, c0 = time.perf_counter(), time.process_time()
    bar = Progress(
        TextColumn(f"train {t.run_name()}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress,
    )
    with bar, log_path.open("a") as log:
        task = bar.add_task("train", total=total, completed=resumed_from, loss="-")
        for step in range(resumed_from, total):
            opt.zero_grad(set_to_none=True)
            parts: dict[str, float] = {}
            step_loss = 0.0
            for micro in range(t.grad_accum):
                batch = to_device(collate(batch_at(step * t.grad_accum + micro), tok.pad_token_id), device)
                loss, parts = batch_loss(student, teacher, batch, cfg, pairs)
                (loss / t.grad_accum).backward()
                step_loss += float(loss.detach()) / t.grad_accum
                tokens += int(batch["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            first_loss = step_loss if first_loss is None else first_loss
            last_loss = step_loss
            log.write(json.dumps({"step": step + 1, "loss": step_loss, **parts, "lr": sched.get_last_lr()[0]}) + "\n")
            log.flush()
            bar.update(task, advance=1, loss=f"{step_loss:.4f}")
            if t.max_minutes is not None and time.perf_counter() - t0 > 60 * t.max_minutes and step + 1 < total:
                stopped_at = step + 1
                break
            if (step + 1) % t.save_every == 0 and step + 1 < total:
                _save_checkpoint(student, tok, opt, sched, step + 1, ckpt)

    student.eval()
    student.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    summary = TrainSummary(
        out, t.method, t.loss if t.method != "sft" else "ce", total, resumed_from, len(examples), skipped,
        first_loss, last_loss, time.perf_counter() - t0, tokens, stopped_at, time.process_time() - c0, str(device),
    )
    (out / "distill_train.json").write_text(
        json.dumps({**asdict(summary), "output": str(out), "config": json.loads(t.model_dump_json())}, indent=2)
    )
    if ckpt.exists():
        shutil.rmtree(ckpt)  # the finished model is saved; a rerun starts a fresh run
    return summary


def _save_checkpoint(model: Any, tok: Any, opt: Any, sched: Any, step: int, ckpt: Path) -> None:
    """Write to a temporary folder, then swap it in: a kill never leaves a half checkpoint."""
    import torch

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "trainer_state.pt")
    if ckpt.exists():
        shutil.rmtree(ckpt)
    tmp.rename(ckpt)
