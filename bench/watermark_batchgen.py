"""Batched SmolLM2 generation with the watermark processors (transformers, float model).

On a shared 2-core machine one llama.cpp stream got ~1-5 tokens/s; decoding many rows per step
is far cheaper per token. Every row runs its own numpy logits processor (the same code the
engines call, temperature applied after the processor as in the engines), so the watermark is
exactly the served one; the model is SmolLM2-135M-Instruct dequantised from the served GGUF.
Finished rows leave the batch. Rows are appended to bench/cache/<out> like watermark_generate.py.

    nice -n 10 .venv/bin/python bench/watermark_batchgen.py --chat 48 --gsm8k 16 --configs none,gumbel1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, DATASETS, TUNE_N, append_cache, chat_prompts, read_cache  # noqa: E402
from watermark_generate import CONFIGS  # noqa: E402
from watermark_power import load_model  # noqa: E402

from distillguard.watermark.schemes import Watermark  # noqa: E402

GSM_SUFFIX = "\nSolve it step by step, then write the final answer as '#### N'."


def gsm8k_prompts() -> list[tuple[str, str]]:
    rows = [json.loads(x) for x in open(DATASETS / "gsm8k_train.jsonl", encoding="utf-8")]
    import random

    random.Random(99).shuffle(rows)
    return [(r["question"] + GSM_SUFFIX, r["answer"].split("####")[-1].strip()) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chat", type=int, default=48, help="chat prompts from the report split (idx >= 40)")
    ap.add_argument("--chat-start", type=int, default=TUNE_N)
    ap.add_argument("--gsm8k", type=int, default=16)
    ap.add_argument("--max-prompt-tokens", type=int, default=80)
    ap.add_argument("--configs", default="none,gumbel1")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default="wm_chat_hf.jsonl")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    model, tok = load_model()
    end_ids = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    done = {(r["task"], r["idx"], r["config"]) for r in read_cache(a.out)}
    chat = chat_prompts()
    gsm = gsm8k_prompts()
    jobs = []  # (task, idx, config, prompt, reference)
    # short prompts only: left padding to the longest prompt dominates the cost on this machine
    short = [i for i in range(a.chat_start, len(chat))
             if len(tok(chat[i], add_special_tokens=False)["input_ids"]) <= a.max_prompt_tokens][: a.chat]
    for name in a.configs.split(","):
        for i in short:
            jobs.append(("chat", i, name, chat[i], None))
        for i in range(a.gsm8k):
            jobs.append(("gsm8k", i, name, gsm[i][0], gsm[i][1]))
    jobs = [j for j in jobs if (j[0], j[1], j[2]) not in done]
    if not jobs:
        print("nothing to do")
        return
    T = a.temperature
    procs = [None if CONFIGS[j[2]] is None else Watermark(CONFIGS[j[2]], BENCH_SECRET).processor(T) for j in jobs]
    prompt_ids = [tok(tok.apply_chat_template([{"role": "user", "content": j[3]}], add_generation_prompt=True,
                                              tokenize=False), add_special_tokens=False)["input_ids"] for j in jobs]
    L = max(len(p) for p in prompt_ids)
    pad = next(iter(end_ids))
    input_ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompt_ids])
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompt_ids])
    seqs = [list(p) for p in prompt_ids]
    gen: list[list[int]] = [[] for _ in jobs]
    alive = list(range(len(jobs)))
    gcpu = torch.Generator().manual_seed(0)
    t0 = time.time()
    with torch.inference_mode():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        for step in range(a.max_tokens):
            logits = out.logits[:, -1].float().numpy()
            nxt = []
            for r, j in enumerate(alive):
                z = logits[r]
                if procs[j] is not None:
                    z = procs[j](np.asarray(seqs[j]), z)
                nxt.append(z)
            z = torch.from_numpy(np.stack(nxt)).double() / T
            tokens = torch.multinomial(torch.softmax(z, -1), 1, generator=gcpu)[:, 0].tolist()
            keep = []
            for r, j in enumerate(alive):
                t = int(tokens[r])
                if t in end_ids:
                    continue
                gen[j].append(t)
                seqs[j].append(t)
                keep.append(r)
            finished = [j for r, j in enumerate(alive) if r not in set(keep)]
            if step == a.max_tokens - 1:
                finished = list(alive)
            for j in finished:
                task, idx, name, prompt, ref = jobs[j]
                append_cache(a.out, {"task": task, "idx": idx, "config": name, "prompt": prompt, "reference": ref,
                                     "token_ids": gen[j], "text": tok.decode(gen[j], skip_special_tokens=True),
                                     "finish_reason": "length" if len(gen[j]) >= a.max_tokens else "stop",
                                     "engine": "transformers-float-batched"})
            if step == a.max_tokens - 1 or not keep:
                break
            attn = torch.cat([attn, torch.ones(len(alive), 1, dtype=attn.dtype)], -1)
            if len(keep) < len(alive):
                idx_t = torch.tensor(keep)
                cache.batch_select_indices(idx_t)
                attn = attn[idx_t]
            alive = [alive[r] for r in keep]
            step_tokens = torch.tensor([[seqs[j][-1]] for j in alive])
            pos = (attn.sum(-1, keepdim=True) - 1)
            out = model(input_ids=step_tokens, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True)
            if step % 10 == 0:
                print(f"step {step} alive {len(alive)} elapsed {time.time() - t0:.0f}s", flush=True)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
