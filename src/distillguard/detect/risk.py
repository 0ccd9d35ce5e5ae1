"""Combine signals into one risk in [0, 1] that ranks accounts, with the evidence behind it.

risk = sigmoid(bias + confidence(n) * (sum_s w_s v_s + W * intent * coverage * sustain)), where

* ``v_s`` in [0, 1] are the signal values and ``w_s`` fixed weights (``RiskWeights``);
* the *extraction* term is what a distillation campaign has and the hard benign cases lack:
  - intent: reasoning elicitation, data-generation requests or harvesting (logprobs, n > 1);
  - coverage: new content keeps coming (a topic sweep, or a template whose payload keeps
    changing), where a business app re-sends the same few prompts;
  - sustain: it keeps going for many hours and days, where a benchmark pass is over in an hour;
    a short, fast job keeps 25% of the term, so strong intent and coverage still count; a linked
    cluster that scaled out instead (a sybil cohort: many new accounts started together on one
    pipeline, the ``cohort`` signal) is sustained effort spread over accounts rather than time;
  a student asking for steps now and then has intent without coverage, a busy app has scale
  without intent or novelty, a researcher's one benchmark pass has both but not for long;
* ``confidence(n) = n / (n + n0)`` shrinks the evidence of accounts with few requests, so the
  running maximum of the risk is not driven by the noise of the first handful of requests.

Only the ranking matters for the operating point: the threshold is calibrated on benign traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distillguard.detect.config import RiskWeights


@dataclass
class Signal:
    name: str
    value: float
    detail: str

    def as_evidence(self) -> dict:
        return {"signal": self.name, "value": round(float(min(1.0, max(0.0, self.value))), 3), "detail": self.detail}


INTENT = ("reasoning_elicitation", "data_generation", "harvesting")
INTERACTION_WEIGHT = 7.0
#: a campaign need not ask in every prompt: half of the prompts counts as full intent
INTENT_SATURATION = 2.0
#: share of the extraction term a short job keeps (sustain = 0)
SUSTAIN_FLOOR = 0.25
#: signals that describe the account but do not add to the risk on their own
CONTEXT_ONLY = ("prompt_novelty", "cohort")
#: the name under which the extraction term appears in the evidence
EXTRACTION = "extraction_pattern"


def extraction_parts(vals: dict[str, float]) -> tuple[float, float, float]:
    """(intent, coverage, sustain), each in [0, 1] (see the module docstring)."""
    intent = min(1.0, INTENT_SATURATION * max((vals.get(k, 0.0) for k in INTENT), default=0.0))
    # without embeddings there is no novelty estimate: template reuse alone stands for coverage
    novelty = vals.get("prompt_novelty", 1.0)
    coverage = max(vals.get("topic_sweep", 0.0), vals.get("template_reuse", 0.0) * novelty)
    sustain = SUSTAIN_FLOOR + (1.0 - SUSTAIN_FLOOR) * max(vals.get("persistence", 0.0), vals.get("cohort", 0.0))
    return intent, coverage, sustain


_WEIGHTS_CACHE: dict[int, tuple[RiskWeights, dict[str, float]]] = {}


def _weight_table(weights: RiskWeights) -> dict[str, float]:
    """The signal weights as a dict (context-only signals at 0), cached per weights object:
    ``combine`` runs once per event, and dumping the pydantic model each time showed in profiles."""
    hit = _WEIGHTS_CACHE.get(id(weights))
    if hit is not None and hit[0] is weights:
        return hit[1]
    w = weights.model_dump()
    for name in CONTEXT_ONLY:
        w[name] = 0.0
    w[EXTRACTION] = INTERACTION_WEIGHT
    if len(_WEIGHTS_CACHE) > 64:
        _WEIGHTS_CACHE.clear()
    _WEIGHTS_CACHE[id(weights)] = (weights, w)
    return w


def combine(signals: list[Signal], weights: RiskWeights, n: float, n0: float,
            detail: bool = True) -> tuple[float, list[Signal]]:
    """Risk and the signals ordered strongest-contribution first. The extraction term is reported
    as a signal of its own (``extraction_pattern``) so a reviewer sees what drove the score.
    With ``detail=False`` (the per-event hot path) the signals come back unordered."""
    w = _weight_table(weights)
    vals = {s.name: min(1.0, max(0.0, s.value)) for s in signals}
    total = sum(w.get(name, 1.0) * v for name, v in vals.items())
    intent, coverage, sustain = extraction_parts(vals)
    ext = intent * coverage * sustain
    total += INTERACTION_WEIGHT * ext
    conf = n / (n + n0) if n0 > 0 else 1.0
    z = weights.bias + conf * total
    risk = 1.0 / (1.0 + math.exp(-z))
    if not detail:
        return risk, signals
    vals[EXTRACTION] = ext
    pattern = Signal(EXTRACTION, ext, f"intent {intent:.2f} (reasoning, data generation or harvesting) x new-content "
                                      f"coverage {coverage:.2f} x sustained activity {sustain:.2f}")
    ordered = sorted([*signals, pattern], key=lambda s: -w.get(s.name, 1.0) * vals[s.name])
    return risk, ordered
