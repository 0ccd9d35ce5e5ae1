"""Decode throughput of SmolLM2 on raw llama.cpp versus our LlamaCppEngine, and what logprobs cost.

    .venv/bin/python bench/engines_throughput.py [--rounds 3] [--max-tokens 128] [--threads N] [--with-hf]

Configurations, each over the same chat prompts (chat template applied once, the same token ids
fed to every configuration), same seed and OpenAI-style sampling (no top-k / min-p):

- raw:                  ``Llama.create_completion`` on a default model (logits_all=False)
- raw_logits_all:       the same call on a model built with ``logits_all=True``
- raw_logits_all_lp5:   that model with ``logprobs=5`` (llama-cpp-python's only logprobs path)
- engine:               ``LlamaCppEngine.generate_sync`` (what the gateway calls)
- engine_logprobs5:     the engine with ``logprobs=True, top_logprobs=5`` (scores captured in the
                        sampler chain, no logits_all)
- engine_processor:     the engine with one no-op logits processor
- hf (--with-hf):       ``HFEngine`` on the same GGUF dequantised to float32

Configurations run interleaved (round-robin per prompt), so load from other processes hits all
of them alike; tokens/s is completion tokens over wall time of the call (prompt included), and we
report the median over calls plus the ratio to ``raw``. Results: bench/results/engines_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from distillguard.engines.base import SamplingParams  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "List ten ideas for a weekend trip with children and say why each is fun.",
    "Describe the water cycle to a ten-year-old.",
    "Write a friendly email inviting a colleague to a team lunch next Friday.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the engine's, cores // 2)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--with-hf", action="store_true", help="also time HFEngine on the same GGUF (slow)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engines_throughput.json")
    args = ap.parse_args()

    from llama_cpp import Llama

    from distillguard.engines.llamacpp import LlamaCppEngine
    from distillguard.models import smollm2_gguf

    console = Console(stderr=True)
    gguf = smollm2_gguf()
    engine = LlamaCppEngine(gguf, n_threads=args.threads)
    # raw llama.cpp gets the very thread counts the engine resolved
    common = dict(
        model_path=str(gguf),
        n_ctx=2048,
        n_threads=engine.llm.n_threads,
        n_threads_batch=engine.llm.n_threads_batch,
        verbose=False,
    )
    raw = Llama(**common)
    raw_all = Llama(**common, logits_all=True)
    hf = None
    if args.with_hf:
        from distillguard.engines.hf import HFEngine

        hf = HFEngine(gguf, n_threads=args.threads)

    # the chat template applied once; raw llama.cpp gets the ids, engines the same text
    texts = [engine._chat(messages=[{"role": "user", "content": p}]).prompt for p in PROMPTS]
    prompts = [engine.encode_prompt(t) for t in texts]
    text_of = {tuple(ids): t for ids, t in zip(prompts, texts, strict=True)}
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=1.0, seed=args.seed)

    def raw_call(llm: Llama, **extra: object) -> Callable[[list[int]], int]:
        def call(ids: list[int]) -> int:
            out = llm.create_completion(ids, top_k=0, min_p=0.0, repeat_penalty=1.0, **sampling, **extra)
            return out["usage"]["completion_tokens"]

        return call

    def engine_call(eng: object, **extra: object) -> Callable[[list[int]], int]:
        def call(ids: list[int]) -> int:
            r = eng.generate_sync(text_of[tuple(ids)], SamplingParams(**sampling, **extra))  # type: ignore[attr-defined]
            return r.completion_tokens

        return call

    configs: dict[str, Callable[[list[int]], int]] = {
        "raw": raw_call(raw),
        "raw_logits_all": raw_call(raw_all),
        "raw_logits_all_lp5": raw_call(raw_all, logprobs=5),
        "engine": engine_call(engine),
        "engine_logprobs5": engine_call(engine, logprobs=True, top_logprobs=5),
        "engine_processor": engine_call(engine, logits_processors=[lambda ids, s: s]),
    }
    if hf is not None:
        configs["hf"] = engine_call(hf)

    for fn in configs.values():  # warm-up: first calls pay one-off allocation costs
        fn(prompts[0])
    console.print("warmed up")

    rates: dict[str, list[float]] = {k: [] for k in configs}
    cpu_rates: dict[str, list[float]] = {k: [] for k in configs}
    tokens: dict[str, int] = {k: 0 for k in configs}
    load_before = os.getloadavg()
    with Progress(console=console) as bar:
        task = bar.add_task("decoding", total=args.rounds * len(prompts) * len(configs))
        for _ in range(args.rounds):
            for ids in prompts:
                for name, fn in configs.items():
                    t, c = time.perf_counter(), time.process_time()
                    n = fn(ids)
                    dt, dc = time.perf_counter() - t, time.process_time() - c
                    rates[name].append(n / dt)
                    cpu_rates[name].append(n / dc)
                    tokens[name] += n
                    bar.advance(task)
    load_after = os.getloadavg()

    base = statistics.median(rates["raw"])
    cpu_base = statistics.median(cpu_rates["raw"])
    results = {
        name: {
            "median_tokens_per_s": round(statistics.median(r), 2),
            "mean_tokens_per_s": round(statistics.fmean(r), 2),
            "ratio_to_raw": round(statistics.median(r) / base, 3),
            # tokens per CPU-second of this process: insensitive to other processes' load
            "median_tokens_per_cpu_s": round(statistics.median(cpu_rates[name]), 2),
            "cpu_ratio_to_raw": round(statistics.median(cpu_rates[name]) / cpu_base, 3),
            "completion_tokens": tokens[name],
            "calls": len(r),
        }
        for name, r in rates.items()
    }
    import llama_cpp
    import torch

    record = {
        "benchmark": "engines_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "llama_cpp_python": llama_cpp.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "model": gguf.name,
        "settings": {
            **vars(args),
            "out": str(args.out),
            "llama_threads": {"decode": engine.llm.n_threads, "batch": engine.llm.n_threads_batch},
            "prompts": len(prompts),
        },
        "results": results,
        "notes": (
            "tokens/s = completion tokens / wall time of one call (prompt evaluation included); "
            "tokens per CPU-s = completion tokens / CPU time this process used (all its threads), "
            "the cost measure that other processes' load does not distort. "
            "engine = LlamaCppEngine.generate_sync; the gateway adds its own overhead on top. "
            "Other processes shared this 2-core machine; configurations ran interleaved so they "
            "share that load alike; compare ratios, not absolute numbers across runs."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    table = Table("config", "median tok/s", "ratio to raw", "tok per CPU-s", "CPU ratio", "tokens")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['median_tokens_per_s']:.1f}",
            f"{r['ratio_to_raw']:.3f}",
            f"{r['median_tokens_per_cpu_s']:.1f}",
            f"{r['cpu_ratio_to_raw']:.3f}",
            str(r["completion_tokens"]),
        )
    Console().print(table)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
