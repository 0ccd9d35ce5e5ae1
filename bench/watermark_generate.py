"""Generate SmolLM2 chat answers (llama.cpp, temperature 0.7) with and without each watermark.

Configs run interleaved per prompt, so a run cut short still compares them on the same prompts.
Appends to bench/cache/<file>; rerunning skips (prompt, config) pairs already cached.

    nice -n 10 .venv/bin/python bench/watermark_generate.py --start 0 --count 240 \
        --configs none,gumbel1,kgw_anchor,kgw_sweet --out wm_chat.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, append_cache, chat_prompts, read_cache  # noqa: E402

from distillguard.engines.base import SamplingParams  # noqa: E402
from distillguard.watermark.schemes import SchemeParams, Watermark  # noqa: E402

CONFIGS: dict[str, SchemeParams | None] = {
    "none": None,
    "gumbel1": SchemeParams(scheme="gumbel", context_width=1),
    "gumbel1_skip": SchemeParams(scheme="gumbel", context_width=1, skip_repeated=True),
    "gumbel1_reseed": SchemeParams(scheme="gumbel", context_width=1, skip_repeated=True, reseed_repeated=True),
    "gumbel2": SchemeParams(scheme="gumbel", context_width=2),
    "kgw_anchor": SchemeParams(scheme="kgw", gamma=0.25, delta=2.0, context_width=1),
    "kgw_sweet": SchemeParams(scheme="kgw", gamma=0.25, delta=3.0, context_width=1, entropy_threshold=0.8),
    "kgw_d3": SchemeParams(scheme="kgw", gamma=0.25, delta=3.0, context_width=1),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=240)
    ap.add_argument("--configs", default="none,gumbel1,kgw_anchor,kgw_sweet")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default="wm_chat.jsonl")
    ap.add_argument("--prompts", default="chat", choices=["chat", "gsm8k"])
    a = ap.parse_args()

    from rich.progress import Progress

    from distillguard.engines.llamacpp import LlamaCppEngine

    if a.prompts == "chat":
        prompts = chat_prompts()
    else:
        from watermark_common import DATASETS
        import json

        rows = [json.loads(x) for x in open(DATASETS / "gsm8k_train.jsonl")]
        prompts = [r["question"] + "\nSolve step by step and end with 'The answer is N'." for r in rows]
    names = a.configs.split(",")
    done = {(r["idx"], r["config"]) for r in read_cache(a.out)}
    eng = LlamaCppEngine(n_threads=2)
    with Progress() as bar:
        task = bar.add_task("generate", total=a.count * len(names))
        for idx in range(a.start, a.start + a.count):
            for name in names:
                bar.advance(task)
                if (idx, name) in done:
                    continue
                sp = CONFIGS[name]
                procs = [] if sp is None else [Watermark(sp, BENCH_SECRET).processor(a.temperature)]
                msgs = [{"role": "user", "content": prompts[idx]}]
                t = time.time()
                r = eng.generate_sync(msgs, SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature,
                                                          seed=idx, logits_processors=procs))
                c = r.choices[0]
                append_cache(a.out, {"idx": idx, "config": name, "prompt": prompts[idx], "text": c.text,
                                     "token_ids": c.token_ids, "finish_reason": c.finish_reason,
                                     "prompt_tokens": r.prompt_tokens, "seconds": time.time() - t})


if __name__ == "__main__":
    main()
