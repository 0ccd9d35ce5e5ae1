from distillguard.detect.config import RiskWeights
from distillguard.detect.risk import Signal, combine


def test_risk_is_monotone_in_signals_and_in_evidence_amount():
    w = RiskWeights()
    lo, _ = combine([Signal("reasoning_elicitation", 0.2, ""), Signal("template_reuse", 0.2, "")], w, 100, 25)
    hi, _ = combine([Signal("reasoning_elicitation", 0.9, ""), Signal("template_reuse", 0.9, "")], w, 100, 25)
    few, _ = combine([Signal("reasoning_elicitation", 0.9, ""), Signal("template_reuse", 0.9, "")], w, 3, 25)
    assert 0.0 <= lo < hi <= 1.0
    assert few < hi


def test_intent_with_scale_beats_either_alone():
    w = RiskWeights()
    both, _ = combine([Signal("reasoning_elicitation", 1.0, ""), Signal("template_reuse", 1.0, "")], w, 200, 25)
    intent, _ = combine([Signal("reasoning_elicitation", 1.0, ""), Signal("template_reuse", 0.0, "")], w, 200, 25)
    scale, _ = combine([Signal("reasoning_elicitation", 0.0, ""), Signal("template_reuse", 1.0, "")], w, 200, 25)
    assert both > intent and both > scale


def test_evidence_is_ordered_by_contribution():
    w = RiskWeights()
    _, ordered = combine([Signal("single_turn", 1.0, "a"), Signal("reasoning_elicitation", 0.8, "b"),
                          Signal("harvesting", 0.0, "c")], w, 50, 25)
    assert [s.name for s in ordered][:3] == ["reasoning_elicitation", "single_turn", "harvesting"]
    assert ordered[-1].name == "extraction_pattern" and ordered[-1].value == 0.0  # no coverage here
    ev = ordered[0].as_evidence()
    assert set(ev) == {"signal", "value", "detail"} and 0 <= ev["value"] <= 1


def test_extraction_needs_coverage_and_is_stronger_when_sustained():
    """A busy app (no novelty), a one-hour benchmark pass (not sustained) and a campaign that keeps
    sending new eliciting prompts for days, with otherwise identical signals."""
    w = RiskWeights()
    base = [Signal("reasoning_elicitation", 1.0, ""), Signal("template_reuse", 1.0, ""),
            Signal("topic_sweep", 0.0, "")]
    app, _ = combine(base + [Signal("prompt_novelty", 0.0, ""), Signal("persistence", 1.0, "")], w, 300, 25)
    one_pass, _ = combine(base + [Signal("prompt_novelty", 1.0, ""), Signal("persistence", 0.0, "")], w, 300, 25)
    campaign, _ = combine(base + [Signal("prompt_novelty", 1.0, ""), Signal("persistence", 1.0, "")], w, 300, 25)
    assert campaign > one_pass
    assert campaign > app


def test_novelty_is_context_not_risk_on_its_own():
    w = RiskWeights()
    a, _ = combine([Signal("prompt_novelty", 0.0, "")], w, 300, 25)
    b, _ = combine([Signal("prompt_novelty", 1.0, "")], w, 300, 25)
    assert a == b


def test_extraction_pattern_explains_itself_in_the_evidence():
    w = RiskWeights()
    _, ordered = combine([Signal("reasoning_elicitation", 1.0, ""), Signal("topic_sweep", 0.8, ""),
                          Signal("persistence", 1.0, "")], w, 300, 25)
    assert ordered[0].name == "extraction_pattern"
    assert ordered[0].value == 0.8 and "coverage 0.80" in ordered[0].detail
