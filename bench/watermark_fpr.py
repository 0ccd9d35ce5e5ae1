"""Empirical false-positive rate of watermark detection on unwatermarked text.

Texts: overlapping windows (50 tokens, stride 10) of every document in ../shared/datasets
(GSM8K questions + worked answers, HumanEval prompts + solutions, self-instruct tasks and
outputs, MT-bench / Vicuna questions, NQ questions joined in groups of 10), plus whole
unwatermarked SmolLM2 answers from the bench cache. Each window is tested on its own, with the
bench key, exactly as `distillguard watermark detect` would. Overlapping windows are correlated,
so the count of distinct documents is reported too; the expected number of false positives is
windows x 1e-5 (an upper bound: the discrete binomial test is conservative).

    nice -n 10 .venv/bin/python bench/watermark_fpr.py --min-texts 100000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, DATASETS, read_cache, write_result  # noqa: E402

from distillguard.watermark.detect import p_value  # noqa: E402
from distillguard.watermark.entropy import DEFAULT_MAX_TOKEN_PROB, DEFAULT_MIN_ENTROPY, next_token_stats  # noqa: E402
from distillguard.watermark.schemes import SchemeParams, Watermark  # noqa: E402
from distillguard.watermark.tokenizer import load_tokenizer  # noqa: E402

SCHEMES = {
    "kgw_g25_h1": SchemeParams(gamma=0.25, delta=2.0),
    "kgw_g25_h3_selfseed": SchemeParams(gamma=0.25, delta=2.0, context_width=3, self_seeding=True),
    "gumbel_h1": SchemeParams(scheme="gumbel", context_width=1),
    "gumbel_h2": SchemeParams(scheme="gumbel", context_width=2),
    "gumbel_h1_skip": SchemeParams(scheme="gumbel", context_width=1, skip_repeated=True),
    "gumbel_h1_reseed": SchemeParams(scheme="gumbel", context_width=1, skip_repeated=True, reseed_repeated=True),
}


def documents() -> list[str]:
    docs: list[str] = []

    def rows(name: str):
        p = DATASETS / name
        return [json.loads(x) for x in open(p, encoding="utf-8")] if p.is_file() else []

    docs += [r["question"] + "\n" + r["answer"] for r in rows("gsm8k_train.jsonl")]
    docs += [r["prompt"] + r["canonical_solution"] for r in rows("humaneval.jsonl")]
    for name in ("self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented.jsonl"):
        for r in rows(name):
            parts = [r["instruction"]] + [x.get("input", "") + "\n" + x.get("output", "") for x in r.get("instances", [])]
            docs.append("\n".join(parts))
    for name in ("mt_bench_questions.jsonl", "vicuna_bench_questions.jsonl"):
        docs += ["\n".join(r["turns"]) for r in rows(name)]
    nq = [r["question"] for r in rows("nq_open_dev.jsonl")]
    docs += ["? ".join(nq[i : i + 10]) for i in range(0, len(nq), 10)]
    return docs


def windows(ids: list[int], length: int, stride: int) -> list[list[int]]:
    if len(ids) <= length:
        return [ids] if len(ids) >= 20 else []
    return [ids[i : i + length] for i in range(0, len(ids) - length + 1, stride)]


def test_windows(params: SchemeParams, wins: list[list[int]], dedup: bool = True,
                 masks: list[np.ndarray] | None = None) -> np.ndarray:
    """Final p-value of each window; ``masks`` (entropy-aware detection) limits the scored positions."""
    wm = Watermark(params, BENCH_SECRET, cache_size=1)
    h = params.context_width
    memo: dict[tuple, float] = {}
    out = np.empty(len(wins))
    for j, w in enumerate(wins):
        seen: set[tuple] = set()
        n, s = 0, 0.0
        # the draw behind each position, as detect.py reads it (skip/reseed repeated windows);
        # without dedup every (window, token) counts, repeats included
        ctxs = wm.seed_contexts(w) if dedup else [tuple(w[i - h : i]) if i >= h else None for i in range(len(w))]
        for i, ctx in enumerate(ctxs):
            if ctx is None or (masks is not None and not masks[j][i]):
                continue
            key = wm.dedup_key(ctx, w[i])
            if dedup:
                if key in seen:
                    continue
                seen.add(key)
            v = memo.get(key)
            if v is None:
                v = memo[key] = wm.token_score(ctx, w[i])
            n += 1
            s += v
        out[j] = p_value(params, n, s)
    return out


def entropy_masks(wins: list[list[int]], min_entropy: float, max_token_prob: float | None, temperature: float,
                  batch: int = 64, threads: int = 1) -> list[np.ndarray]:
    """What `watermark detect --scoring-model` computes for each window read on its own (no prompt):
    eligible = SmolLM2's entropy >= ``min_entropy`` and the actual token's probability <=
    ``max_token_prob``, at ``temperature``. Windows of one length share a batch."""
    import torch
    from rich.progress import Progress

    from watermark_power import load_model

    model, _ = load_model()
    torch.set_num_threads(threads)
    out: list[np.ndarray | None] = [None] * len(wins)
    by_len: dict[int, list[int]] = {}
    for j, w in enumerate(wins):
        by_len.setdefault(len(w), []).append(j)
    with Progress() as prog, torch.inference_mode():
        task = prog.add_task("entropy masks", total=len(wins))
        for length, js in by_len.items():
            for k in range(0, len(js), batch):
                part = js[k : k + batch]
                logits = model(input_ids=torch.tensor([wins[j] for j in part])).logits
                # row i predicts position i + 1
                ent, prob, _ = next_token_stats(logits[:, :-1], [wins[j][1:] for j in part], temperature)
                for row, j in enumerate(part):
                    m = np.zeros(length, dtype=bool)
                    m[1:] = ent[row] >= min_entropy
                    if max_token_prob is not None:
                        m[1:] &= prob[row] <= max_token_prob
                    out[j] = m
                prog.advance(task, len(part))
    return out  # type: ignore[return-value]


def rates(ps: np.ndarray) -> dict:
    return {f"p<{a:g}": {"count": int((ps < a).sum()), "rate": float((ps < a).mean()), "expected": float(a * len(ps))}
            for a in (1e-2, 1e-3, 1e-4, 1e-5)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-texts", type=int, default=100_000)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated subset of the schemes")
    ap.add_argument("--answers-cache", default="wm_chat_hf.jsonl", help="unwatermarked SmolLM2 answers (config none)")
    ap.add_argument("--name", default="watermark_fpr")
    ap.add_argument("--gate", action="store_true",
                    help="also entropy-aware detection (watermark.entropy.EntropyGate rules, each window read alone)")
    ap.add_argument("--gate-entropy", type=float, default=DEFAULT_MIN_ENTROPY, help="min entropy, nats")
    ap.add_argument("--gate-max-token-prob", type=float, default=DEFAULT_MAX_TOKEN_PROB)
    ap.add_argument("--gate-temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the entropy masks")
    ap.add_argument("--gate-windows", type=int, default=30000,
                    help="entropy-aware detection on this many evenly spaced windows (one forward pass each)")
    a = ap.parse_args()
    from rich.progress import track
    from scipy import stats

    tok = load_tokenizer()
    docs = documents()
    wins: list[list[int]] = []
    for d in track(docs, description="tokenising"):
        wins += windows(tok.encode(d), a.length, a.stride)
    answers = [tok.encode(r["text"]) for r in read_cache(a.answers_cache) if r["config"] == "none"]
    answers = [x for x in answers if len(x) >= 20]
    if len(wins) < a.min_texts:
        print(f"warning: only {len(wins)} windows (< {a.min_texts})", file=sys.stderr)
    result: dict = {"texts": {"dataset_windows": len(wins), "documents": len(docs), "window_tokens": a.length,
                              "stride": a.stride, "smollm2_answers": len(answers)}, "schemes": {}}
    if a.gate:  # one forward pass per window, shared by every scheme
        sub = np.unique(np.linspace(0, len(wins) - 1, min(a.gate_windows, len(wins))).astype(int))
        sub_wins = [wins[j] for j in sub]
        masks = entropy_masks(sub_wins, a.gate_entropy, a.gate_max_token_prob, a.gate_temperature, threads=a.threads)
    for name in a.schemes.split(","):
        params = SCHEMES[name]
        ps = test_windows(params, wins)
        entry = {"params": params.describe(), "dataset_windows": rates(ps),
                 "ks_uniform_pvalue_first_5000": float(stats.kstest(ps[:: max(1, len(ps) // 5000)], "uniform").pvalue)}
        if answers:
            pa = test_windows(params, answers)
            pa_nodedup = test_windows(params, answers, dedup=False)
            entry["smollm2_answers"] = {"dedup": rates(pa), "no_dedup": rates(pa_nodedup), "n": len(answers)}
        if a.gate:
            pg = test_windows(params, sub_wins, masks=masks)
            entry["entropy_gated"] = {
                "min_entropy_nats": a.gate_entropy, "max_token_prob": a.gate_max_token_prob,
                "temperature": a.gate_temperature,
                "windows": len(sub_wins), "selection": "evenly spaced over all dataset windows",
                "mean_positions_scored_share": float(np.mean([m[params.context_width:].mean() for m in masks])),
                "gated": rates(pg), "plain_same_windows": rates(ps[sub]),
                "ks_uniform_pvalue_first_5000": float(
                    stats.kstest(pg[:: max(1, len(pg) // 5000)], "uniform").pvalue)}
            print(name, "gated", json.dumps(entry["entropy_gated"]["gated"]), flush=True)
        result["schemes"][name] = entry
        print(name, json.dumps(entry["dataset_windows"]["p<1e-05"]), flush=True)
    print("wrote", write_result(a.name, result))


if __name__ == "__main__":
    main()
