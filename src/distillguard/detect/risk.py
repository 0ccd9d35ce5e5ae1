"""Combine signals into one risk in [0, 1] that ranks accounts, with the evidence behind it.

risk = sigmoid(bias + confidence(n) * (sum_s w_s v_s + intent x automation)), where

* ``v_s`` in [0, 1] are the signal values and ``w_s`` fixed weights (``RiskWeights``);
* the interaction term rewards *intent* (reasoning elicitation, harvesting) arriving together
  with *scale, sweep or persistence* (template reuse, topic sweep, volume, activity on many days): a student asking for step-by-step
  help now and then has intent without scale, a busy business app has scale without intent, a
  distillation pipeline has both;
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


INTENT = ("reasoning_elicitation", "harvesting")
SCALE = ("template_reuse", "topic_sweep", "volume", "persistence")
INTERACTION_WEIGHT = 3.0


def combine(signals: list[Signal], weights: RiskWeights, n: float, n0: float) -> tuple[float, list[Signal]]:
    """Risk and the signals ordered strongest-contribution first."""
    w = weights.model_dump()
    vals = {s.name: min(1.0, max(0.0, s.value)) for s in signals}
    total = sum(w.get(name, 1.0) * v for name, v in vals.items())
    intent = max((vals.get(k, 0.0) for k in INTENT), default=0.0)
    scale = max((vals.get(k, 0.0) for k in SCALE), default=0.0)
    total += INTERACTION_WEIGHT * intent * scale
    conf = n / (n + n0) if n0 > 0 else 1.0
    z = weights.bias + conf * total
    risk = 1.0 / (1.0 + math.exp(-z))
    ordered = sorted(signals, key=lambda s: -w.get(s.name, 1.0) * vals[s.name])
    return risk, ordered
