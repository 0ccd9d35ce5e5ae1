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


def ctx(name: str, tier: str = "standard", ip: str | None = "203.0.113.9", ua: str | None = "OpenAI/Python 1.54.0",
        prompt: str = "What is the capital of France?", **req: Any) -> PolicyContext:
    return PolicyContext(
        account=Account(name, tier, 0.0), key=KeyRecord(f"key_{name}", name, tier, 0.0), tier=tier,
        endpoint="/v1/chat/completions",
        request={"model": "smollm2", "messages": [{"role": "user", "content": prompt}], **req},
        prompt_tokens=8, ip=ip, user_agent=ua, ts=time.time(), engine=None)  # type: ignore[arg-type]


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
    board.set_risk("low", 0.3)
    assert policy.decide(ctx("low")).action == "allow"

    board.set_risk("near", risk_at(1.0, THR) - 0.01)  # level ~0.99: elevated
    d = policy.decide(ctx("near"))
    assert d.action == "throttle" and 0 < d.limit_scale < 1 and d.rule == "elevated"

    board.set_risk("flagged", risk_at(1.2, THR), evidence=EVIDENCE)
    d = policy.decide(ctx("flagged"))
    assert d.action == "degrade" and d.degrade is not None and d.limit_scale < 1
    assert d.reasons[0] == "risk 0.84 ≥ 0.80 (template_reuse, reasoning_elicitation)"
    assert any(r.startswith("degraded:") for r in d.reasons)

    board.set_risk("trialist", risk_at(1.2, THR))
    assert policy.decide(ctx("trialist", tier="trial")).action == "verify"

    board.set_risk("certain", risk_at(1.8, THR))
    d = policy.decide(ctx("certain"))
    assert d.action == "verify" and "verify" in (d.message or "")

    board.set_risk("bad", 0.1)
    board.set_review("bad", Review("banned", by="ops", note="resold outputs"))
    d = policy.decide(ctx("bad"))
    assert d.action == "block" and d.message and "account banned by review by ops: resold outputs" in d.reasons


def test_throttle_is_smooth_and_monotone_in_risk(policy: RiskPolicy, board: RiskBoard) -> None:
    curve = ThrottleCurve()
    scales = []
    for i in range(200):
        risk = i / 200
        board.set_risk("a", risk)
        d = policy.decide(ctx("a"))
        if d.action in ("verify", "block"):  # refused outright: the most restrictive "rate"
            scales.append(0.0)
            continue
        scales.append(d.limit_scale)
        assert d.limit_scale == pytest.approx(curve.scale(level(risk, THR)))
    assert all(b <= a + 1e-12 for a, b in zip(scales, scales[1:], strict=False))  # never loosens as risk rises
    served = [s for s in scales if s > 0]
    assert served[0] == 1.0 and min(served) < 0.2
    # smooth: no step larger than the curve's steepest slope allows for a 0.005 risk step
    steps = [a - b for a, b in zip(served, served[1:], strict=False)]
    assert max(steps) < 0.15
    assert len({round(s, 6) for s in served if s < 1}) > 20  # many distinct values, not a few plateaus
    # the curve itself reaches its floor and stays there
    assert curve.scale(curve.full) == pytest.approx(curve.floor) and curve.scale(5.0) == pytest.approx(curve.floor)


def test_new_account_joining_a_flagged_cluster_is_restricted_at_once(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("hydra-1", risk_at(1.3, THR), cluster="c7", evidence=EVIDENCE)
    board.set_risk("hydra-2", 0.2, cluster="c7")
    assert policy.decide(ctx("hydra-3")).action == "allow"  # not linked yet
    board.set_risk("hydra-3", 0.0, cluster="c7")  # the detector links it (first request, no own risk)
    d = policy.decide(ctx("hydra-3"))
    assert d.action == "degrade"
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
    board.set_risk("kyc", risk_at(1.0, THR))
    assert policy.decide(ctx("kyc")).action == "throttle"


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


def test_explain_keeps_the_last_decision(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("a", risk_at(1.2, THR), evidence=EVIDENCE)
    d = policy.decide(ctx("a"))
    ex = policy.explain("a")
    assert ex["last_decision"]["action"] == d.action and ex["last_decision"]["reasons"] == d.reasons
    assert ex["now"]["evidence"][0]["signal"] == "template_reuse"


def test_decision_is_a_gateway_decision(policy: RiskPolicy, board: RiskBoard) -> None:
    board.set_risk("a", risk_at(1.2, THR))
    d = policy.decide(ctx("a"))
    assert isinstance(d, RiskDecision) and d.for_event().action == "degrade"


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
    board.set_risk("a", risk_at(1.2, THR))

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
