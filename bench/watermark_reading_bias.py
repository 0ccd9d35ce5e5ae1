"""Why radioactivity reading audits must read unwatermarked contexts: the bias of reading watermarked text.

Every window of a watermarked text was followed by a keyed race over the vocabulary, so given the
text the draws u(window, token) are not uniform: the token that won is biased high, every other
token low. A reading audit that feeds the watermarked texts themselves to the suspect scores the
suspect's top-1 predictions there; where the prediction IS the actual token the score is biased up,
elsewhere down, and the net depends on how often the suspect predicts the text, not on whether it
was ever trained on a watermark. This script measures both parts for the model that generated the
texts (SmolLM2, which never saw any watermarked text), with the audit's own filters (windows in the
prompt skipped, tuples copyable from earlier in the text skipped, each (window, token) once):

    nice -n 10 .venv/bin/python bench/watermark_reading_bias.py --texts 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import BENCH_SECRET, read_cache, write_result  # noqa: E402
from watermark_generate import CONFIGS  # noqa: E402

from distillguard.watermark.audit import Example, _encode_example, _ngrams, read_predictions  # noqa: E402
from distillguard.watermark.schemes import Watermark  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="wm_radio.jsonl")
    ap.add_argument("--config", default="gumbel1_skip")
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--name", default="watermark_reading_bias")
    a = ap.parse_args()
    import torch
    from rich.progress import track
    from scipy import stats

    from watermark_power import load_model

    torch.set_num_threads(1)
    model, tok = load_model()
    wm = Watermark(CONFIGS[a.config], BENCH_SECRET)
    rows = [r for r in read_cache(a.cache) if r["config"] == a.config][: a.texts]
    scores: dict[str, list[float]] = {"prediction_is_the_actual_token": [], "prediction_differs": []}
    seen: set[tuple[int, ...]] = set()
    for r in track(rows, description="reading watermarked texts"):
        ex = Example(prompt=[{"role": "user", "content": r["prompt"]}],
                     answer=tok.decode(r["token_ids"][:128], skip_special_tokens=True))
        p_ids, ans = _encode_example(tok, ex)
        preds = read_predictions(model, p_ids, ans)
        h = wm.params.context_width
        prompt_windows, actual = _ngrams(p_ids, h), set()
        for i in range(h, len(preds)):  # the same filters as audit.reading_tuples
            w = tuple(ans[i - h : i])
            tup = w + (preds[i],)
            copyable = w in prompt_windows or tup in actual
            actual.add(w + (ans[i],))
            if copyable or tup in seen:
                continue
            seen.add(tup)
            key = "prediction_is_the_actual_token" if preds[i] == ans[i] else "prediction_differs"
            scores[key].append(wm.token_score(w, preds[i]))

    def summary(x: list[float]) -> dict:
        v = np.array(x)
        return {"tuples": len(v), "mean_score": float(v.mean()), "mean_under_h0": 1.0,
                "p_value": float(stats.gamma.sf(v.sum(), len(v)))}

    both = scores["prediction_is_the_actual_token"] + scores["prediction_differs"]
    result = {"setup": {"texts": len(rows), "cache": a.cache, "config": a.config, "params": wm.params.describe(),
                        "reader": "SmolLM2-135M-Instruct, the model that generated the texts (never trained on a "
                                  "watermark)", "filters": "as audit.reading_tuples: windows in the prompt and "
                                  "tuples copyable from earlier in the text skipped; each tuple once"},
              **{k: summary(v) for k, v in scores.items()}, "all": summary(both),
              "share_prediction_is_actual": len(scores["prediction_is_the_actual_token"]) / max(1, len(both)),
              "reading": "both parts are far from H0 in opposite directions; the total is near H0 only because "
                         "the two happen to balance at this reader's agreement with the text. A reader that "
                         "predicts the text more often (a student that memorised it) scores high without "
                         "having learned anything about the key."}
    print(result)
    print("wrote", write_result(a.name, result))


if __name__ == "__main__":
    main()
