"""The arena's numbers from a hand-made exchange log (fast: no gateway): yield with and without
defences per attacker persona, what the attacker's requests met, legitimate impact."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard.arena.metrics import outcome_of, traffic_numbers


def ev(account: str, status: int = 200, tokens: int = 0, action: str = "allow", **decision: Any) -> dict[str, Any]:
    return {"account": account, "status": status, "response": {"completion_tokens": tokens},
            "decision": {"action": action, "reasons": [], **decision}}


LABELS = {"sweep": {"label": 1, "persona": "maths-sweep"}, "h1": {"label": 1, "persona": "hydra"},
          "h2": {"label": 1, "persona": "hydra"}, "alice": {"label": 0, "persona": "searcher"},
          "app": {"label": 0, "persona": "app"}}


def test_yield_per_persona_outcomes_and_impact() -> None:
    events = [
        ev("sweep", tokens=100), ev("sweep", tokens=100),
        ev("sweep", tokens=40, action="degrade", max_tokens=40),  # a degraded answer: cut short
        ev("sweep", status=429, action="throttle", budget=30, retry_after_s=600.0),  # risk budget
        ev("sweep", status=403, action="verify"),  # flagged: must verify, the account stops
        ev("h1", tokens=60), ev("h2", status=429),  # a per-minute limit (no risk budget in the decision)
        ev("alice", tokens=20), ev("alice", tokens=20, rule="watch", budget=30),  # watched, served as asked
        ev("app", status=429, action="throttle", retry_after_s=60.0),
    ]
    planned = {"sweep": 10, "h1": 3, "h2": 3, "alice": 2, "app": 1}
    m = traffic_numbers(events, LABELS, planned)
    y = m["attacker_yield"]
    assert y["tokens"] == 100 + 100 + 40 + 60
    sweep, hydra = y["by_persona"]["maths-sweep"], y["by_persona"]["hydra"]
    # without defences: planned requests x the persona's own mean allowed answer
    assert sweep["mean_tokens_allowed"] == 100 and sweep["tokens_without_defences"] == 1000
    assert sweep["reduction"] == pytest.approx(1000 / 240)
    assert hydra["tokens_without_defences"] == 6 * 60 and hydra["reduction"] == pytest.approx(6.0)
    assert y["tokens_without_defences"] == pytest.approx(16 * (260 / 3))  # overall mean of allowed answers
    assert y["outcomes"] == {"served as asked": 3, "served degraded": 1, "429 risk budget": 1, "403 verify": 1,
                             "429 rate limit": 1}
    imp = m["legitimate_impact"]
    # the watched request that was served as asked is not an impact; the refused one is
    assert imp["benign_requests"] == 3 and imp["impacted"] == 1 and imp["benign_accounts_impacted"] == ["app"]


def test_outcome_words() -> None:
    assert outcome_of(ev("x", action="throttle")) == "served (throttled)"
    assert outcome_of(ev("x", status=403, action="block")) == "403 block"
    assert outcome_of(ev("x", status=502)) == "status 502"


def test_report_p_values_never_read_zero() -> None:
    from distillguard.arena.report import _p

    assert _p(0.0) == "< 1e-300"  # a pooled watermark test over thousands of tokens underflows
    assert _p(1.9e-59) == "1.90e-59"
    assert _p(None) == "–"
