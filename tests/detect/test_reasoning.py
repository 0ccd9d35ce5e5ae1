import numpy as np

from distillguard.detect.reasoning import ELICIT_CORES, ReasoningScorer, segments

Q = "A baker makes 24 rolls and sells 3 bags of 5. How many rolls are left?"


def test_elicitation_scores_high_and_ordinary_low(scorer):
    eliciting = [f"{Q}\nLet's think step by step.", f"Show your work.\n{Q}",
                 f"{Q} Put your reasoning inside <think> tags before the answer."]
    ordinary = [Q, "who sang hotel california", f"{Q} Answer with only the final number.",
                "Give me step-by-step instructions to bake sourdough bread.",
                "Answer the question using only the context below.\n\nContext: ...\nQuestion: when does the store open?"]
    p_pos, p_neg = scorer.score(eliciting), scorer.score(ordinary)
    assert p_pos.min() > 0.5, p_pos
    assert p_neg.max() < 0.5, p_neg


def test_generalises_to_phrasings_left_out_of_training():
    # train without a third of the core phrasings, then score exactly those phrasings
    held = ELICIT_CORES[::3]
    kept = [c for c in ELICIT_CORES if c not in held]
    s = ReasoningScorer(cores=kept)
    p = s.score([f"{Q} {c[0].upper()}{c[1:]}." for c in held])
    assert np.mean(p >= 0.5) >= 0.7, list(zip(held, p.round(2)))


def test_segments_bound_long_prompts():
    long = "\n".join(f"line {i} of a very long document." for i in range(500))
    assert len(segments(long)) <= 16
