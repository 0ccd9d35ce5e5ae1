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
