"""Replay detection vs the classic Gumbel score, on the same SmolLM2 chat answers, one run.

Reads the answers bench/watermark_batchgen.py cached (``none`` and ``--config``, T 0.7,
<= 200 tokens, report split of the chat prompts) and detects each re-tokenised answer with:

* ``plain``: the classic score (``-log(1 - u)`` summed, Gamma tail), no model;
* ``gated``: the same, only where the model gave the token probability <= 0.5 (the default of
  ``watermark detect --scoring-model``);
* ``replay``: redo the keyed Gumbel-max choice with the model (``watermark/replay.py``) and test
  the weighted matches (exact Poisson-binomial-type tail); with the chat prompt, as the gateway's
  exchange log has it;
* ``replay_answer_windows``: replay without scoring the answer's first position (its window is the
  prompt's last token): what replay did before ``prompt_ids``;
* ``replay_no_prompt``: the same without the prompt (a bare text): weaker, still exact.

Reports, per detector, the median tokens to exact p < 1e-5, the share never within 200 tokens
(answers that end sooner count as never), 95% bootstrap intervals, the replay match rate, and
the null: the same detectors on the unwatermarked answers of the same prompts (share below 0.01
and 0.05, smallest p). Perplexity is a property of the answers, not of detection: the ratio
below is the gumbel answers' vs the unwatermarked answers' (recorded at generation).

    .venv/bin/python bench/watermark_batchgen.py --set power --chat 220 --configs none,gumbel1_skip --threads 1
    .venv/bin/python bench/watermark_replay_power.py --split tune --mismatch-rates 0.02,0.05,0.1,0.2 \
        --name watermark_replay_power_tune
    .venv/bin/python bench/watermark_replay_power.py      # report split, the chosen eps
    # each repeat of a window reseeded (session 7): generate gumbel1_reseed too, then
    .venv/bin/python bench/watermark_replay_power.py --config gumbel1_reseed --name watermark_replay_power_reseed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, TUNE_N, read_cache, write_result  # noqa: E402
from watermark_generate import CONFIGS  # noqa: E402
import watermark_power as wp  # noqa: E402

from distillguard.watermark.detect import prefix_p_values  # noqa: E402
from distillguard.watermark.entropy import ScoringModel, next_token_stats  # noqa: E402
from distillguard.watermark.replay import replay  # noqa: E402
from distillguard.watermark.schemes import Watermark  # noqa: E402


def detect_answer(
    scorer: ScoringModel, wm: Watermark, prompt: str, text: str, temperature: float, horizon: int,
    mismatch_rates: list[float], no_prompt: bool = False,
) -> tuple[dict[str, np.ndarray], float, int]:
    """Prefix p-values of one re-tokenised answer under each detector, the replay match rate
    (at the last mismatch rate) and the tokens read.

    Detectors: ``plain``, ``gated`` (token probability <= 0.5 at the temperature, with the chat
    prompt), ``replay@eps`` per mismatch rate, and with ``no_prompt`` ``replay_no_prompt@eps``.
    """
    import torch

    tok = scorer.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    p_ids = tok(chat, add_special_tokens=False)["input_ids"]
    ans = tok(text, add_special_tokens=False)["input_ids"][:horizon]
    logits = scorer.answer_logits(p_ids, ans)
    _, prob, _ = next_token_stats(torch.from_numpy(logits), ans, temperature)
    out = {"plain": prefix_p_values(wm, ans), "gated": prefix_p_values(wm, ans, prob <= 0.5)}
    bare = scorer.answer_logits([], ans) if no_prompt else None
    rate = 0.0
    for e in mismatch_rates:
        r = replay(wm, logits, ans, temperature, mismatch_rate=e, prompt_ids=p_ids)
        out[f"replay@{e:g}"], rate = r.prefix_p_values, r.match_rate
        # ablation: the answer's own windows only (the first position, keyed by the prompt's end, unscored)
        out[f"replay_answer_windows@{e:g}"] = replay(wm, logits, ans, temperature, mismatch_rate=e).prefix_p_values
        if bare is not None:
            out[f"replay_no_prompt@{e:g}"] = replay(wm, bare, ans, temperature, mismatch_rate=e).prefix_p_values
    return out, rate, len(ans)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="wm_chat_hf.jsonl")
    ap.add_argument("--config", default="gumbel1_skip")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--split", default="report", choices=["report", "tune"])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mismatch-rates", default="0.05",
                    help="eps values of the replay test, comma-separated (each its own row; choose on --split tune)")
    ap.add_argument("--name", default="watermark_replay_power")
    a = ap.parse_args()

    import torch
    from rich.progress import track

    torch.set_num_threads(a.threads)
    T, H = a.temperature, wp.HORIZON
    by_idx: dict[int, dict[str, dict]] = {}
    for r in read_cache(a.cache):
        if r.get("task", "chat") == "chat":
            by_idx.setdefault(r["idx"], {})[r["config"]] = r
    in_split = (lambda i: i >= TUNE_N) if a.split == "report" else (lambda i: i < TUNE_N)
    idxs = sorted(i for i, d in by_idx.items() if in_split(i) and "none" in d and a.config in d)
    if a.limit:
        idxs = idxs[: a.limit]
    if not idxs:
        raise SystemExit(f"no answers for none and {a.config} in bench/cache/{a.cache}: run watermark_batchgen.py first")
    model, tok = wp.load_model("cpu")
    scorer = ScoringModel(model, tok, name="SmolLM2-135M-Instruct (the served GGUF, dequantised)")
    wm = Watermark(CONFIGS[a.config], BENCH_SECRET)
    eps_list = [float(x) for x in a.mismatch_rates.split(",") if x]
    replays = ([f"replay@{e:g}" for e in eps_list] + [f"replay_answer_windows@{e:g}" for e in eps_list]
               + [f"replay_no_prompt@{e:g}" for e in eps_list])
    detectors = ["plain", "gated", *replays]
    steps = {k: [] for k in detectors}
    null = {k: [] for k in detectors}
    match_rate = {"watermarked": [], "unwatermarked": []}
    lengths, nll, base_nll = [], [], []
    t0, c0 = time.time(), time.process_time()

    def detect(prompt: str, text: str, with_no_prompt: bool) -> tuple[dict[str, np.ndarray], float, int]:
        return detect_answer(scorer, wm, prompt, text, T, H, eps_list, with_no_prompt)

    for i in track(idxs, description="detecting"):
        d = by_idx[i]
        w, b = d[a.config], d["none"]
        if len(tok(w["text"], add_special_tokens=False)["input_ids"]) < 2:
            for k in detectors:
                steps[k].append(float("inf"))  # a one-token answer: never
            lengths.append(1)
            continue
        pv, rate, n = detect(w["prompt"], w["text"], True)
        for k in detectors:
            steps[k].append(wp.tokens_to_threshold(pv[k]))
        match_rate["watermarked"].append(rate)
        lengths.append(n)
        nll.append(np.array(w["nll"][:H]))
        base_nll.append(np.array(b["nll"][:H]))
        if len(tok(b["text"], add_special_tokens=False)["input_ids"]) >= 2:
            pv0, rate0, _ = detect(b["prompt"], b["text"], True)
            for k in detectors:
                null[k].append(float(pv0[k][-1]))
            match_rate["unwatermarked"].append(rate0)

    real = {k: wp.summarise(steps[k], nll, base_nll, lengths=lengths) for k in detectors}
    result = {
        "setup": {"cache": a.cache, "config": a.config, "scheme": CONFIGS[a.config].describe(), "split": a.split,
                  "prompts": len(idxs), "temperature": T, "horizon_tokens": H, "threshold": wp.THRESH,
                  "generation": "transformers float32 batched (bench/watermark_batchgen.py); detection model: the same "
                                "SmolLM2 weights, one sequence at a time (numerics differ slightly from the batched pass)",
                  "detectors": {"plain": "sum of -log(1-u) over distinct tuples, Gamma tail",
                                "gated": "plain, only positions whose token had probability <= 0.5 at T (with prompt)",
                                "replay@eps": "keyed Gumbel-max choice redone with the model and the chat prompt; "
                                              "log-likelihood ratio with mismatch rate eps, exact tail (watermark/replay.py); "
                                              "the answer's first position is keyed by the prompt's last token",
                                "replay_answer_windows@eps": "replay, scoring only windows inside the answer (session 6's replay)",
                                "replay_no_prompt@eps": "replay from the answer text alone"},
                  "note": "never = p >= 1e-5 after min(answer length, 200) tokens; answers that end early count as never"},
        "real": real,
        "null": {k: wp.null_summary(v) for k, v in null.items()},
        "replay_match_rate": {k: {"mean": float(np.mean(v)), "median": float(np.median(v)),
                                  "share_below_0.9": float(np.mean(np.array(v) < 0.9))} for k, v in match_rate.items() if v},
        "cpu_s": time.process_time() - c0,
        "wall_s": time.time() - t0,
    }
    path = write_result(a.name, result)
    print(path)
    for k in detectors:
        r = real[k]
        print(f"{k:18s} median {r['median_tokens_to_p<1e-5']} CI {r.get('median_95ci')} never {r['share_never_within_200']:.3f} "
              f"CI {r.get('share_never_95ci')}  null<0.01 {result['null'][k]['share_p<0.01']:.3f}")
    print("match rate (with the prompt)", result["replay_match_rate"])


if __name__ == "__main__":
    main()
