"""GSM8K accuracy with and without the watermark (same questions, same sampling, same model).

Reads GSM8K answers cached by bench/watermark_batchgen.py (``--gsm8k N``; temperature 0.7, up to
200 tokens, prompt asks for '#### N') and compares the final number with the reference.

    nice -n 10 .venv/bin/python bench/watermark_batchgen.py --set power --chat 0 --gsm8k 50 \
        --configs none,gumbel1_skip --out wm_chat_hf.jsonl
    .venv/bin/python bench/watermark_gsm8k.py --cache wm_chat_hf.jsonl
    # session 8: the reseeded default on 300 questions (watermark_gsm8k_reseed.json)
    nice -n 5 .venv/bin/python bench/watermark_batchgen.py --set power --chat 0 --gsm8k 300 \
        --configs none,gumbel1_reseed --threads 1 --shard 0/2   # and --shard 1/2 beside it
    .venv/bin/python bench/watermark_gsm8k.py --name watermark_gsm8k_reseed
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_common import read_cache, write_result  # noqa: E402

NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The number after '####' or 'answer is', else the last number in the text."""
    for marker in ("####", "answer is"):
        if marker in text:
            m = NUM.search(text.rsplit(marker, 1)[1])
            if m:
                return m.group().replace(",", "").rstrip(".")
    nums = NUM.findall(text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def same(a: str | None, b: str) -> bool:
    try:
        return a is not None and abs(float(a) - float(b.replace(",", ""))) < 1e-6
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="wm_chat_hf.jsonl")
    ap.add_argument("--name", default="watermark_gsm8k", help="result file name in bench/results")
    a = ap.parse_args()
    rows = [r for r in read_cache(a.cache) if r.get("task") == "gsm8k"]
    by: dict[int, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["idx"], {})[r["config"]] = r
    configs = sorted({c for d in by.values() for c in d})
    common = sorted(i for i, d in by.items() if all(c in d for c in configs))
    out = {}
    for c in configs:
        correct = [same(final_number(by[i][c]["text"]), by[i][c]["reference"]) for i in common]
        k, n = sum(correct), len(correct)
        out[c] = {"questions": n, "correct": k, "accuracy": k / n if n else None}
    res = {"setup": {"questions": len(common), "source": "gsm8k_train.jsonl shuffled seed 99, first N",
                     "sampling": "temperature 0.7, up to 200 tokens; SmolLM2-135M-Instruct float32 (transformers)",
                     "configs": configs}, "accuracy": out}
    if "none" in out and len(configs) == 2:
        # paired comparison on the same questions: exact McNemar (binomial on discordant pairs)
        from scipy import stats

        other = next(c for c in configs if c != "none")
        a_ = [same(final_number(by[i]["none"]["text"]), by[i]["none"]["reference"]) for i in common]
        b_ = [same(final_number(by[i][other]["text"]), by[i][other]["reference"]) for i in common]
        only_none = sum(x and not y for x, y in zip(a_, b_))
        only_other = sum(y and not x for x, y in zip(a_, b_))
        res["paired"] = {"only_unwatermarked_correct": only_none, f"only_{other}_correct": only_other,
                         "mcnemar_exact_p": float(stats.binomtest(only_none, only_none + only_other).pvalue)
                         if only_none + only_other else 1.0}
    print(res)
    print("wrote", write_result(a.name, res))


if __name__ == "__main__":
    main()
