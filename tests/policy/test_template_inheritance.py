"""Template inheritance: a new account on the pipeline (prompt template, client, parameters) of
flagged accounts is restricted from its first request, before the detector has seen it."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.policy.config import PolicyConfig, risk_at
from distillguard.policy.engine import RiskPolicy
from distillguard.policy.state import RiskBoard

from .test_engine import THR, ctx

T0 = 1_700_000_000.0
TMPL = "Solve the following problem. Show your complete reasoning before giving the final answer.\n\n{q}"
QS = [f"A farmer has {i} cows and buys {i % 5 + 2} more each week for {i % 3 + 1} weeks. How many cows are there now?"
      for i in range(50)]
PARAMS = {"temperature": 0.8, "max_tokens": 2048}


@pytest.fixture
def board() -> RiskBoard:
    return RiskBoard(THR)


@pytest.fixture
def policy(board: RiskBoard, tmp_path: Path) -> RiskPolicy:
    cfg = PolicyConfig()
    cfg.indicators.file = tmp_path / "indicators.json"
    cfg.addresses.enabled = False  # every account below sends from its own address anyway
    return RiskPolicy(board, cfg, threshold=THR)


def _req(name: str, i: int, ts: float, ip: str, created_at: float = 0.0, template: str = TMPL, **params):
    # created_at 0: no store creation time, so the account's age counts from its first request
    return ctx(name, prompt=template.format(q=QS[i]), ts=ts, ip=ip, created_at=created_at, **{**PARAMS, **params})


def test_new_accounts_on_a_flagged_clusters_pipeline_must_verify_at_once(policy: RiskPolicy, board: RiskBoard) -> None:
    # a hydra's first accounts: new and unflagged when they send (served; their pipeline is noted)
    for j in range(3):
        assert policy.decide(_req(f"h{j}", j, T0 + 60 * j, f"198.51.100.{j}")).action == "allow"
    # the detector links and flags them a batch later
    for j in range(3):
        board.set_risk(f"h{j}", 0.0, cluster="c9")
    board.set_risk("h0", risk_at(1.4, THR), cluster="c9")
    # a new account the detector has not seen, on the same pipeline from a fresh address
    d = policy.decide(_req("h-new", 10, T0 + 3 * 3600, "192.0.2.77"))
    assert d.action == "verify" and d.level == pytest.approx(PolicyConfig().templates.level)
    assert any("prompt template, client and parameters of 3 flagged accounts (h0, h1, h2)" in r for r in d.reasons)
    # the same template with other sampling parameters or another client is somebody else
    assert policy.decide(_req("other-params", 11, T0 + 3 * 3600, "192.0.2.78", temperature=0.2)).action == "allow"
    assert policy.decide(ctx("other-ua", prompt=TMPL.format(q=QS[12]), ts=T0 + 3 * 3600, ip="192.0.2.79",
                             ua="curl/8.5.0", created_at=0.0, **PARAMS)).action == "allow"
    # an established customer that uses the same public template is left to the detector
    old = "old-customer"
    policy.decide(_req(old, 13, T0 - 30 * 86400, "192.0.2.80"))
    assert policy.decide(_req(old, 14, T0 + 3 * 3600, "192.0.2.80")).action == "allow"
    # switched off: nothing inherited
    cfg = policy.compiled.config.model_copy(deep=True)
    cfg.templates.enabled = False
    policy.reload(cfg)
    assert policy.decide(_req("h-new-2", 15, T0 + 3 * 3600, "192.0.2.81")).action == "allow"


def test_one_flagged_account_does_not_make_its_template_a_campaigns(policy: RiskPolicy, board: RiskBoard) -> None:
    """A flagged benchmark harness (one account) must not send every new user of the same public
    benchmark prompt to verification."""
    cot = "Q: {q}\nA: Let's think step by step."
    board.set_risk("harness", risk_at(1.2, THR))
    for i in range(3):
        assert policy.decide(_req("harness", i, T0 + i, "192.0.2.9", template=cot)).action == "verify"
    d = policy.decide(_req("new-student", 5, T0 + 600, "192.0.2.10", template=cot))
    assert d.action == "allow"
    # the mark is only as good as the accounts' flags now: unflagged accounts pass none on
    board.set_risk("harness-2", risk_at(0.2, THR))
    policy.decide(_req("harness-2", 6, T0 + 700, "192.0.2.11", template=cot))
    assert policy.decide(_req("new-student-2", 7, T0 + 800, "192.0.2.12", template=cot)).action == "allow"


def test_template_inheritance_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="several_accounts"):
        PolicyConfig(templates={"several_accounts": 1})


def test_a_pipeline_shared_by_many_accounts_passes_nothing_on(board: RiskBoard) -> None:
    """A popular app's prompt through the default client is used by many accounts: two of them
    being flagged does not send every new user of the app to verification."""
    keys = [101, 102]
    for i in range(70):
        board.note_template(keys, f"user-{i}", T0 + i, cap=1000)
    board.set_risk("user-1", risk_at(1.3, THR))
    board.set_risk("user-2", risk_at(1.3, THR))
    assert board.flagged_with_template(keys, "newcomer", T0 + 100, ttl_s=86400, threshold=THR) == []
    small = [201, 202]
    for i in range(3):
        board.note_template(small, f"user-{i}", T0 + i, cap=1000)
    assert board.flagged_with_template(small, "newcomer", T0 + 100, ttl_s=86400, threshold=THR) == ["user-1", "user-2"]
