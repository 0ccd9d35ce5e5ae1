"""Radioactivity end to end: SFT a layer-dropped SmolLM2 on N watermarked answers, then audit it.

1. Training data: SmolLM2 answers to the radioactivity prompts (watermark_common.radioactivity_prompts:
   chat sets, natural questions, GSM8K), generated once by watermark_batchgen.py ``--set radio``
   at temperature 0.7 with up to 128 new tokens, watermarked (``--wm-config``, default our
   default scheme ``gumbel1_skip``) and unwatermarked (``none``) on the same prompts, cached in
   bench/cache.
2. Students: SmolLM2-135M with decoder layers dropped, plain SFT (loss on answer tokens only):
   by default every other layer is dropped (keep 15 of 30, the student of the earlier runs);
   ``--drop-every 5`` drops layers 4, 9, ..., 29 instead (keep 24 of 30: a working student, see
   ``--heldout``, which reports its loss on held-out teacher answers before and after training).
   To fit a 2-core CPU budget there is ONE training run over the watermarked answers, not one
   per N: the cached prompts are put in a fixed order (watermark_common.radio_order, a hash of
   the prompt index), the student makes a single pass (1 epoch, constant learning rate, fixed
   batches) over the first max(--ns) of them, and it is audited in place after exactly 250, 500,
   1000 (``--ns``) examples. The N = 250 snapshot has seen the first 250 answers of that order
   once and nothing else: the same student a separate 1-epoch run on those 250 answers would
   give. (N must be a multiple of the batch size.) The control student is trained the same way
   (same order, learning rate, batch, one pass) on the unwatermarked answers of the first
   ``--control-n`` prompts (fewer than max(N) where the CPU budget is short), with snapshots at
   the N below control-n (reading mode only). Learning rate, batch and epochs were fixed before
   any result was seen. ``--epochs`` > 1 keeps the old design: one separate run per N (and for
   the control), reshuffled every epoch, no snapshots; the largest N and the control run first
   (side by side with ``--parallel-students``), the smaller N after them.
3. Audits with the bench key:
   * open weights (reading mode): every model reads the UNWATERMARKED answers to the first N
     prompts of the order (the prompts the snapshot was trained on; the control trained on these
     very answers; the untouched base model, the first ``--base-read``). Session 5 found that
     reading the watermarked texts themselves (the design of sessions 3-4) is biased: the
     tuples where a reader predicts the actual token score high, the others low, and the net
     depends on how often the reader predicts the text (bench/watermark_reading_bias.py);
     the base-model audit repeats that biased read (``open_weights_reading_watermarked_texts``).
     The results before session 5 (``watermark_radioactivity_keep24*.json``) used the biased
     read and are superseded;
   * black box: the model answers the first ``--blackbox-prompts`` prompts of the order (all
     of them seen by every snapshot; temperature 0.7, 128 tokens), its answers are scored with
     deduplication.
   Each audit also reports the same tuples scored under 5 random keys (what an unrelated key says).
   ``--filter-seen`` adds the reading audit restricted to windows seen in the served (watermarked)
   outputs, from the same read.
Wall and CPU time of every stage (training segment, each audit) are recorded, with the device.

    nice -n 10 .venv/bin/python bench/watermark_batchgen.py --set radio --chat 1000 --max-tokens 128 \
        --max-prompt-tokens 200 --configs none,gumbel1_skip --out wm_radio.jsonl --batch-rows 64 \
        --control-first 500
    nice -n 10 .venv/bin/python bench/watermark_radioactivity.py --ns 250,500,1000 --epochs 1 \
        --control-n 500 --base-read 500 --blackbox-prompts 50

The 24-of-30 student (bench/results/watermark_radioactivity_keep24.json; design fixed before any
result: the same recipe; control on the unwatermarked answers of the same first prompts; 32
held-out prompts after them for the loss). Planned for N up to 1000 with 1000 controls; the
shared CPU cut it to N = 248 (snapshots fall on batch boundaries: 248 is the multiple of 8 next
below 250) and 248 controls, no base-model audit (see the result's note). Generation in two
one-thread shards, the two students on two threads:

    for i in 0 1; do nice -n 10 .venv/bin/python bench/watermark_batchgen.py --set radio --chat 1032 \
        --max-tokens 128 --max-prompt-tokens 200 --configs none,gumbel1_skip --out wm_radio.jsonl \
        --batch-rows 64 --control-first 500 --threads 1 --shard $i/2 & done; wait
    nice -n 10 .venv/bin/python bench/watermark_radioactivity.py --drop-every 5 --ns 248 \
        --control-n 248 --heldout 32 --filter-seen --blackbox-prompts 24 --no-base \
        --parallel-students --name watermark_radioactivity_keep24 --note "..."
    # then, the machine freer, the watermarked student alone to N = 496 (..._keep24_n496.json):
    nice -n 10 .venv/bin/python bench/watermark_radioactivity.py --drop-every 5 --ns 248,496 \
        --control-n 0 --heldout 32 --filter-seen --blackbox-prompts 24 --no-base --threads 1 \
        --name watermark_radioactivity_keep24_n496 --note "..."
    # as planned (a freer machine): --ns 248,496,1000 --control-n 1000 --control-final-only, after
    # generating with --control-first 1000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, CACHE, radio_order, read_cache, write_result  # noqa: E402
from watermark_generate import CONFIGS  # noqa: E402

from distillguard.watermark.audit import (  # noqa: E402
    Example, TupleSet, _conclude, _encode_example, _ngrams, audit_answers, check_contexts, check_tokenizer,
    audit_shift, read_predictions, reading_tuples,
)
from distillguard.watermark.entropy import ReadingGate, ScoringModel  # noqa: E402
from distillguard.watermark.keys import KeyRing  # noqa: E402


_LOAD_LOCK = threading.Lock()
_THREAD_CPU = False  # --parallel-students: CPU time per thread (each student trains on its own thread)


def cpu_clock() -> float:
    """CPU seconds of this stage: the process's, or with --parallel-students the calling thread's
    (torch runs single-threaded then, so a student's work is all on its own thread)."""
    return time.thread_time() if _THREAD_CPU else time.process_time()


def kept_layers(n_layers: int, keep_every: int = 2, drop_every: int = 0) -> list[int]:
    """Indices of the decoder layers a layer-dropped student keeps.

    ``drop_every`` k > 0: drop every k-th layer (indices k-1, 2k-1, ...; k = 5 on 30 layers drops
    4, 9, 14, 19, 24, 29 and keeps 24); otherwise keep every ``keep_every``-th layer (0, 2, 4, ...:
    15 of 30 for the default 2, the student of the earlier runs).
    """
    if drop_every > 0:
        if drop_every < 2:
            raise SystemExit("--drop-every must be at least 2 (1 would drop every layer)")
        return [i for i in range(n_layers) if (i + 1) % drop_every]
    return list(range(0, n_layers, keep_every))


def layer_dropped_student(src: Path, out: Path, keep_every: int = 2, drop_every: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    layers = model.model.layers
    keep = kept_layers(len(layers), keep_every, drop_every)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_i, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_i
    model.model.layers = kept
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def sft_examples(tok, pairs: list[tuple[str, list[int], bool]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with the chat template's assistant header, answer ids [+ <|im_end|>]) per pair."""
    examples = []
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for prompt, ans, stopped in pairs:
        p = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=False), add_special_tokens=False)["input_ids"][-256:]
        examples.append((p, list(ans) + ([end] if stopped else [])))  # answers cut at 128 tokens get no end
    return examples


def batch_tensors(chunk: list[tuple[list[int], list[int]]], pad: int):
    """Right-padded (input_ids, labels, attention_mask); labels are -100 outside the answers."""
    import torch

    L = max(len(p) + len(a) for p, a in chunk)
    ids = torch.full((len(chunk), L), pad)
    labels = torch.full((len(chunk), L), -100)
    attn = torch.zeros((len(chunk), L), dtype=torch.long)
    for r, (p, a) in enumerate(chunk):
        seq = p + a
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, len(p) : len(seq)] = torch.tensor(a)
        attn[r, : len(seq)] = 1
    return ids, labels, attn


def answer_loss(model, tok, pairs: list[tuple[str, list[int], bool]], device: str, batch: int = 8) -> dict:
    """Mean cross-entropy per answer token (as trained: same template, same end token) with no update.

    Used on held-out teacher answers, to show the student is a working model before and after SFT.
    """
    import torch

    examples = sft_examples(tok, pairs)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(examples), batch):
            ids, labels, attn = batch_tensors(examples[b : b + batch], tok.pad_token_id or 0)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1].float()
            tgt = labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((tgt != -100).sum())
    if was_training:
        model.train()
    return {"texts": len(examples), "answer_tokens": count, "loss": total / max(count, 1)}


def sft(student: Path, pairs: list[tuple[str, list[int], bool]], epochs: int, lr: float, batch: int, device: str,
        *, shuffle: bool = True, checkpoints: list[int] | None = None, on_checkpoint=None, precision: str = "fp32"):
    """Plain SFT (loss on the answer tokens only); returns (model, tokenizer, stats).

    ``shuffle``: reshuffle the examples every epoch (seed 0); otherwise they are seen in the given
    order. ``on_checkpoint(model, tok, n, stats)`` is called after exactly n examples for each n in
    ``checkpoints`` (multiples of ``batch``), with the model in eval mode; the time it takes is not
    counted as training time. ``precision`` "bf16": bfloat16 autocast forward passes with float32
    weights and AdamW (the distillation pipeline's mixed precision; 1.8x on this CPU).
    """
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _LOAD_LOCK:  # from_pretrained is not thread-safe (--parallel-students loads two at once)
        tok = AutoTokenizer.from_pretrained(student)
        model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).to(device)
    if model.config.tie_word_embeddings and \
            model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise SystemExit(f"{student}: the output embeddings are not tied to the input embeddings after loading")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    examples = sft_examples(tok, pairs)
    checkpoints = sorted(set(checkpoints or []))
    for c in checkpoints:
        if c % batch or c > len(examples) * epochs:
            raise SystemExit(f"checkpoint {c} is not a multiple of the batch {batch} within the run")
    rnd = random.Random(0)
    steps, tokens, answer_tokens, seen = 0, 0, 0, 0
    train_wall, train_cpu, seg_losses = 0.0, 0.0, []
    t_wall, t_cpu = time.time(), cpu_clock()
    if shuffle:
        order = [i for _ in range(epochs) for i in rnd.sample(range(len(examples)), len(examples))]
    else:
        order = [i for _ in range(epochs) for i in range(len(examples))]
    loss = torch.tensor(float("nan"))

    def stats() -> dict:
        return {"examples": len(examples), "examples_seen": seen, "epochs": epochs, "lr": lr, "batch": batch,
                "shuffle": shuffle, "steps": steps, "tokens": tokens, "answer_tokens": answer_tokens,
                "final_loss": loss.item(), "wall_s": train_wall, "cpu_s": train_cpu,
                "tokens_per_s_wall": tokens / max(train_wall, 1e-9), "device": device, "precision": precision}

    for b in range(0, len(order), batch):
        ids, labels, attn = batch_tensors([examples[i] for i in order[b : b + batch]], tok.pad_token_id or 0)
        amp = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        with amp:
            loss = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
        seen += ids.shape[0]
        tokens += int(attn.sum())
        answer_tokens += int((labels != -100).sum())
        seg_losses.append(loss.item())
        if seen in checkpoints and on_checkpoint is not None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            train_wall += time.time() - t_wall
            train_cpu += cpu_clock() - t_cpu
            st = stats() | {"mean_loss_since_last_checkpoint": sum(seg_losses) / len(seg_losses)}
            seg_losses = []
            print(f"checkpoint after {seen} examples: {st['tokens']} tokens, train {train_wall:.0f}s wall "
                  f"{train_cpu:.0f}s CPU, loss {st['mean_loss_since_last_checkpoint']:.3f}", flush=True)
            model.eval()
            on_checkpoint(model, tok, seen, st)
            model.train()
            t_wall, t_cpu = time.time(), cpu_clock()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    model.eval()
    train_wall += time.time() - t_wall
    train_cpu += cpu_clock() - t_cpu
    return model, tok, stats()


class _Tok:
    """The watermark tokenizer interface over an HF tokenizer."""

    def __init__(self, tok):
        self._t = tok
        self.name, self.vocab_size = "smollm2", len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self._t(text, add_special_tokens=False)["input_ids"])


def reading_audits(model, tok, contexts: list[Example], served: list[Example], params, ring, suspect: str,
                   reference_tokenizer, control_keys: int = 5, filter_seen: bool = False,
                   masks: list | None = None) -> tuple:
    """Open-weight reading audit of ``contexts`` (unwatermarked), its ``filter_seen`` variant
    (windows of the ``served`` watermarked texts only) and, with ``masks`` (one per context, from
    ``entropy.ReadingGate``), its gated variant, all from ONE read of the contexts.

    The same as ``audit_loaded_model(..., contexts=contexts)`` with ``filter_seen`` False / True and
    with ``gate`` (tested equal), but the suspect reads the contexts once. Returns (result,
    filtered result or None, gated result or None).
    """
    started = time.time()
    check_tokenizer(tok, reference_tokenizer)
    encoded = [_encode_example(tok, ex) for ex in contexts]
    h = params.context_width
    tset, gset = TupleSet(h), TupleSet(h)
    for j, (prompt_ids, answer_ids) in enumerate(encoded):
        if len(answer_ids) <= h:
            continue
        preds = read_predictions(model, prompt_ids, answer_ids)
        n = len(preds)
        reading_tuples(answer_ids[:n], preds, prompt_ids, h, tset)
        if masks is not None:
            reading_tuples(answer_ids[:n], preds, prompt_ids, h, gset, eligible=masks[j][:n])
    res = _conclude("open-weights", suspect, len(contexts), tset, params, ring, control_keys, started)
    gated = None
    if masks is not None:
        gated = _conclude("open-weights", suspect, len(contexts), gset, params, ring, control_keys, started)
    if not filter_seen:
        return res, None, gated
    allowed = set().union(*(_ngrams(_encode_example(tok, ex)[1], h) for ex in served))
    fset = TupleSet(h)
    for t in tset.tuples:
        if t[:-1] in allowed:
            fset.add(t)
    return res, _conclude("open-weights", suspect, len(contexts), fset, params, ring, control_keys, started), gated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="250,500,1000", help="watermarked training-set sizes (snapshots of one run)")
    ap.add_argument("--control-n", type=int, default=1000, help="control answers (0: no control)")
    ap.add_argument("--cache", default="wm_radio.jsonl")
    ap.add_argument("--tasks", default="radio",
                    help="the cached task to train on: radio (the dedicated set), or e.g. chat to reuse the "
                         "power answers (cut to 128 tokens)")
    ap.add_argument("--wm-config", default="gumbel1_skip")
    ap.add_argument("--epochs", type=int, default=1,
                    help="1: one pass with in-place snapshots at each N; more: one separate run per N and for "
                         "the control (largest N and control first; two at a time with --parallel-students)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--blackbox-prompts", type=int, default=50)
    ap.add_argument("--save-students", action="store_true",
                    help="keep the final watermarked and control students in bench/cache/radioactivity")
    ap.add_argument("--control-final-only", action="store_true",
                    help="audit the control only after all its --control-n answers (no snapshots at smaller N)")
    ap.add_argument("--parallel-students", action="store_true",
                    help="train the watermarked and the control student at the same time on two threads, torch "
                         "single-threaded (the base audit follows the control); same numbers, better use of a "
                         "busy 2-core machine than one student with 2 torch threads")
    ap.add_argument("--no-base", action="store_true", help="skip auditing the untouched base model")
    ap.add_argument("--control-only", action="store_true",
                    help="train and audit only the control student (its watermarked counterpart ran before, "
                         "with the same order and recipe; the control reads the first --control-n watermarked texts)")
    ap.add_argument("--base-read", type=int, default=0,
                    help="watermarked texts the base model reads (the first N of the order; 0: max(ns))")
    ap.add_argument("--filter-seen", action="store_true", help="also the reading audit restricted to seen windows")
    ap.add_argument("--reading-gate", action="store_true",
                    help="also the reading audit gated on the teacher's top probability <= 0.5 (entropy.ReadingGate)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="student training precision")
    ap.add_argument("--shift-audit", action="store_true",
                    help="also the shift audit (audit.audit_shift: the suspect's whole distribution against the "
                         "teacher's, Chernoff p-value) on the same contexts")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the shared machine: 2 at most)")
    ap.add_argument("--keep-every", type=int, default=2,
                    help="student: keep every k-th decoder layer (2: 15 of 30, the earlier runs' student)")
    ap.add_argument("--drop-every", type=int, default=0,
                    help="student: drop every k-th decoder layer instead (5: drop 4, 9, ..., 29, keep 24 of 30)")
    ap.add_argument("--heldout", type=int, default=0,
                    help="teacher answers after the first max(ns, control-n) of the order, never trained on: "
                         "the student's loss on them before training, at each snapshot and for the teacher")
    ap.add_argument("--name", default="watermark_radioactivity")
    ap.add_argument("--note", default="", help="recorded in the result (e.g. why a run is smaller than planned)")
    a = ap.parse_args()

    import torch

    from watermark_batchgen import generate_batch
    from watermark_power import load_model

    global _THREAD_CPU
    _THREAD_CPU = a.parallel_students
    torch.set_num_threads(1 if a.parallel_students else max(1, min(a.threads, os.cpu_count() or 2)))
    tasks = a.tasks.split(",")
    rows = [r for r in read_cache(a.cache) if r.get("task") in tasks]
    by: dict[tuple[int, int], dict[str, dict]] = {}
    for r in rows:
        by.setdefault((tasks.index(r["task"]), r["idx"]), {})[r["config"]] = r
    if len(tasks) != 1:  # radio_order shuffles prompt indices of one task
        raise SystemExit("--tasks: give exactly one task")
    idxs = sorted(i for i, d in by.items() if a.wm_config in d)
    order = [(0, i) for i in radio_order([i for _, i in idxs])]
    ns = sorted(int(x) for x in a.ns.split(","))
    single_pass = a.epochs == 1
    train_end = max(max(ns), a.control_n)
    if len(idxs) < max(ns) + (a.heldout and train_end - max(ns) + a.heldout):
        raise SystemExit(f"only {len(idxs)} prompts have {a.wm_config} cached in {a.cache} (need max(ns) "
                         f"{max(ns)}, and {a.heldout} held out after the first {train_end}); "
                         f"generate more with watermark_batchgen.py --set radio")
    heldout = order[train_end : train_end + a.heldout] if a.heldout else []
    bad = [n for n in [*ns, a.control_n] if single_pass and n % a.batch]
    if bad:  # fail before hours of work, not at the first snapshot
        raise SystemExit(f"--ns/--control-n {bad}: a snapshot must fall on a batch boundary (a multiple of "
                         f"--batch {a.batch}), e.g. {[n - n % a.batch for n in bad]}")
    need_none = max(a.control_n, max(ns), a.base_read)  # controls train on them; every audit reads them
    missing = [i for i in order[:need_none] if "none" not in by[i]]
    if missing:
        raise SystemExit(f"{len(missing)} of the first {need_none} prompts have no 'none' answer in {a.cache}: "
                         f"generate them (watermark_batchgen.py --control-first {need_none}); the audits read "
                         "the unwatermarked answers and the control trains on them")
    params = CONFIGS[a.wm_config]
    ring = KeyRing.from_secret(BENCH_SECRET)
    base_model, base_tok = load_model(a.device)
    ref_tok = _Tok(base_tok)
    work = CACHE / "radioactivity"
    work.mkdir(parents=True, exist_ok=True)
    n_layers = base_model.config.num_hidden_layers
    keep = kept_layers(n_layers, a.keep_every, a.drop_every)
    init = work / f"student_init_keep_{'_'.join(map(str, keep))}"
    if not (init / "config.json").is_file():
        layer_dropped_student(CACHE / "smollm2_hf", init, a.keep_every, a.drop_every)
    student_desc = (f"the teacher with decoder layers {sorted(set(range(n_layers)) - set(keep))} dropped "
                    f"(keeps {len(keep)} of {n_layers}: "
                    + (f"every {a.drop_every}th dropped" if a.drop_every else f"every {a.keep_every}th kept")
                    + "), then SFT")

    def examples(cfg: str, n: int) -> list[Example]:
        # the answer as trained on: at most 128 tokens
        return [Example(prompt=[{"role": "user", "content": by[i][cfg]["prompt"]}],
                        answer=base_tok.decode(by[i][cfg]["token_ids"][:128], skip_special_tokens=True))
                for i in order[:n]]

    def answer_tokens(cfg: str, n: int) -> int:
        return sum(len(by[i][cfg]["token_ids"][:128]) for i in order[:n])

    # --reading-gate: score only context positions where the teacher had no dominant token
    # (entropy.ReadingGate, fixed a priori at top probability <= 0.5, temperature 0.7); the teacher
    # reads each context once, and the masks are shared by every audit (they do not depend on the suspect)
    reading_gate = ReadingGate(ScoringModel(base_model, base_tok, "the teacher (SmolLM2, float32)"),
                               max_top_prob=0.5, temperature=0.7)
    mask_cache: list = []
    mask_lock = threading.Lock()

    def reading_masks(n_read: int) -> list | None:
        if not a.reading_gate:
            return None
        with mask_lock:
            ctx = examples("none", n_read)
            for ex in ctx[len(mask_cache):]:
                p_ids, a_ids = _encode_example(base_tok, ex)
                mask_cache.append(reading_gate.eligible(p_ids, a_ids))
            return mask_cache[:n_read]

    def audits(model, tok, label: str, n_read: int, blackbox: bool = True, read_watermarked: bool = False) -> dict:
        out = {}
        wm_ex = examples(a.wm_config, n_read)
        ctx = examples("none", n_read)  # the same prompts answered without the watermark: what the suspect reads
        # a short, low-entropy answer can come out word for word the same with and without the key; such a
        # context IS a served text (reading it is the biased design), so it is left out (check_contexts refuses it)
        served = {e.answer.strip() for e in wm_ex}
        keep = [j for j, c in enumerate(ctx) if c.answer.strip() not in served]
        ctx = [ctx[j] for j in keep]
        masks = reading_masks(n_read)
        masks = None if masks is None else [masks[j] for j in keep]
        check_contexts(ctx, wm_ex, params, ring, ref_tok)
        t_w, t_c = time.time(), cpu_clock()
        # with --filter-seen: only windows seen in the served (watermarked) outputs, from the same read
        ow, ow_f, ow_g = reading_audits(model, tok, ctx, wm_ex, params, ring, label, ref_tok, 5, a.filter_seen,
                                        masks)
        out["open_weights"] = ow.to_dict() | {"read_texts": n_read, "contexts": "unwatermarked answers to the "
                                              "same prompts", "wall_s": time.time() - t_w, "cpu_s": cpu_clock() - t_c}
        if ow_f is not None:
            out["open_weights_filter_seen"] = {"p_value": ow_f.p_value, "tuples_scored": ow_f.tuples_scored,
                                               "control": ow_f.control}
        if ow_g is not None:
            out["open_weights_gated"] = {"p_value": ow_g.p_value, "tuples_scored": ow_g.tuples_scored,
                                         "control": ow_g.control, "gate": reading_gate.describe()}
            print(f"{label}: gated open-weights p = {ow_g.p_value:.3g} ({ow_g.tuples_scored} tuples)", flush=True)
        if a.shift_audit and model is not base_model:  # the base model IS the reference: its shift is zero
            t_w, t_c = time.time(), cpu_clock()
            sh = audit_shift(model, base_model, tok, ctx, params, ring, label, control_keys=5, progress=False)
            out["open_weights_shift"] = sh.to_dict() | {"reference": "the teacher (SmolLM2, float32)",
                                                        "wall_s": time.time() - t_w, "cpu_s": cpu_clock() - t_c}
            print(f"{label}: shift audit p <= {sh.p_value:.3g} ({sh.tuples_scored} (window, token) shifts)", flush=True)
        if read_watermarked:  # the biased design of sessions 3-4, kept to show the bias
            t_w = time.time()
            biased = reading_audits(model, tok, wm_ex, wm_ex, params, ring, label, ref_tok, 5, False)[0]
            out["open_weights_reading_watermarked_texts"] = biased.to_dict() | {
                "note": "BIASED design (sessions 3-4): the suspect reads the watermarked texts themselves; any "
                        "model that predicts them well scores high", "wall_s": time.time() - t_w}
            print(f"{label}: reading the watermarked texts (biased) p = {biased.p_value:.3g}", flush=True)
        if not blackbox or a.blackbox_prompts <= 0:
            print(f"{label}: open-weights p = {ow.p_value:.3g} ({ow.tuples_scored} tuples)", flush=True)
            return out
        bb_ex = wm_ex[: a.blackbox_prompts]
        t_w, t_c = time.time(), cpu_clock()
        gen = generate_batch(model, tok, [e.prompt[0]["content"] for e in bb_ex], [None] * len(bb_ex),
                             temperature=0.7, max_tokens=128, device=a.device, seed=1, progress_every=0)
        texts = [tok.decode(g, skip_special_tokens=True) for g in gen]
        bb = audit_answers(label, bb_ex, texts, params, ring, ref_tok, control_keys=5)
        out["black_box"] = bb.to_dict() | {"prompts": len(bb_ex), "wall_s": time.time() - t_w,
                                           "cpu_s": cpu_clock() - t_c}
        print(f"{label}: open-weights p = {ow.p_value:.3g} ({ow.tuples_scored} tuples), "
              f"black-box p = {bb.p_value:.3g} ({bb.tuples_scored} tuples)", flush=True)
        return out

    result: dict = {
        "setup": {
            "teacher": "SmolLM2-135M-Instruct (float32, dequantised from the served GGUF)",
            "student": student_desc, "student_layers_kept": keep,
            "data": f"{a.cache} tasks {a.tasks}: SmolLM2 answers at temperature 0.7, cut to <= 128 tokens, "
                    "generated once and reused (radio = watermark_common.radioactivity_prompts(); chat/gsm8k = "
                    "the power and GSM8K runs' answers)",
            "order": "the cached prompts with a watermarked answer, in watermark_common.radio_order (sorted by "
                     "a sha256 hash of the prompt index); 'the first N' means the first N of this order",
            "training": ("ONE pass (1 epoch, fixed order, constant lr) over the first max(ns) watermarked answers; "
                         "each N is an in-place snapshot after exactly N examples, so the N snapshot has seen the "
                         "first N answers once and nothing else. The control is trained the same way on the "
                         "unwatermarked answers of the first control_n prompts") if single_pass else
                        "one separate run per N (and for the control), reshuffled every epoch",
            "wm_config": a.wm_config, "params": params.describe(), "device": a.device,
            "epochs": a.epochs, "lr": a.lr, "batch": a.batch, "blackbox_prompts": a.blackbox_prompts,
            "ns": ns, "control_n": a.control_n, "control_final_only": a.control_final_only,
            "prompts_available": len(idxs),
            "base_read": a.base_read or max(ns), "threads": 1 if a.parallel_students else a.threads,
            "parallel_students": a.parallel_students, "control_only": a.control_only, "heldout": a.heldout, "note": a.note,
        },
        "students": {},
    }

    def pairs_at(cfg: str, keys: list) -> list[tuple[str, list[int], bool]]:
        return [(by[i][cfg]["prompt"], by[i][cfg]["token_ids"][:128],
                 by[i][cfg]["finish_reason"] == "stop" and len(by[i][cfg]["token_ids"]) <= 128) for i in keys]

    def pairs_of(cfg: str, n: int) -> list[tuple[str, list[int], bool]]:
        return pairs_at(cfg, order[:n])

    heldout_pairs = pairs_at(a.wm_config, heldout)
    if heldout_pairs:  # is the student a working model before any training? (and the teacher, for scale)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t_w = time.time()
        s_tok = AutoTokenizer.from_pretrained(init)
        s_model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32).to(a.device).eval()
        result["heldout_loss"] = {
            "description": f"mean cross-entropy per answer token on the {a.wm_config} teacher answers of the "
                           f"{len(heldout)} prompts after the first {train_end} of the order (never trained on)",
            "teacher": answer_loss(base_model, base_tok, heldout_pairs, a.device),
            "student_before_training": answer_loss(s_model, s_tok, heldout_pairs, a.device),
        }
        del s_model
        result["heldout_loss"]["wall_s"] = time.time() - t_w
        print("held-out loss: teacher {:.3f}, student before training {:.3f}".format(
            result["heldout_loss"]["teacher"]["loss"], result["heldout_loss"]["student_before_training"]["loss"]),
            flush=True)
        write_result(a.name, result | {"partial": True})

    lock = threading.Lock()  # --parallel-students: two threads record into one result

    def save_partial(partial) -> None:
        with lock:
            write_result(a.name, result | {"partial": partial})

    def record(label: str, cfg: str, n: int, train: dict, model, tok, blackbox: bool = True) -> None:
        train = train | {"training_answer_tokens": answer_tokens(cfg, n)}
        if heldout_pairs:
            train["heldout_loss"] = answer_loss(model, tok, heldout_pairs, a.device)["loss"]
            print(f"{label}: held-out loss {train['heldout_loss']:.3f}", flush=True)
        entry = {"config": cfg, "n": n, "train": train} | audits(model, tok, label, n, blackbox)
        with lock:
            result["students"][label] = entry
        save_partial(True)  # a run cut short keeps what it measured

    def base_audit() -> None:
        t_w, t_c = time.time(), cpu_clock()
        out = audits(base_model, base_tok, "base SmolLM2 (generated the texts)", a.base_read or max(ns), True,
                     read_watermarked=True)
        with lock:
            result["base_model_never_trained"] = out | {"stage_wall_s": time.time() - t_w,
                                                        "stage_cpu_s": cpu_clock() - t_c}
        save_partial(True)

    t_stage = time.time(), time.process_time()
    cn = a.control_n
    if single_pass:
        def train_watermarked() -> dict:
            t_w, t_c = time.time(), cpu_clock()

            def wm_checkpoint(model, tok, n, st):
                record(f"watermarked_n{n}", a.wm_config, n, st, model, tok)

            model, tok, _ = sft(init, pairs_of(a.wm_config, max(ns)), 1, a.lr, a.batch, a.device, shuffle=False,
                                checkpoints=ns, on_checkpoint=wm_checkpoint, precision=a.precision)
            if a.save_students:
                model.save_pretrained(work / "student_watermarked"), tok.save_pretrained(work / "student_watermarked")
            del model
            return {"wall_s": time.time() - t_w, "cpu_s": cpu_clock() - t_c}

        ctrl_points = [cn] if a.control_final_only else sorted({n for n in ns if n < cn} | {cn})

        def ctrl_checkpoint(model, tok, n, st):  # black box only for the final control
            record(f"control_n{n}", "none", n, st, model, tok, blackbox=n == cn)

        def train_control() -> dict:
            t_w, t_c = time.time(), cpu_clock()
            if cn > 0:
                model, tok, _ = sft(init, pairs_of("none", cn), 1, a.lr, a.batch, a.device, shuffle=False,
                                    checkpoints=ctrl_points, on_checkpoint=ctrl_checkpoint, precision=a.precision)
                if a.save_students:
                    model.save_pretrained(work / "student_control"), tok.save_pretrained(work / "student_control")
                del model
            return {"wall_s": time.time() - t_w, "cpu_s": cpu_clock() - t_c}

        if a.parallel_students:
            def control_then_base() -> dict:
                out = train_control()
                if not a.no_base:
                    base_audit()
                return out

            with ThreadPoolExecutor(max_workers=2) as pool:
                fw, fc = pool.submit(train_watermarked), pool.submit(control_then_base)
                threads_stage = {"watermarked": fw.result(),
                                 "control" if a.no_base else "control_then_base_audit": fc.result()}
            result["thread_stages"] = threads_stage | {
                "note": "--parallel-students: the watermarked student on one thread, the control (then the base "
                        "audit) on another, torch single-threaded; cpu_s are per thread"}
        elif a.control_only:
            train_control()
        else:
            train_watermarked()
            train_control()
    else:
        # one separate run per N (and for the control), reshuffled every epoch with the same seed; the
        # largest N and the control first (two threads with --parallel-students), then the smaller N
        jobs = [(f"watermarked_n{n}", a.wm_config, n) for n in sorted(ns, reverse=True)]
        if cn > 0:
            jobs.insert(1, (f"control_n{cn}", "none", cn))
        if a.control_only:
            jobs = [j for j in jobs if j[1] == "none"]

        def run_job(job: tuple[str, str, int]) -> tuple[str, dict]:
            label, cfg, n = job
            t_w, t_c = time.time(), cpu_clock()
            model, tok, train = sft(init, pairs_of(cfg, n), a.epochs, a.lr, a.batch, a.device, precision=a.precision)
            record(label, cfg, n, train, model, tok)
            if a.save_students and n == (cn if cfg == "none" else max(ns)):
                name = "student_control" if cfg == "none" else "student_watermarked"
                model.save_pretrained(work / name), tok.save_pretrained(work / name)
            del model
            return label, {"wall_s": time.time() - t_w, "cpu_s": cpu_clock() - t_c}

        with ThreadPoolExecutor(max_workers=2 if a.parallel_students else 1) as pool:
            result["run_stages"] = dict(pool.map(run_job, jobs)) | {
                "note": "one training run and its audits per entry" + (
                    "; --parallel-students: two at a time on two threads, torch single-threaded; cpu_s per "
                    "thread" if a.parallel_students else "")}
    result["students_stage"] = {"wall_s": time.time() - t_stage[0], "cpu_s": time.process_time() - t_stage[1],
                                "note": "training and every audit of the students (process CPU time)"}
    p_max = result["students"].get(f"watermarked_n{max(ns)}", {}).get("open_weights", {}).get("p_value")
    ctrl = result["students"].get(f"control_n{a.control_n}")
    pc = ctrl["open_weights"]["p_value"] if ctrl else None
    result["goals"] = {f"open_weights_p_at_n{max(ns)}<=1e-6": None if p_max is None else p_max <= 1e-6,
                       f"control_n{a.control_n}_open_weights_p>0.01": None if pc is None else pc > 0.01}
    if a.shift_audit:
        sh = result["students"].get(f"watermarked_n{max(ns)}", {}).get("open_weights_shift", {}).get("p_value")
        shc = (ctrl or {}).get("open_weights_shift", {}).get("p_value")
        result["goals"] |= {f"open_weights_shift_p_at_n{max(ns)}<=1e-6": None if sh is None else sh <= 1e-6,
                            f"control_n{a.control_n}_shift_p>0.01": None if shc is None else shc > 0.01}
    if not a.no_base and "base_model_never_trained" not in result:
        save_partial("the base-model audit is still running")  # the students' numbers are complete
        base_audit()
    print("wrote", write_result(a.name, result))


if __name__ == "__main__":
    main()
