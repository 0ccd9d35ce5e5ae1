"""Batched SmolLM2 generation with the watermark processors (transformers, float32 model).

On a shared 2-core machine one llama.cpp stream got ~1-5 tokens/s; decoding many rows per step
is far cheaper per token, and the same script runs on a GPU (``--device cuda``) when one is at
hand. Every row runs its own numpy logits processor (the same code the engines call, temperature
applied after the processor as in the engines), so the watermark is exactly the served one; the
model is SmolLM2-135M-Instruct dequantised from the served GGUF. Only the forward pass and the
final multinomial draw use the device; the keyed processors always run in numpy on the CPU
(rows in parallel threads: numpy releases the GIL), so a GPU run watermarks bit for bit like a
CPU run. Finished rows leave the batch. Rows are appended to bench/cache/<out> as they end, in
batches of about ``--batch-rows`` rows (``radio``: in the training order; within a batch, and for
``power`` overall, sorted by prompt length); a rerun resumes where a run stopped.

Configs: the names of ``watermark_generate.CONFIGS`` (ours), plus ``hf_kgw_anchor``:
transformers' built-in ``WatermarkLogitsProcessor`` (KGW, lefthash, h=1, green ratio 0.25,
bias 2, added after temperature as ``generate`` does; its green lists come from torch's CPU
``randperm``, so they are always built on the CPU here and in detection).

Prompt sets (``--set``):
* ``power``: chat prompts (watermark_common.chat_prompts) of at most ``--max-prompt-tokens``,
  the report split (idx >= 40) limited to ``--chat``, plus with ``--tune`` the tuning split, and
  ``--gsm8k`` GSM8K questions (gsm8k_train shuffled with seed 99, the first N).
* ``radio``: the radioactivity training prompts (watermark_common.radioactivity_prompts), the
  first ``--chat`` of them (of at most ``--max-prompt-tokens``); with ``--control-first N`` the
  ``none`` config only for the first N of their training order (watermark_common.radio_order).

    nice -n 10 .venv/bin/python bench/watermark_batchgen.py --set power --chat 240 --tune --gsm8k 100 \
        --configs none,gumbel1,kgw_anchor,hf_kgw_anchor
    nice -n 10 .venv/bin/python bench/watermark_batchgen.py --set radio --chat 1000 --max-tokens 128 \
        --max-prompt-tokens 200 --configs none,gumbel1_skip --out wm_radio.jsonl --batch-rows 64 \
        --control-first 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import (  # noqa: E402
    BENCH_SECRET, DATASETS, TUNE_N, append_cache, chat_prompts, radio_order, radioactivity_prompts, read_cache,
)
from watermark_generate import CONFIGS  # noqa: E402
from watermark_power import hf_anchor, load_model  # noqa: E402

from distillguard.watermark.schemes import Watermark  # noqa: E402

GSM_SUFFIX = "\nSolve it step by step, then write the final answer as '#### N'."
HF_ANCHOR = "hf_kgw_anchor"


def gsm8k_prompts() -> list[tuple[str, str]]:
    rows = [json.loads(x) for x in open(DATASETS / "gsm8k_train.jsonl", encoding="utf-8")]
    import random

    random.Random(99).shuffle(rows)
    return [(r["question"] + GSM_SUFFIX, r["answer"].split("####")[-1].strip()) for r in rows]


def chat_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def generate_batch(
    model,
    tok,
    prompts: list[str],
    processors: list[Callable[[np.ndarray, np.ndarray], np.ndarray] | None],
    *,
    temperature: float,
    max_tokens: int,
    device: str = "cpu",
    threads: int = 2,
    seed: int = 0,
    post_temperature: list[Callable[[np.ndarray, np.ndarray], np.ndarray] | None] | None = None,
    on_finish: Callable[[int, list[int], str, list[float]], None] | None = None,
    progress_every: int = 10,
) -> list[list[int]]:
    """Sample an answer for every prompt in one left-padded batch; returns the answer token ids.

    ``processors[i]`` (our numpy processors, before temperature, as the engines run them) and
    ``post_temperature[i]`` (the transformers anchor, after temperature) apply to row i.
    ``on_finish(i, ids, finish_reason, nll)`` is called as soon as row i ends; ``nll[k]`` is the
    negative log-likelihood of answer token k under the unwatermarked model at temperature 1
    (from the raw logits of the very forward pass that produced it), which is what the
    perplexity cost is measured on, with no second forward pass. Rows with the same prompt
    share one prefill (the configs of a prompt differ only from the first sampled token on).
    """
    import torch

    end_ids = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    post = post_temperature or [None] * len(prompts)
    uniq = list(dict.fromkeys(prompts))
    row_of = torch.tensor([uniq.index(p) for p in prompts], device=device)
    uniq_ids = [chat_ids(tok, p) for p in uniq]
    L = max(len(p) for p in uniq_ids)
    pad = next(iter(end_ids))
    input_ids = torch.tensor([[pad] * (L - len(p)) + p for p in uniq_ids], device=device)
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in uniq_ids], device=device)
    seqs = [list(uniq_ids[uniq.index(p)]) for p in prompts]
    gen: list[list[int]] = [[] for _ in prompts]
    nll: list[list[float]] = [[] for _ in prompts]
    alive = list(range(len(prompts)))
    g = torch.Generator(device=device).manual_seed(seed)
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    T = temperature
    t0 = time.time()

    def process_row(args: tuple[int, np.ndarray]) -> np.ndarray:
        j, row = args
        z = processors[j](np.asarray(seqs[j]), row) if processors[j] is not None else row
        z = z.astype(np.float64) / T
        if post[j] is not None:
            z = post[j](np.asarray(seqs[j]), z)
        return z

    with torch.inference_mode():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_select_indices(row_of)  # one prefill per distinct prompt, copied to its rows
        attn = attn[row_of]
        last = out.logits[:, -1][row_of]
        for step in range(max_tokens):
            logits = last.float().cpu().numpy()
            rows = list(pool.map(process_row, [(j, logits[r]) for r, j in enumerate(alive)]))
            z = torch.from_numpy(np.stack(rows)).to(device)
            tokens = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0].tolist()
            raw = torch.from_numpy(logits).double()
            tok_nll = (torch.logsumexp(raw, -1) - raw[torch.arange(len(alive)), torch.tensor(tokens)]).tolist()
            keep = []
            for r, j in enumerate(alive):
                t = int(tokens[r])
                if t in end_ids:
                    if on_finish:
                        on_finish(j, gen[j], "stop", nll[j])
                    continue
                gen[j].append(t)
                nll[j].append(round(float(tok_nll[r]), 5))
                seqs[j].append(t)
                keep.append(r)
            if step == max_tokens - 1 or not keep:
                for r in keep:
                    if on_finish:
                        on_finish(alive[r], gen[alive[r]], "length", nll[alive[r]])
                break
            attn = torch.cat([attn, torch.ones(len(alive), 1, dtype=attn.dtype, device=device)], -1)
            if len(keep) < len(alive):
                idx_t = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx_t)
                attn = attn[idx_t]
            alive = [alive[r] for r in keep]
            step_tokens = torch.tensor([[seqs[j][-1]] for j in alive], device=device)
            pos = attn.sum(-1, keepdim=True) - 1
            out = model(input_ids=step_tokens, attention_mask=attn, position_ids=pos, past_key_values=cache,
                        use_cache=True)
            last = out.logits[:, -1]
            if progress_every and step % progress_every == 0:
                print(f"step {step} alive {len(alive)} elapsed {time.time() - t0:.0f}s", flush=True)
    pool.shutdown()
    return gen


def hf_anchor_post(anchor) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """transformers' KGW processor as a numpy post-temperature step (bias on the tempered logits)."""
    import torch

    def apply(ids: np.ndarray, z: np.ndarray) -> np.ndarray:
        green = anchor._get_greenlist_ids(torch.tensor(ids[-anchor.context_width:], dtype=torch.long)).numpy()
        z = z.copy()
        z[green] += anchor.bias
        return z

    return apply


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="power", choices=["power", "radio"])
    ap.add_argument("--chat", type=int, default=48, help="chat prompts (power: from the report split, idx >= 40)")
    ap.add_argument("--tune", action="store_true", help="power: also the tuning split (idx < 40)")
    ap.add_argument("--gsm8k", type=int, default=0)
    ap.add_argument("--max-prompt-tokens", type=int, default=80)
    ap.add_argument("--configs", default="none,gumbel1")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default="wm_chat_hf.jsonl")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 2))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-rows", type=int, default=64, help="rows per batch (0: all in one batch)")
    ap.add_argument("--control-first", type=int, default=0,
                    help="radio: config 'none' only for the first N prompts of watermark_common.radio_order "
                         "(the control student's prompts); 0: all")
    ap.add_argument("--shard", default="0/1",
                    help="i/n: run only batches i, i+n, i+2n, ... of this run (n processes started together on "
                         "the same cache each take their share; on a busy machine n one-thread processes use "
                         "the CPU far better than one process with n threads)")
    a = ap.parse_args()
    shard_i, shard_n = (int(x) for x in a.shard.split("/"))
    if not 0 <= shard_i < shard_n:
        raise SystemExit(f"--shard {a.shard}: want i/n with 0 <= i < n")

    import torch

    torch.set_num_threads(min(a.threads, os.cpu_count() or 2))
    model, tok = load_model(a.device)
    done = {(r["task"], r["idx"], r["config"]) for r in read_cache(a.out)}
    jobs = []  # (task, idx, config, prompt, reference)
    names = a.configs.split(",")
    for n in names:
        if n not in CONFIGS and n != HF_ANCHOR:
            raise SystemExit(f"unknown config {n!r}: use one of {', '.join([*CONFIGS, HF_ANCHOR])}")

    def fits(p: str) -> bool:
        return len(tok(p, add_special_tokens=False)["input_ids"]) <= a.max_prompt_tokens

    if a.set == "power":
        chat = chat_prompts()
        # short prompts only: left padding to the longest prompt dominates the cost on a CPU
        report = [i for i in range(TUNE_N, len(chat)) if fits(chat[i])][: a.chat]
        tune = [i for i in range(TUNE_N) if fits(chat[i])] if a.tune else []
        gsm = gsm8k_prompts()
        for name in names:
            for i in tune + report:
                jobs.append(("chat", i, name, chat[i], None))
            for i in range(a.gsm8k):
                jobs.append(("gsm8k", i, name, gsm[i][0], gsm[i][1]))
    else:
        pool_ = radioactivity_prompts()
        chosen = [i for i in range(len(pool_)) if fits(pool_[i][1])][: a.chat]
        first = set(radio_order(chosen)[: a.control_first]) if a.control_first else set(chosen)
        for name in names:
            for i in chosen:
                if name == "none" and i not in first:
                    continue
                jobs.append(("radio", i, name, pool_[i][1], pool_[i][0]))
    jobs = [j for j in jobs if (j[0], j[1], j[2]) not in done]
    if not jobs:
        print("nothing to do")
        return
    T = a.temperature
    # one Watermark per config, shared by its rows: the row cache is per instance
    marks = {n: Watermark(CONFIGS[n], BENCH_SECRET, cache_size=2048) for n in names
             if n != HF_ANCHOR and CONFIGS[n] is not None}
    procs = [marks[j[2]].processor(T) if j[2] in marks else None for j in jobs]
    post = None
    if HF_ANCHOR in names:
        anchor_post = hf_anchor_post(hf_anchor(model.get_output_embeddings().weight.shape[0]))
        post = [anchor_post if j[2] == HF_ANCHOR else None for j in jobs]

    def finish(j: int, ids: list[int], reason: str, nll: list[float]) -> None:
        task, idx, name, prompt, ref = jobs[j]
        append_cache(a.out, {"task": task, "idx": idx, "config": name, "prompt": prompt, "reference": ref,
                             "token_ids": list(ids), "nll": list(nll), "text": tok.decode(ids, skip_special_tokens=True),
                             "finish_reason": reason, "engine": f"transformers-float32-batched-{a.device}",
                             "temperature": T, "max_tokens": a.max_tokens})

    t0, c0 = time.time(), time.process_time()
    # Batches of about --batch-rows rows; within a batch, jobs are sorted by prompt length (then
    # prompt, so the configs of one prompt share its prefill): left padding stays small. Every row is
    # appended to the cache as soon as it ends and a rerun skips cached rows, so an interruption
    # loses at most the unfinished rows of the current batch. Each batch draws from its own seed
    # (--seed + batch number): the batches of a resumed run are not the same as an uninterrupted
    # run's, which only matters for bit-for-bit reproduction.
    lengths = {p: len(chat_ids(tok, p)) for p in {j[3] for j in jobs}}
    size = a.batch_rows if a.batch_rows > 0 else len(jobs)
    if a.set == "radio":
        # in the training order (watermark_common.radio_order), a batch = the next prompts of that
        # order (both configs of a prompt in the same batch): a run cut short leaves exactly the
        # first K prompts of the order; within a batch, sorted by prompt length
        rank = {i: r for r, i in enumerate(radio_order(chosen))}
        by_rank = sorted(range(len(jobs)), key=lambda k: (rank[jobs[k][1]], k))
        batches, cur, cur_rank = [], [], None
        for k in by_rank:
            if cur and len(cur) >= size and rank[jobs[k][1]] != cur_rank:
                batches.append(cur)
                cur = []
            cur.append(k)
            cur_rank = rank[jobs[k][1]]
        batches.append(cur)
        batches = [sorted(bt, key=lambda k: (lengths[jobs[k][3]], jobs[k][3], k)) for bt in batches if bt]
    else:
        order = sorted(range(len(jobs)), key=lambda k: (lengths[jobs[k][3]], jobs[k][3], k))
        batches = [order[b : b + size] for b in range(0, len(order), size)]
    total, done_rows = 0, 0
    for bno, ks in enumerate(batches):
        if bno % shard_n != shard_i:
            continue

        def finish_k(r: int, ids: list[int], reason: str, nll: list[float], ks: list[int] = ks) -> None:
            finish(ks[r], ids, reason, nll)

        gen = generate_batch(model, tok, [jobs[k][3] for k in ks], [procs[k] for k in ks], temperature=T,
                             max_tokens=a.max_tokens, device=a.device, threads=a.threads, seed=a.seed + bno,
                             post_temperature=None if post is None else [post[k] for k in ks], on_finish=finish_k,
                             progress_every=0)
        total += sum(len(x) for x in gen)
        done_rows += len(ks)
        print(f"batch {bno + 1}/{len(batches)}: {done_rows}/{len(jobs)} answers, "
              f"{total} tokens, {time.time() - t0:.0f}s wall, {time.process_time() - c0:.0f}s CPU, "
              f"{total / (time.time() - t0):.1f} tok/s", flush=True)
    print(f"done: {len(jobs)} answers, {total} tokens in {time.time() - t0:.0f}s wall, "
          f"{time.process_time() - c0:.0f}s CPU")


if __name__ == "__main__":
    main()
