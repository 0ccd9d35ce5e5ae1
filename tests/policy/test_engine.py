"""RiskPolicy.decide: every action path, smooth throttling, cluster inheritance, review overrides,
indicators, hot reload."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from distillguard.gateway.policy import Decision, PolicyContext
from distillguard.intel.indicators import IndicatorSet, ip_pattern, save_indicators
from distillguard.policy.config import PolicyConfig, ThrottleCurve, level, risk_at
from distillguard.policy.engine import RiskDecision, RiskPolicy
from distillguard.policy.state import Review, RiskBoard
from distillguard.store.base import Account, KeyRecord

THR = 0.8


#: store creation time of the accounts ctx() builds: long before any test's clock, so they are
#: established customers (the ``watch-new`` rule is for accounts in their first hours)
LONG_AGO = 1_000_000.0


def ctx(name: str, tier: str = "standard", ip: str | None = "203.0.113.9", ua: str | None = "OpenAI/Python 1.54.0",
        prompt: str = "What is the capital of France?", ts: float | None = None, created_at: float = LONG_AGO,
        **req: Any) -> PolicyContext:
    return PolicyContext(
        account=Account(name, tier, created_at), key=KeyRecord(f"key_{name}", name, tier, created_at), tier=tier,
        endpoint="/v1/chat/completions",
        request={"model": "smollm2", "messages": [{"role": "user", "content": prompt}], **req},
        prompt_tokens=8, ip=ip, user_agent=ua, ts=time.time() if ts is None else ts, engine=None)  # type: ignore[arg-type]


def rule_level(name: str) -> float:
    """min_level of a default rule (the tests follow the defaults rather than copy their numbers)."""
    level_ = next(r.min_level for r in PolicyConfig().rules if r.name == name)
    assert level_ is not None
    return level_


#: a level between the watch line and the flag line
WATCHED = (rule_level("watch") + rule_level("flagged")) / 2


@pytest.fixture
def board() -> RiskBoard:
    return RiskBoard(THR)


@pytest.fixture
def policy(board: RiskBoard, tmp_path: Path) -> RiskPolicy:
    cfg = PolicyConfig()
    cfg.indicators.file = tmp_path / "indicators.json"
    return RiskPolicy(board, cfg, threshold=THR)


EVIDENCE = [{"signal": "template_reuse", "value": 0.9, "detail": "one skeleton"},
            {"signal": "reasoning_elicitation", "value": 0.8, "detail": "asks for steps"}]


def test_unknown_account_is_allowed_without_reasons(policy: RiskPolicy) -> None:
    d = policy.decide(ctx("newcomer"))
    assert isinstance(d, Decision) and d.action == "allow" and d.reasons == [] and d.limit_scale == 1.0
    assert d.degrade is None and not d.logits_processors


def test_each_action_path(policy: RiskPolicy, board: RiskBoard) -> None:
    watch = rule_level("watch")
    board.set_risk("low", risk_at(watch - 0.05, THR))
    d = policy.decide(ctx("low"))
    assert d.action == "allow" and d.rule is None and d.budget is None

    # between the lines: watched. Served as asked ("allow") while within its risk budget; the
    # rule and the budget are in the decision
    board.set_risk("watched", risk_at(WATCHED, THR), evidence=EVIDENCE)
    d = policy.decide(ctx("watched"))
    assert d.action == "allow" and d.rule == "watch" and d.degrade is None and d.retry_after_s is None
    assert d.budget is not None and d.budget_day is not None and any("risk budget" in r for r in d.reasons)
    assert "within its risk budget: served" in d.reasons
    assert d.reasons[0].startswith("risk ") and "(template_reuse, reasoning_elicitation)" in d.reasons[0]

    board.set_risk("flagged", risk_at(1.2, THR), evidence=EVIDENCE)  # flagged, unverified: verify
    d = policy.decide(ctx("flagged"))
    assert d.action == "verify" and d.rule == "flagged" and "verify" in (d.message or "")
    assert d.reasons[0] == "risk 0.84 ≥ 0.80 (template_reuse, reasoning_elicitation)"

    board.set_risk("trialist", risk_at(1.2, THR))
    assert policy.decide(ctx("trialist", tier="trial")).action == "verify"

    board.set_risk("certain", risk_at(1.8, THR))
    d = policy.decide(ctx("certain"))
    assert d.action == "verify" and "verify" in (d.message or "")

    # degrade: a verified customer far over the line keeps an answer, a shorter one
    board.set_risk("kyc", risk_at(1.6, THR))
    board.set_review("kyc", Review("verified", by="ops"))
    d = policy.decide(ctx("kyc"))
    assert d.action == "degrade" and d.rule == "verified-flagged" and d.degrade is not None and d.limit_scale < 1
    assert any(r.startswith("degraded:") and "max_tokens<=" in r for r in d.reasons)
    assert d.for_event().model_dump()["max_tokens"] == PolicyConfig().degrade.max_tokens

    board.set_risk("bad", 0.1)
    board.set_review("bad", Review("banned", by="ops", note="resold outputs"))
    d = policy.decide(ctx("bad"))
    assert d.action == "block" and d.message and "account banned by review by ops: resold outputs" in d.reasons


def test_throttle_is_smooth_and_monotone_in_risk(policy: RiskPolicy, board: RiskBoard) -> None:
    # the curve applies over the flag line (verified customers: never sent to verify or blocked)
    curve = ThrottleCurve()
    board.set_review("a", Review("verified"))
    scales, budgets = [], []
    for i in range(1000):
        risk = i / 1000
        board.set_risk("a", risk)
        d = policy.decide(ctx("a", ts=1_700_000_000.0 + i * 86400.0))  # a new day each: budgets never spent
        assert d.action in ("allow", "degrade")
        scales.append(d.limit_scale)
        assert d.limit_scale == pytest.approx(curve.scale(level(risk, THR)))
        if d.budget is not None:
            budgets.append(d.budget)
    assert all(b <= a + 1e-12 for a, b in zip(scales, scales[1:], strict=False))  # never loosens as risk rises
    assert scales[0] == 1.0 and min(scales) < 0.2
    # smooth: no step larger than the curve's steepest slope allows for a 0.001 risk step
    steps = [a - b for a, b in zip(scales, scales[1:], strict=False)]
    assert max(steps) < 0.15
    assert len({round(s, 6) for s in scales if s < 1}) > 20  # many distinct values, not a few plateaus
    assert all(b <= a for a, b in zip(budgets, budgets[1:], strict=False)) and len(set(budgets)) > 10
    # the curve itself reaches its floor and stays there
    assert curve.scale(curve.full) == pytest.approx(curve.floor) and curve.scale(5.0) == pytest.approx(curve.floor)


def test_new_account_joining_a_flagged_cluster_is_restricted_at_once(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("hydra-1", risk_at(1.3, THR), cluster="c7", evidence=EVIDENCE)
    board.set_risk("hydra-2", 0.2, cluster="c7")
    assert policy.decide(ctx("hydra-3")).action == "allow"  # not linked yet
    board.set_risk("hydra-3", 0.0, cluster="c7")  # the detector links it (first request, no own risk)
    d = policy.decide(ctx("hydra-3"))
    assert d.action == "verify"
    assert "cluster c7 flagged: inherits risk" in " ".join(d.reasons) and "hydra-1" in " ".join(d.reasons)
    # leaving the cluster (relink) drops the inheritance
    board.set_risk("hydra-3", 0.0, cluster=None)
    assert policy.decide(ctx("hydra-3")).action == "allow"


def test_exempt_overrides_risk_cluster_and_indicators(board: RiskBoard, tmp_path: Path) -> None:
    ind = IndicatorSet()
    ind.add_indicator("indicator--00000000-0000-4000-8000-000000000001", ip_pattern("198.51.100.7"), {"id": "x", "pattern": ""})
    policy = RiskPolicy(board, PolicyConfig(), threshold=THR, indicators=ind)
    board.set_risk("partner", 0.99, cluster="c1")
    board.set_review("partner", Review("exempt", by="ops"))
    d = policy.decide(ctx("partner", ip="198.51.100.7"))
    assert d.action == "allow" and d.rule == "exempt" and d.limit_scale == 1.0


def test_verified_accounts_are_never_sent_to_verification(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_review("kyc", Review("verified"))
    board.set_risk("kyc", risk_at(1.9, THR))
    assert policy.decide(ctx("kyc")).action == "degrade"
    board.set_risk("kyc", risk_at(1.2, THR))
    d = policy.decide(ctx("kyc"))  # throttled: tightened limits and a budget, served within them
    assert d.rule == "verified" and d.action == "allow" and d.limit_scale < 1 and d.budget is not None
    board.set_risk("kyc", risk_at(WATCHED, THR))
    d = policy.decide(ctx("kyc"))  # an unverified account would be watched here
    assert d.rule == "verified-ok" and d.action == "allow" and d.budget is None


def test_indicator_match_raises_risk(board: RiskBoard, tmp_path: Path) -> None:
    path = tmp_path / "ind.json"
    s = IndicatorSet()
    s.add_indicator("indicator--11111111-1111-4111-8111-111111111111", ip_pattern("198.51.100.7"),
                    {"id": "indicator--11111111-1111-4111-8111-111111111111", "pattern": ip_pattern("198.51.100.7")})
    save_indicators(s, path)
    cfg = PolicyConfig()
    cfg.indicators.file = path
    policy = RiskPolicy(board, cfg, threshold=THR)
    assert policy.decide(ctx("x", ip="192.0.2.1")).action == "allow"
    d = policy.decide(ctx("x", ip="198.51.100.7"))
    assert d.action == "degrade" and "matches indicator indicator--11111111-1111-4111-8111-111111111111 (ip)" in d.reasons
    assert d.level == pytest.approx(cfg.indicators.ip_level)


def test_explain_keeps_the_last_decision(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("a", risk_at(1.2, THR), evidence=EVIDENCE)
    d = policy.decide(ctx("a"))
    ex = policy.explain("a")
    assert ex["last_decision"]["action"] == d.action and ex["last_decision"]["reasons"] == d.reasons
    assert ex["now"]["evidence"][0]["signal"] == "template_reuse"


def test_decision_is_a_gateway_decision(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("a", risk_at(1.6, THR))
    board.set_review("a", Review("verified"))
    d = policy.decide(ctx("a"))
    assert isinstance(d, RiskDecision) and d.for_event().action == "degrade"


def test_risk_budget_is_spent_then_refills(policy: RiskPolicy, board: RiskBoard) -> None:
    curve = policy.compiled.config.throttle
    lvl = WATCHED
    board.set_risk("a", risk_at(lvl, THR))
    t0 = 1_700_000_000.0
    budget = policy.decide(ctx("probe-only", ts=t0)).budget  # unknown account: no budget
    assert budget is None
    budget = curve.budget(level(risk_at(lvl, THR), THR))
    assert budget is not None and 1 <= budget <= curve.budget_requests
    for i in range(budget):  # spread over the window: all fit
        d = policy.decide(ctx("a", ts=t0 + i * curve.budget_window_s / (2 * budget)))
        assert d.action == "allow" and d.rule == "watch" and d.retry_after_s is None and d.budget_used == i
    t_full = t0 + curve.budget_window_s / 2
    d = policy.decide(ctx("a", ts=t_full))
    assert d.action == "throttle" and d.retry_after_s is not None
    # it fits again when the first counted request leaves the window (t0 + window)
    assert d.retry_after_s == pytest.approx(t0 + curve.budget_window_s - t_full)
    assert f"at most {budget} requests per hour" in (d.message or "") and "Retry after" in (d.message or "")
    assert any("is spent" in r and "429" in r for r in d.reasons)
    ev = d.for_event().model_dump()
    assert ev["budget"] == budget and ev["budget_used"] == budget and ev["retry_after_s"] > 0
    assert policy.explain("a")["last_decision"]["retry_after_s"] == pytest.approx(d.retry_after_s)
    # a refused request is not counted: after the window has moved on, the account is served again
    d = policy.decide(ctx("a", ts=t0 + curve.budget_window_s + 1))
    assert d.retry_after_s is None


def test_daily_budget_stops_a_steady_campaign_that_stays_under_the_hourly_one(policy: RiskPolicy,
                                                                               board: RiskBoard) -> None:
    board.set_risk("steady", risk_at(WATCHED, THR))
    t0 = 1_700_000_000.0
    first = policy.decide(ctx("steady", ts=t0))
    hourly, daily = first.budget, first.budget_day
    assert hourly is not None and daily is not None and daily < 24 * hourly
    gap = 3600.0 / hourly + 1  # always just under the hourly budget
    assert (daily + 10) * gap < 86400  # the whole test campaign fits in one day
    served = [True] + [policy.decide(ctx("steady", ts=t0 + i * gap)).retry_after_s is None for i in range(1, daily + 10)]
    assert sum(served) == daily and all(served[:daily]) and not any(served[daily:])
    d = policy.decide(ctx("steady", ts=t0 + (daily + 10) * gap))
    assert f"at most {daily} requests per day" in (d.message or "") and d.budget_day_used == daily
    assert d.retry_after_s is not None and d.retry_after_s <= 86400


def test_budget_shrinks_smoothly_as_risk_rises() -> None:
    curve = PolicyConfig().throttle
    assert curve.budget(curve.start) == curve.budget_requests == curve.budget(curve.start - 0.3)  # full below
    assert curve.daily_budget(curve.start) == curve.daily_budget_requests
    levels = [curve.start + i * 0.002 for i in range(1, 400)]
    budgets = [curve.budget(x) for x in levels]
    assert all(b is not None and b >= 1 for b in budgets)
    assert all(b2 <= b1 for b1, b2 in zip(budgets, budgets[1:], strict=False))  # never loosens
    assert budgets[0] >= 0.95 * curve.budget_requests  # just over the line: nearly the whole budget
    assert budgets[-1] == max(1, int(curve.budget_requests * curve.floor))
    assert len(set(budgets)) > 20  # many steps, not a cliff


def test_linked_accounts_share_one_budget(policy: RiskPolicy, board: RiskBoard) -> None:
    lvl = WATCHED
    for name in ("h1", "h2", "h3"):
        board.set_risk(name, risk_at(lvl, THR), cluster="c9")
    board.set_risk("solo", risk_at(lvl, THR))
    budget = policy.compiled.config.throttle.budget(level(risk_at(lvl, THR), THR))
    assert budget is not None
    t0 = 1_700_000_000.0
    served = sum(policy.decide(ctx(f"h{1 + i % 3}", ts=t0 + i)).retry_after_s is None for i in range(3 * budget))
    assert served == budget  # three accounts, one actor, one budget
    d = policy.decide(ctx("h2", ts=t0 + 3 * budget))
    assert any("cluster's shared risk budget" in r for r in d.reasons)
    # an unlinked account at the same risk has its own budget
    assert policy.decide(ctx("solo", ts=t0)).retry_after_s is None


def test_a_spent_budget_does_not_hold_back_allowed_accounts(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("fine", 0.01)
    t0 = 1_700_000_000.0
    assert all(policy.decide(ctx("fine", ts=t0)).action == "allow" for _ in range(500))


POLICY_V1 = """
[policy]
threshold = 0.8
[[policy.rules]]
name = "flagged"
min_level = 1.0
action = "degrade"
"""
POLICY_V2 = """
[policy]
threshold = 0.8
[[policy.rules]]
name = "flagged-block"
min_level = 1.0
action = "block"
"""


def _touch_later(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # mtime granularity on some FS


def test_hot_reload_new_file_changes_behaviour_and_broken_file_keeps_old(board: RiskBoard, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_V1)
    from distillguard.policy.engine import PolicyReloader, load_policy_file

    cfg = load_policy_file(path)
    cfg.indicators.file = tmp_path / "none.json"
    policy = RiskPolicy(board, cfg)
    board.set_risk("a", 0.9)
    assert policy.decide(ctx("a")).action == "degrade"
    reloader = PolicyReloader(policy, path, 0.05)

    _touch_later(path, POLICY_V2)
    assert reloader.check() is True
    assert policy.decide(ctx("a")).action == "block" and policy.reload_error is None

    _touch_later(path, POLICY_V2.replace('action = "block"', 'action = "explode"'))
    assert reloader.check() is False
    assert "rules" in (policy.reload_error or "") and policy.decide(ctx("a")).action == "block"

    path.write_text("[policy\nthreshold = ")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 4_000_000_000))
    assert reloader.check() is False and "not valid TOML" in (policy.reload_error or "")
    assert policy.decide(ctx("a")).action == "block"


def test_hot_reload_thread_picks_up_a_change(board: RiskBoard, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_V1)
    from distillguard.policy.engine import load_policy_file

    cfg = load_policy_file(path)
    cfg.indicators.file = tmp_path / "none.json"
    policy = RiskPolicy(board, cfg)
    board.set_risk("a", 0.9)
    policy.watch(path, interval_s=0.05)
    try:
        _touch_later(path, POLICY_V2)
        deadline = time.time() + 5
        while policy.decide(ctx("a")).action != "block":
            assert time.time() < deadline, "reloader did not pick up the new policy"
            time.sleep(0.02)
    finally:
        policy.stop()


def test_bad_policy_config_says_what_to_fix() -> None:
    with pytest.raises(ValueError, match="throttle.full"):
        ThrottleCurve(start=1.0, full=0.5)
    with pytest.raises(ValueError, match="unique"):
        PolicyConfig(rules=[{"name": "a", "action": "allow"}, {"name": "a", "action": "block"}])


def test_documented_example_policy_is_the_default(tmp_path: Path) -> None:
    from distillguard.policy.config import EXAMPLE_TOML
    from distillguard.policy.engine import load_policy_file

    p = tmp_path / "policy.toml"
    p.write_text(EXAMPLE_TOML)
    cfg = load_policy_file(p)
    default = PolicyConfig()
    assert [r.model_dump(exclude={"message"}) for r in cfg.rules] == [r.model_dump(exclude={"message"}) for r in default.rules]
    assert cfg.throttle == default.throttle and cfg.degrade == default.degrade


def test_degrade_attaches_a_stronger_watermark_with_the_same_key(board: RiskBoard, tmp_path: Path) -> None:
    import numpy as np

    from distillguard.watermark.config import WatermarkConfig
    from distillguard.watermark.keys import KeyRing
    from distillguard.watermark.processors import WatermarkService

    service = WatermarkService(WatermarkConfig(enabled=True, scheme="kgw", delta=2.0), KeyRing.from_secret("k" * 32))
    cfg = PolicyConfig()
    cfg.indicators.file = tmp_path / "none.json"
    policy = RiskPolicy(board, cfg, threshold=THR, watermark=service)
    board.set_risk("a", risk_at(1.6, THR))
    board.set_review("a", Review("verified"))

    class _Local:
        supports_logits_processors = True

    c = ctx("a")
    c.engine = _Local()  # type: ignore[assignment]
    d = policy.decide(c)
    assert d.action == "degrade" and len(d.logits_processors) == 1 and "stronger watermark" in d.reasons
    logits = np.zeros(1000, dtype=np.float32)
    biased = d.logits_processors[0](np.array([5, 7]), logits)
    ordinary = service.processors_for("a", "standard")[0](np.array([5, 7]), logits)
    assert set(np.unique(biased)) == {0.0, 4.0}  # same green list, delta 4 instead of 2
    assert np.array_equal(biased > 0, ordinary > 0)
    # a remote upstream cannot run processors: none attached (the gateway would refuse the request)
    c.engine = None  # type: ignore[assignment]
    assert policy.decide(c).logits_processors == []


def test_ban_reaches_linked_accounts_but_not_exempt_ones(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("boss", 0.1, cluster="c3")
    board.set_risk("sock", 0.0, cluster="c3")
    board.set_risk("partner", 0.0, cluster="c3")
    assert policy.decide(ctx("sock")).action == "allow"
    board.set_review("boss", Review("banned", by="ops"))
    board.set_review("partner", Review("exempt", by="ops"))
    d = policy.decide(ctx("sock"))
    assert d.action == "verify" and "cluster c3 has a banned account (boss)" in d.reasons
    assert policy.decide(ctx("boss")).action == "block"
    assert policy.decide(ctx("partner")).action == "allow"


def test_an_address_of_flagged_accounts_restricts_a_fresh_account_at_once(policy: RiskPolicy, board: RiskBoard) -> None:
    addr = PolicyConfig().addresses
    t0 = 1_700_000_000.0
    proxy = "198.51.100.20"
    board.set_risk("sib-1", risk_at(1.3, THR), cluster="c5")
    assert policy.decide(ctx("sib-1", ip=proxy, ts=t0)).action == "verify"  # flagged: its address is noted
    # a brand-new account from the same address, before the detector has seen it: watched from
    # its first request, and as a new account its answers are degraded within a tight budget
    d = policy.decide(ctx("fresh", ip=proxy, ts=t0 + 60, created_at=0.0))
    assert d.level == pytest.approx(addr.one_account_level) and d.rule == "watch-new" and d.budget is not None
    assert d.action == "degrade" and d.budget == next(r.budget_requests for r in PolicyConfig().rules
                                                      if r.name == "watch-new")
    assert f"address {proxy} was used by 1 flagged account (sib-1): level {addr.one_account_level:.2f}" in d.reasons
    # an established account behind the same address is only watched
    d = policy.decide(ctx("old-customer", ip=proxy, ts=t0 + 60))
    assert d.rule == "watch" and d.action == "allow" and d.budget is not None
    # a second flagged account behind it: a campaign's proxy
    board.set_risk("sib-2", 0.0, cluster="c5")  # linked: inherits the cluster's risk
    policy.decide(ctx("sib-2", ip=proxy, ts=t0 + 120))
    d = policy.decide(ctx("fresh", ip=proxy, ts=t0 + 180))
    assert d.action == "verify" and d.level == pytest.approx(addr.several_accounts_level)
    # other addresses are untouched, and the mark expires
    assert policy.decide(ctx("fresh", ip="192.0.2.44", ts=t0 + 180)).rule is None
    assert policy.decide(ctx("fresh", ip=proxy, ts=t0 + 120 + addr.ttl_s + 1)).rule is None
    # switched off: nothing inherited
    cfg = policy.compiled.config.model_copy(deep=True)
    cfg.addresses.enabled = False
    policy.reload(cfg)
    assert policy.decide(ctx("fresh", ip=proxy, ts=t0 + 200)).rule is None


def watch_new_rule():
    return next(r for r in PolicyConfig().rules if r.name == "watch-new")


def test_a_new_account_in_the_watch_band_gets_a_tight_budget_and_degraded_answers(policy: RiskPolicy,
                                                                                  board: RiskBoard) -> None:
    rule = watch_new_rule()
    assert rule.max_account_age_s is not None and rule.budget_requests is not None
    assert rule.budget_requests < policy.compiled.config.throttle.budget_requests  # tighter than "watch"
    t0 = 1_700_000_000.0
    board.set_risk("newbie", risk_at(WATCHED, THR), evidence=EVIDENCE)
    # first request seen at t0 (the store does not know when it was created: created_at 0)
    results = [policy.decide(ctx("newbie", ts=t0 + i, created_at=0.0)) for i in range(rule.budget_requests + 3)]
    assert all(d.rule == "watch-new" for d in results)
    served = [d for d in results if d.retry_after_s is None]
    assert len(served) == rule.budget_requests  # its own budget, not the curve's
    assert all(d.action == "degrade" and d.degrade is not None and d.budget == rule.budget_requests for d in served)
    assert any("account first seen 0.0 h ago" in r for r in served[0].reasons)
    refused = results[-1]
    assert refused.action == "degrade" and refused.retry_after_s is not None and "Retry after" in (refused.message or "")
    # once the account is older than the rule's age it is an ordinary watched account
    later = t0 + rule.max_account_age_s + 1
    d = policy.decide(ctx("newbie", ts=later, created_at=0.0))
    assert d.rule == "watch" and d.action == "allow" and d.degrade is None
    # below the watch line a new account is not touched at all
    board.set_risk("quiet-newbie", risk_at(rule_level("watch") - 0.1, THR))
    d = policy.decide(ctx("quiet-newbie", ts=t0, created_at=0.0))
    assert d.action == "allow" and d.rule is None and d.budget is None


def test_account_age_uses_the_store_creation_time_when_it_is_on_the_same_clock(board: RiskBoard) -> None:
    t0 = 1_700_000_000.0
    # first request seen now, but created in the store a day earlier (e.g. after a restart)
    assert board.account_age("a", t0, created_at=t0 - 86400.0) == pytest.approx(86400.0)
    # creation unknown (0) or after the request's clock (an arena's simulated clock runs behind
    # the store's wall clock): the first request seen here counts
    assert board.account_age("b", t0, created_at=0.0) == 0.0
    assert board.account_age("b", t0 + 50, created_at=0.0) == pytest.approx(50.0)
    assert board.account_age("c", t0, created_at=t0 + 10 * 86400.0) == 0.0
    assert board.account_age("c", t0 + 7, created_at=t0 + 10 * 86400.0) == pytest.approx(7.0)


def test_rule_budgets_and_ages_are_validated_and_load_from_a_file(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from distillguard.policy.config import Rule
    from distillguard.policy.engine import load_policy_file

    with pytest.raises(ValidationError, match="budget_requests must be at least 1"):
        Rule(name="x", action="throttle", budget_requests=0)
    with pytest.raises(ValidationError, match="max_account_age_s must be positive"):
        Rule(name="x", action="throttle", max_account_age_s=0)
    p = tmp_path / "p.toml"
    p.write_text("""
[policy]
[[policy.rules]]
name = "young"
min_level = 0.5
max_account_age_s = 3600.0
action = "throttle"
budget_requests = 2
""", encoding="utf-8")
    cfg = load_policy_file(p)
    board = RiskBoard(THR)
    cfg.indicators.file = tmp_path / "none.json"
    pol = RiskPolicy(board, cfg, threshold=THR)
    board.set_risk("y", risk_at(0.7, THR))
    t0 = 1_700_000_000.0
    got = [pol.decide(ctx("y", ts=t0 + i, created_at=0.0)) for i in range(3)]
    assert [d.retry_after_s is None for d in got] == [True, True, False] and got[0].budget == 2
    assert pol.decide(ctx("y", ts=t0 + 3601, created_at=0.0)).rule is None  # older than the rule: no rule left
