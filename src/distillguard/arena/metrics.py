"""Numbers from the exchange log: every figure in metrics.json is recomputable from the events
(events.jsonl, shared/spec/events.md) plus the arena's labels (which accounts were attackers).

Definitions (also printed in the report):
  * a request is *impacted* when its status is 429 (throttled) or 403 (verify / block), or the
    policy's action for it was not "allow" (throttle, degrade);
  * legitimate impact = impacted benign requests / benign requests (every HTTP exchange logged);
  * attacker yield = completion tokens of attacker requests answered with status 200 (a degraded
    answer counts with the length it was cut to: the policy caps degraded answers at
    ``degrade.max_tokens``);
  * yield without defences (counterfactual) = every request the attacker planned x the mean
    completion tokens of its requests answered with action "allow" (what an undefended gateway
    would have returned per request); reduction = counterfactual / yield. Per attacker persona
    the same, with the persona's own mean (the overall mean where it had no allowed answer);
  * attacker outcomes: each request sent (a retry after a 429 is a request too), by what the
    gateway did: served as asked, served throttled, served degraded, 429 risk budget, 429 rate
    limit, 403 verify/block. Planned requests never sent (the account stopped after a 403, gave up
    after repeated 429s, or the run's time budget ended) are the client's ``traffic.not_sent``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

IMPACT_STATUSES = (429, 403)


def action_of(ev: dict[str, Any]) -> str:
    d = ev.get("decision") or {}
    return d.get("action") or "allow"


def impacted(ev: dict[str, Any]) -> bool:
    return ev.get("status", 200) in IMPACT_STATUSES or action_of(ev) != "allow"


def _tokens(ev: dict[str, Any]) -> int:
    return int((ev.get("response") or {}).get("completion_tokens") or 0)


def outcome_of(ev: dict[str, Any]) -> str:
    """What the gateway did with one request, in words (for the attacker outcome table)."""
    st = ev.get("status", 200)
    d = ev.get("decision") or {}
    if st == 200:
        act = d.get("action") or "allow"
        return {"allow": "served as asked", "throttle": "served (throttled)",
                "degrade": "served degraded"}.get(act, f"served ({act})")
    if st == 429:
        return "429 risk budget" if d.get("retry_after_s") is not None else "429 rate limit"
    if st == 403:
        return f"403 {d.get('action') or 'refused'}"
    return f"status {st}"


def traffic_numbers(events: list[dict[str, Any]], labels: dict[str, dict[str, Any]],
                    planned: dict[str, int]) -> dict[str, Any]:
    per_account: dict[str, dict[str, Any]] = defaultdict(lambda: {"requests": 0, "served": 0, "completion_tokens": 0,
                                                                  "statuses": Counter(), "actions": Counter()})
    for ev in events:
        a = per_account[ev["account"]]
        a["requests"] += 1
        st = ev.get("status", 200)
        a["statuses"][str(st)] += 1
        a["actions"][action_of(ev)] += 1
        if st == 200:
            a["served"] += 1
            a["completion_tokens"] += int((ev.get("response") or {}).get("completion_tokens") or 0)
    accounts = {name: {**v, "statuses": dict(v["statuses"]), "actions": dict(v["actions"]),
                       "label": labels.get(name, {}).get("label"), "persona": labels.get(name, {}).get("persona"),
                       "planned": planned.get(name, 0)}
                for name, v in sorted(per_account.items())}

    benign = [ev for ev in events if labels.get(ev["account"], {}).get("label") == 0]
    attack = [ev for ev in events if labels.get(ev["account"], {}).get("label") == 1]
    b_imp = [ev for ev in benign if impacted(ev)]
    impact = {
        "benign_requests": len(benign),
        "impacted": len(b_imp),
        "share": len(b_imp) / len(benign) if benign else 0.0,
        "by_kind": dict(Counter(f"status {ev['status']}" if ev.get("status", 200) in IMPACT_STATUSES
                                else action_of(ev) for ev in b_imp)),
        "benign_accounts_impacted": sorted({ev["account"] for ev in b_imp}),
        "without_defences": 0.0,  # no policy: nothing is throttled, degraded or blocked
    }

    served = [ev for ev in attack if ev.get("status", 200) == 200]
    allowed = [ev for ev in served if action_of(ev) == "allow"] or served
    tokens = sum(_tokens(ev) for ev in served)
    mean_allowed = sum(_tokens(ev) for ev in allowed) / len(allowed) if allowed else 0.0
    att_planned = sum(n for a, n in planned.items() if labels.get(a, {}).get("label") == 1)
    counterfactual = att_planned * mean_allowed
    by_persona: dict[str, dict[str, Any]] = {}
    allowed_by_persona: dict[str, list[int]] = defaultdict(list)
    for ev in served:
        if action_of(ev) == "allow":
            allowed_by_persona[labels.get(ev["account"], {}).get("persona")].append(_tokens(ev))
    for name, a in accounts.items():
        if a["label"] != 1:
            continue
        p = by_persona.setdefault(a["persona"], {"accounts": 0, "planned": 0, "requests": 0, "served": 0, "tokens": 0})
        p["accounts"] += 1
        p["planned"] += a["planned"]
        p["requests"] += a["requests"]
        p["served"] += a["served"]
        p["tokens"] += a["completion_tokens"]
    for persona, p in by_persona.items():
        own = allowed_by_persona.get(persona)
        p["mean_tokens_allowed"] = sum(own) / len(own) if own else mean_allowed
        p["tokens_without_defences"] = p["planned"] * p["mean_tokens_allowed"]
        p["reduction"] = p["tokens_without_defences"] / p["tokens"] if p["tokens"] else None
    outcomes: Counter[str] = Counter(outcome_of(ev) for ev in attack)
    yield_ = {
        "attacker_requests": len(attack),
        "attacker_served": len(served),
        "attacker_planned": att_planned,
        "tokens": tokens,
        "mean_tokens_allowed": mean_allowed,
        "tokens_without_defences": counterfactual,
        "reduction": (counterfactual / tokens) if tokens else None,
        "by_persona": by_persona,
        "degraded_or_throttled": sum(1 for ev in served if action_of(ev) != "allow"),
        "outcomes": dict(outcomes),
    }
    return {"accounts": accounts, "legitimate_impact": impact, "attacker_yield": yield_,
            "events": len(events), "statuses": dict(Counter(str(ev.get("status", 200)) for ev in events)),
            "actions": dict(Counter(action_of(ev) for ev in events))}


def roc(scores: dict[str, float], labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score, roc_curve

    names = [a for a in scores if labels.get(a, {}).get("label") in (0, 1)]
    y = [labels[a]["label"] for a in names]
    s = [scores[a] for a in names]
    if len(set(y)) < 2:
        return {"auc": None, "fpr": [], "tpr": [], "accounts": len(names)}
    fpr, tpr, _ = roc_curve(y, s)
    return {"auc": float(roc_auc_score(y, s)), "fpr": fpr.tolist(), "tpr": tpr.tolist(), "accounts": len(names)}


def replay(events: list[dict[str, Any]], config: Any, embedder: Any) -> tuple[Any, dict[str, list[tuple[float, float]]]]:
    """Feed the events (by ts) through a fresh OnlineDetector one at a time; return it and each
    account's risk after each of its events (the risk-over-time series)."""
    from distillguard.detect.online import OnlineDetector
    from distillguard.events import ExchangeEvent

    det = OnlineDetector(config, embedder=embedder)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for raw in sorted(events, key=lambda e: (e["ts"], e.get("id") or "")):
        ev = ExchangeEvent.model_validate(raw)
        # a relink inside this step can change other accounts' (cluster) risk too: record them all
        for acct in det.process_batch([ev]) | {ev.account}:
            st = det.accounts[acct]
            risk = float(max(st.own_risk, st.cluster_risk))
            if acct == ev.account or not series[acct] or series[acct][-1][1] != risk:
                series[acct].append((ev.ts, risk))
    det.finish()
    # the final relink can raise linked accounts (a hydra) after their last event: show that point
    for acct, st in det.accounts.items():
        risk = float(max(st.own_risk, st.cluster_risk))
        if series[acct] and risk > series[acct][-1][1]:
            series[acct].append((max(det.clock, series[acct][-1][0]), risk))
    return det, dict(series)
