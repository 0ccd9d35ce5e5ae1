import json

import pytest

from distillguard.distill.evaluate import evaluate, final_number, render_table, rouge_l
from distillguard.distill.train import train


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "something") == 0.0
    # LCS "the cat the mat" = 4 of 6 words each way
    assert rouge_l("the cat sat on the mat", "the dog cat lay the mat") == pytest.approx(4 / 6)
    assert rouge_l("a b c", "x y z") == 0.0


def test_final_number():
    assert final_number("so 3 + 4 = 7 apples") == "7"
    assert final_number("work...\n#### 1,250") == "1250"
    assert final_number("The answer is 2.50.") == "2.5"
    assert final_number("no digits") is None


@pytest.mark.slow
def test_eval_table_fields(run_cfg, capsys):
    run_cfg.train.method, run_cfg.train.max_steps = "sft", 2
    train(run_cfg, progress=False)
    run_cfg.eval.generate_prompts, run_cfg.eval.max_new_tokens = 2, 4
    res = evaluate(run_cfg, progress=False)
    names = [m["name"] for m in res["models"]]
    assert names == ["teacher", "student-init", "sft"]
    fields = {"params", "top1_agreement", "kl", "perplexity", "rouge_l", "tokens_per_s", "speedup_vs_teacher", "ppl_ratio_vs_teacher"}
    for m in res["models"]:
        assert fields <= set(m)
        assert m["perplexity"] > 1 and m["tokens_per_s"] > 0 and 0 <= m["rouge_l"] <= 1
    teacher, init = res["models"][0], res["models"][1]
    assert teacher["top1_agreement"] == 1.0 and teacher["kl"] == pytest.approx(0.0, abs=1e-5)
    assert init["kl"] > 0 and init["params"] < teacher["params"]
    assert res["heldout_prompts_scored"] >= 1
    assert json.loads(run_cfg.eval_output().read_text())["models"][2]["name"] == "sft"
    from rich.console import Console

    render_table(res, Console(width=200))
    assert "top-1 agree" in capsys.readouterr().out


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_prompts():
    from distillguard.distill.evaluate import bootstrap_ci

    rng = __import__("random").Random(0)
    def fake(n):
        tokens = [rng.randint(20, 60) for _ in range(n)]
        agree = [round(t * rng.uniform(0.3, 0.7)) for t in tokens]
        nll = [t * rng.uniform(0.8, 1.6) for t in tokens]
        return tokens, {"agree": agree, "nll": nll, "kl": [x * 0.5 for x in nll]}, {"agree": tokens, "nll": [t * 0.7 for t in tokens], "kl": [0.0] * n}

    widths = []
    for n in (20, 500):
        tokens, student, teacher = fake(n)
        ci = bootstrap_ci(tokens, student, teacher)
        point = sum(student["agree"]) / sum(tokens)
        assert ci["top1_agreement"][0] < point < ci["top1_agreement"][1]
        ratio = __import__("math").exp((sum(student["nll"]) - sum(teacher["nll"])) / sum(tokens))
        assert ci["ppl_ratio_vs_teacher"][0] < ratio < ci["ppl_ratio_vs_teacher"][1]
        widths.append(ci["top1_agreement"][1] - ci["top1_agreement"][0])
    assert widths[1] < widths[0] / 3  # ~sqrt(25) = 5x narrower with 25x the prompts
    assert bootstrap_ci([10], {"agree": [5], "nll": [9.0], "kl": [1.0]}, None) is None  # one prompt: no interval


@pytest.mark.slow
def test_eval_keeps_per_prompt_sums_that_add_up(run_cfg):
    run_cfg.train.method, run_cfg.train.max_steps = "sft", 1
    train(run_cfg, progress=False)
    run_cfg.eval.generate_prompts = 0
    res = evaluate(run_cfg, progress=False)
    pp = res["per_prompt"]
    assert len(pp["ids"]) == len(pp["answer_tokens"]) == res["heldout_prompts_scored"] >= 2
    assert sum(pp["answer_tokens"]) == res["heldout_tokens_scored"]
    for m in res["models"]:
        mine = pp[m["name"]]
        assert sum(mine["agree"]) / res["heldout_tokens_scored"] == pytest.approx(m["top1_agreement"])
        if m["name"] != "teacher":
            lo, hi = m["ci95"]["top1_agreement"]
            assert lo <= m["top1_agreement"] <= hi
