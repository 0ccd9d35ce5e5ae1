"""Review actions shared by the admin API and the CLI: exempt, ban, unban, verify, unverify.

Review state lives in the account's flags (``banned`` / ``exempt`` / ``verified``, each
``{"at": ts, "by": who, "note": text}``) so it survives restarts and reaches a server in another
process (its RiskBoard re-reads the flags every ``policy.board_refresh_s`` seconds). Ban and
exempt exclude each other: setting one clears the other.
"""

from __future__ import annotations

import time
from typing import Any

from distillguard.policy.state import RiskBoard, review_from_flags
from distillguard.store.base import Account, Store, StoreError

ACTIONS = ("exempt", "unexempt", "ban", "unban", "verify", "unverify")


def review_flags(action: str, by: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The flags change an action makes (None deletes a flag, as ``Store.update_account`` merges)."""
    stamp = {"at": time.time(), "by": by or "admin", "note": note or ""}
    if action == "exempt":
        return {"exempt": stamp, "banned": None}
    if action == "unexempt":
        return {"exempt": None}
    if action == "ban":
        return {"banned": stamp, "exempt": None}
    if action == "unban":
        return {"banned": None}
    if action == "verify":
        return {"verified": stamp}
    if action == "unverify":
        return {"verified": None}
    raise ValueError(f"unknown review action {action!r}; expected one of {', '.join(ACTIONS)}")


def apply_review(store: Store, name: str, action: str, *, by: str | None = None, note: str | None = None,
                 board: RiskBoard | None = None, verified_tier: str | None = None) -> Account:
    """Persist the review in the account's flags (and show it to ``board`` at once). ``verify``
    also moves the account to ``verified_tier`` when one is given. Raises StoreError for an
    unknown account, ValueError for an unknown action."""
    flags = review_flags(action, by, note)
    if store.get_account(name) is None:
        raise StoreError(f"unknown account {name!r}")
    tier = verified_tier if action == "verify" else None
    acc = store.update_account(name, tier=tier, flags=flags)
    if board is not None:
        board.set_review(name, review_from_flags(acc.flags))
    return acc


# ---------------------------------------------------------------------- offline (CLI) views
def policy_threshold(settings: Any) -> float:
    """The threshold levels are anchored on: policy.threshold, else the detector's calibration
    file, else the detection config's default."""
    policy = getattr(settings, "policy", None)
    if policy is not None and policy.threshold is not None:
        return float(policy.threshold)
    det = settings.detect
    if det.threshold_file is not None:
        from distillguard.detect.reference import load_calibration

        return float(load_calibration(det.threshold_file)["threshold"])
    return float(det.default_threshold)


def board_from_store(settings: Any, store: Store) -> RiskBoard:
    """A board filled from the store's account flags (what a server's board converges to)."""
    board = RiskBoard(policy_threshold(settings))
    board.refresh_from_store(store)
    return board


def last_logged_decision(store: Store, name: str, lookback_s: float = 7 * 86400.0) -> dict[str, Any] | None:
    """The newest exchange event's decision for ``name`` (the exchange log records every one)."""
    last = None
    for since in (time.time() - lookback_s, None):
        for ev in store.iter_events(since=since, account=name):
            last = ev
        if last is not None:
            break
    if last is None:
        return None
    d = last.decision
    return {"ts": last.ts, "status": last.status, "endpoint": last.endpoint, "ip": last.ip,
            "action": d.action if d else "allow", "reasons": list(d.reasons) if d else []}


def explain_offline(settings: Any, store: Store, name: str) -> dict[str, Any]:
    """For the CLI: the last logged decision, the state now, and what the policy would decide now
    for a plain request from the account (no IP, user agent or prompt: indicators not consulted)."""
    from distillguard.gateway.policy import PolicyContext
    from distillguard.policy.config import PolicyConfig
    from distillguard.policy.engine import RiskPolicy
    from distillguard.store.base import KeyRecord

    acc = store.get_account(name)
    if acc is None:
        raise StoreError(f"unknown account {name!r}")
    board = board_from_store(settings, store)
    cfg = getattr(settings, "policy", None) or PolicyConfig()
    from distillguard.intel.indicators import IndicatorSet

    policy = RiskPolicy(board, cfg, threshold=board.threshold, indicators=IndicatorSet())
    ctx = PolicyContext(account=acc, key=KeyRecord("-", name, acc.tier, 0.0), tier=acc.tier,
                        endpoint="/v1/chat/completions", request={}, prompt_tokens=0, ip=None, user_agent=None,
                        ts=time.time(), engine=None)  # type: ignore[arg-type]
    d = policy.decide(ctx)
    return {"account": name, "tier": acc.tier, "threshold": board.threshold,
            "last_logged_decision": last_logged_decision(store, name),
            "now": board.describe(name),
            "would_decide": {"action": d.action, "reasons": d.reasons, "limit_scale": d.limit_scale,
                             "rule": d.rule}}
