"""How often can *any* distortion-free watermark reach p < 1e-5 on these answers? An entropy bound.

A watermark is distortion-free when, averaged over keys, watermarked text has exactly the model's
distribution (Gumbel-max / Aaronson: our ``gumbel`` scheme). For one prompt, let T be the answer
(its first ``--horizon`` tokens) and K the key. Any detector D(K, T) with false-positive rate
alpha on unwatermarked text (under H0 the text does not depend on the key) detects watermarked
text with a probability beta that obeys, by the data-processing inequality for KL divergence,

    d(beta || alpha) <= KL(P_watermarked(K, T) || P(K) P_model(T)) = I(K; T) <= H(T),

where d is the binary KL divergence. At alpha = 1e-5: a 50% chance of detection needs
H(T) >= 5.06 nats, a 95% chance 10.74 nats. So answers with little entropy cannot be detected
often by any such scheme, whatever its tricks; only distorting the text (KGW's bias) can, at a
cost in perplexity.

H(T) = E[sum_t H(p_t | prefix)] (chain rule): the sum of the model's next-token entropies along
a sampled answer, at the generation temperature, is an unbiased estimate of H(T). This script
reads the answers cached by bench/watermark_batchgen.py (``none`` and the distortion-free
``gumbel1_skip`` answers of the same prompts: both are draws from the model's distribution, so
each prompt gets their mean), re-scores them under the unwatermarked model, and reports, over
the report split:

* the answer entropies (quantiles; share below 5.06 and 10.74 nats),
* the bound on the share of answers *any* distortion-free scheme detects at p < 1e-5
  (mean over prompts of beta_max(H)), and so the least share that never gets there.

Caveat, written into the result: with one or two samples per prompt, the estimate of each H is
noisy; beta_max is concave in H, so the plug-in mean over prompts leans toward a lower detection
bound than the true one when H estimates are noisy. The ``two_sample_agreement`` block says how
far the two draws' entropies differ.

    .venv/bin/python bench/watermark_entropy_bound.py --cache wm_chat_hf.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import TUNE_N, read_cache, write_result  # noqa: E402

from distillguard.watermark.entropy import next_token_stats  # noqa: E402


def binary_kl(b: float, a: float) -> float:
    """d(b || a) in nats."""
    out = 0.0
    if b > 0:
        out += b * math.log(b / a)
    if b < 1:
        out += (1 - b) * math.log((1 - b) / (1 - a))
    return out


def beta_max(h: float, alpha: float) -> float:
    """The largest detection probability beta >= alpha with d(beta || alpha) <= h nats."""
    from scipy.optimize import brentq

    if h <= 0:
        return alpha
    if binary_kl(1.0, alpha) <= h:  # -log(alpha) nats: certain detection is allowed
        return 1.0
    return float(brentq(lambda b: binary_kl(b, alpha) - h, alpha, 1.0, xtol=1e-10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="wm_chat_hf.jsonl")
    ap.add_argument("--samples", default="none,gumbel1_skip", help="configs whose answers are draws from the model")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=1e-5)
    ap.add_argument("--split", default="report", choices=["report", "tune"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="watermark_entropy_bound")
    a = ap.parse_args()

    import torch
    from rich.progress import track
    from watermark_power import load_model

    torch.set_num_threads(a.threads)
    configs = a.samples.split(",")
    by_idx: dict[int, dict[str, dict]] = {}
    for r in read_cache(a.cache):
        if r.get("task", "chat") == "chat" and r["config"] in configs:
            by_idx.setdefault(r["idx"], {})[r["config"]] = r
    in_split = (lambda i: i >= TUNE_N) if a.split == "report" else (lambda i: i < TUNE_N)
    idxs = sorted(i for i, d in by_idx.items() if in_split(i) and all(c in d for c in configs))
    if not idxs:
        raise SystemExit(f"no {a.split}-split prompts with answers for all of {configs} in bench/cache/{a.cache}")
    model, tok = load_model("cpu")

    def answer_entropy(r: dict) -> tuple[float, int]:
        """Sum of next-token entropies (nats, at the temperature) over the answer, its stop included."""
        text = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True, tokenize=False)
        p_ids = tok(text, add_special_tokens=False)["input_ids"]
        ans = list(r["token_ids"])[: a.horizon]
        nxt = ans + ([tok.eos_token_id] if r.get("finish_reason") == "stop" and len(ans) < a.horizon else [])
        ids = p_ids + ans
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, len(p_ids) - 1 : len(p_ids) - 1 + len(nxt)]
        ent, _, _ = next_token_stats(logits, nxt, a.temperature)
        return float(ent.sum()), len(ans)

    per = []
    for i in track(idxs, description="answer entropies"):
        hs = {c: answer_entropy(by_idx[i][c]) for c in configs}
        per.append({"idx": i, "entropy_nats": {c: h for c, (h, _) in hs.items()},
                    "tokens": {c: n for c, (_, n) in hs.items()}})
    H = np.array([np.mean(list(p["entropy_nats"].values())) for p in per])
    bmax = np.array([beta_max(h, a.alpha) for h in H])
    need50, need95 = binary_kl(0.5, a.alpha), binary_kl(0.95, a.alpha)
    lens = np.array([np.mean(list(p["tokens"].values())) for p in per])
    short = lens < 50
    pair = np.array([[p["entropy_nats"][c] for c in configs] for p in per]) if len(configs) == 2 else None
    result = {
        "setup": {"cache": a.cache, "split": a.split, "prompts": len(per), "samples_per_prompt": configs,
                  "temperature": a.temperature, "horizon_tokens": a.horizon, "alpha": a.alpha,
                  "model": "SmolLM2-135M-Instruct dequantised from the served GGUF (transformers float32)",
                  "entropy": "sum of next-token entropies at the temperature along each answer (stop step included), "
                             "mean over the samples of a prompt: an unbiased estimate of H(answer | prompt)",
                  "bound": "d(beta || alpha) <= H(answer | prompt) for any distortion-free scheme and any detector "
                           "with false-positive rate alpha (data processing)"},
        "nats_needed": {"beta_0.5": need50, "beta_0.95": need95},
        "answer_entropy_nats": {"quantiles": {q: float(np.quantile(H, q)) for q in (0.05, 0.1, 0.2, 0.25, 0.5)},
                                "share_below_beta_0.5_need": float(np.mean(H < need50)),
                                "share_below_beta_0.95_need": float(np.mean(H < need95))},
        "any_distortion_free_scheme": {
            "max_share_detected": float(bmax.mean()),
            "min_share_never": float(1 - bmax.mean()),
            "min_share_never_answers_under_50_tokens": float(1 - bmax[short].mean()) if short.any() else None,
            "answers_under_50_tokens": int(short.sum()),
        },
        "two_sample_agreement": None if pair is None else {
            "median_abs_difference_nats": float(np.median(np.abs(pair[:, 0] - pair[:, 1]))),
            "spearman": float(__import__("scipy.stats", fromlist=["spearmanr"]).spearmanr(pair[:, 0], pair[:, 1])[0]),
        },
        "caveat": "each prompt's entropy is estimated from its sampled answers; beta_max is concave, so noise in "
                  "the estimates biases the plug-in detection bound low (the never bound high). Read it as an "
                  "estimate, not a certificate.",
        "per_prompt": per,
    }
    path = write_result(a.name, result)
    print(path)
    for k in ("nats_needed", "answer_entropy_nats", "any_distortion_free_scheme", "two_sample_agreement"):
        print(k, result[k])


if __name__ == "__main__":
    main()
