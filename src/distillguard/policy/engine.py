"""RiskPolicy: the gateway's policy (``decide(ctx) -> Decision``) driven by detection risk.

Per request, top to bottom (dict lookups and arithmetic only; no I/O, no locks):

    review state (banned / exempt / verified)   ← RiskBoard (admin API, CLI through the store)
    effective risk = max(own, cluster)          ← RiskBoard (detection worker)
    level = risk on the threshold-anchored scale (config.level)
    imported indicators (IP, user agent, template fingerprint) raise the level
    an address that flagged accounts sent from raises the level of other accounts (AddressConfig)
    a new account on the template, client and parameters of flagged accounts inherits their level
        (TemplateInheritanceConfig)
    first matching rule → action; throttle curve → limit_scale; risk budget (429 when spent,
        shared by a linked cluster); degrade plan (length cap, reasoning, logprobs); stronger watermark
    reasons, and the decision kept for `explain`

The compiled policy (rules, curve, plan, indicators) is one immutable object swapped atomically by
``reload()`` / ``PolicyReloader`` (hot reload: a broken file keeps the old policy and logs why).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from distillguard.events import Decision as EventDecision
from distillguard.gateway.policy import VERIFY_MESSAGE, Decision, PolicyContext
from distillguard.intel.indicators import IndicatorError, IndicatorSet, Match, load_indicators
from distillguard.policy.config import PolicyConfig, Rule, level
from distillguard.policy.degrade import DegradePlan
from distillguard.policy.state import RiskBoard

log = logging.getLogger("distillguard.policy")

BLOCK_MESSAGE = "This account is blocked from this API."
#: two or more kinds of indicator matching one request (e.g. IP and template) add this much level
MULTI_INDICATOR_BONUS = 0.1
#: level of an account linked to a banned account (default rules: verify, or degrade if verified)
BANNED_PEER_LEVEL = 1.6


@dataclass
class RiskDecision(Decision):
    """The gateway's Decision plus what the response side needs (additive: the gateway reads the
    base fields as before; ``degrade`` is for ``policy.degrade``'s functions)."""

    degrade: DegradePlan | None = None
    rule: str | None = None
    level: float = 0.0
    #: the risk budget that applied (requests per window) and how much of it was already used
    budget: int | None = None
    budget_used: int | None = None
    budget_day: int | None = None
    budget_day_used: int | None = None

    def for_event(self) -> EventDecision:
        """action and reasons (the spec's fields) plus the rule, level, rate-limit scale and risk
        budget (extra fields: readers ignore what they do not know)."""
        if self.rule is None and not self.reasons:
            return EventDecision(action=self.action, reasons=[])
        extra: dict[str, Any] = {}
        if self.budget is not None or self.budget_day is not None:
            extra = {"budget": self.budget, "budget_used": self.budget_used, "budget_day": self.budget_day,
                     "budget_day_used": self.budget_day_used}
            if self.retry_after_s is not None:
                extra["retry_after_s"] = round(self.retry_after_s, 1)
        if self.degrade is not None and self.degrade.max_tokens is not None:
            extra["max_tokens"] = self.degrade.max_tokens
        return EventDecision(action=self.action, reasons=list(self.reasons), rule=self.rule,
                             level=round(self.level, 4), limit_scale=round(self.limit_scale, 4), **extra)


@dataclass(frozen=True)
class _Rule:
    name: str
    action: str
    tiers: frozenset[str] | None
    review: frozenset[str] | None
    min_level: float | None
    max_level: float | None
    cluster_flagged: bool | None
    indicator: bool | None
    message: str | None
    max_age_s: float | None = None
    budget_requests: int | None = None
    daily_budget_requests: int | None = None

    @classmethod
    def of(cls, r: Rule) -> _Rule:
        return cls(r.name, r.action, frozenset(r.tiers) if r.tiers is not None else None,
                   frozenset(r.review) if r.review is not None else None, r.min_level, r.max_level,
                   r.cluster_flagged, r.indicator, r.message, r.max_account_age_s, r.budget_requests,
                   r.daily_budget_requests)

    def matches(self, tier: str, review: str, lvl: float, cluster_flagged: bool, indicator: bool,
                age_s: float = math.inf) -> bool:
        return ((self.tiers is None or tier in self.tiers)
                and (self.review is None or review in self.review)
                and (self.min_level is None or lvl >= self.min_level)
                and (self.max_level is None or lvl < self.max_level)
                and (self.cluster_flagged is None or cluster_flagged == self.cluster_flagged)
                and (self.indicator is None or indicator == self.indicator)
                and (self.max_age_s is None or age_s < self.max_age_s))


@dataclass(frozen=True)
class CompiledPolicy:
    config: PolicyConfig
    threshold: float
    rules: tuple[_Rule, ...]
    plan: DegradePlan
    indicators: IndicatorSet = field(default_factory=IndicatorSet)
    indicator_levels: dict[str, float] = field(default_factory=dict)
    #: the lowest level at which any risk rule can fire: below it, with no review state and no
    #: indicator, the answer is the default action (the fast path most requests take)
    quiet_below: float = 0.0
    strong_mark: Any = None  # watermark.schemes.Watermark with the stronger delta, or None

    @classmethod
    def build(cls, config: PolicyConfig, threshold: float, indicators: IndicatorSet | None = None,
              watermark: Any = None) -> CompiledPolicy:
        rules = tuple(_Rule.of(r) for r in config.rules)
        risk_rules = [r for r in rules if r.review is None or "none" in r.review]
        quiet = min((r.min_level if r.min_level is not None else 0.0) for r in risk_rules) if risk_rules else 9.0
        quiet = min(quiet, config.throttle.start) if any(r.action == "throttle" for r in risk_rules) else quiet
        ic = config.indicators
        return cls(config, threshold, rules, DegradePlan.from_config(config.degrade), indicators or IndicatorSet(),
                   {"ip": ic.ip_level, "user_agent": ic.user_agent_level, "template": ic.template_level},
                   quiet, _strong_watermark(config, watermark))


def _strong_watermark(config: PolicyConfig, service: Any) -> Any:
    """The same key and gamma with a larger delta: detected by the ordinary detector (KGW counts
    green tokens; delta only makes more of them), stronger on fewer tokens."""
    d = config.degrade
    if not d.strong_watermark or service is None or getattr(service, "keys", None) is None:
        return None
    wcfg = service.config
    if wcfg.scheme != "kgw":
        return None  # Gumbel-max has no strength knob: the ordinary watermark stays
    from distillguard.watermark.schemes import Watermark

    params = replace(wcfg.scheme_params(), delta=max(wcfg.delta, d.strong_watermark_delta))
    return Watermark(params, service.keys.current.secret, wcfg.cache_size)


def load_policy_file(path: Path | str) -> PolicyConfig:
    """A policy TOML: a ``[policy]`` table (e.g. the server config file) or the policy at top level.
    Raises ValueError saying what to fix."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"policy file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"policy file {p} is not valid TOML: {exc}") from None
    section = data.get("policy", data)
    try:
        return PolicyConfig(**section)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"policy file {p}: invalid setting {where or 'policy'}: {first['msg']}") from None


class RiskPolicy:
    def __init__(self, board: RiskBoard, config: PolicyConfig | None = None, *, threshold: float | None = None,
                 indicators: IndicatorSet | None = None, watermark: Any = None) -> None:
        self.board = board
        self.watermark = watermark
        cfg = config or PolicyConfig()
        thr = cfg.threshold if cfg.threshold is not None else (threshold if threshold is not None else board.threshold)
        self._base_threshold = threshold if threshold is not None else board.threshold
        if indicators is None:
            try:
                indicators = load_indicators(cfg.indicators.file)
            except IndicatorError as exc:
                log.error("%s; starting without imported indicators", exc)
                indicators = IndicatorSet()
        self.compiled = CompiledPolicy.build(cfg, thr, indicators, watermark)
        board.set_threshold(thr)
        self.reload_error: str | None = None
        self.reloads = 0
        #: (action, rule) -> decisions made (for /admin/policy/status; cheap, approximate under threads)
        self.counts: dict[tuple[str, str | None], int] = defaultdict(int)
        self._reloader: PolicyReloader | None = None

    # ------------------------------------------------------------------ the hook
    def decide(self, ctx: PolicyContext) -> RiskDecision:
        cp = self.compiled  # one read: a reload mid-request cannot mix two policies
        board = self.board
        account = ctx.account.name
        review = board.review(account)
        eff = board.effective(account)
        age_s = board.account_age(account, ctx.ts, ctx.account.created_at, cp.config.explain_accounts)
        lvl = level(eff.risk, cp.threshold)
        matches: list[Match] = []
        if len(cp.indicators):
            matches = cp.indicators.match(ctx.ip, ctx.user_agent, _last_user_text(ctx.request))
        banned_peer = board.banned_in_cluster(eff.cluster) if review.state != "banned" else None
        addr = cp.config.addresses
        hot: list[str] = []
        if addr.enabled and ctx.ip is not None:
            if lvl >= 1.0:  # flagged on its own or through its cluster: its address is marked
                board.note_flagged_address(ctx.ip, account, ctx.ts, addr.max_addresses)
            else:
                hot = board.flagged_at_address(ctx.ip, account, ctx.ts, addr.ttl_s)
        tpl = cp.config.templates
        hot_tpl: list[str] = []
        young = age_s < tpl.max_account_age_s
        if tpl.enabled and (young or lvl >= tpl.note_level):
            # the pipeline (template, client, parameters) of a new or watched account is noted;
            # a new account inherits from those of the noted accounts that are flagged now (a
            # hydra's first accounts were new and unflagged when they sent)
            keys = _template_keys(ctx)
            if young and lvl < 1.0:
                hot_tpl = board.flagged_with_template(keys, account, ctx.ts, tpl.ttl_s, cp.threshold)
                if len(hot_tpl) < tpl.several_accounts:
                    hot_tpl = []
            board.note_template(keys, account, ctx.ts, tpl.max_templates)
        if (review.state == "none" and not matches and not hot and not hot_tpl and lvl < cp.quiet_below
                and banned_peer is None):
            d = RiskDecision(action=cp.config.default_action, level=lvl)
            if d.action != "allow":
                d.reasons.append(f"default action {d.action} (no rule matched)")
                self._finish(cp, d, ctx, lvl, _budget_key(account, eff))
            board.record_decision(account, _record(ctx, d, eff, review.state, matches))
            self.counts[(d.action, None)] += 1
            return d

        ind_level = 0.0
        if matches:
            kinds = {m.kind for m in matches}
            ind_level = max(cp.indicator_levels[k] for k in kinds) + (MULTI_INDICATOR_BONUS if len(kinds) > 1 else 0.0)
        hot_level = 0.0
        if hot:
            hot_level = addr.several_accounts_level if len(hot) >= addr.several_accounts else addr.one_account_level
        tpl_level = tpl.level if hot_tpl else 0.0
        # a person banned a linked account: the rest of its cluster is treated as near-certain
        eff_level = max(lvl, ind_level, hot_level, tpl_level, BANNED_PEER_LEVEL if banned_peer is not None else 0.0)
        rule = next((r for r in cp.rules if r.matches(ctx.tier, review.state, eff_level, eff.cluster_flagged,
                                                        bool(matches), age_s)), None)
        action = rule.action if rule else cp.config.default_action
        d = RiskDecision(action=action, rule=rule.name if rule else None, level=eff_level)
        r = d.reasons
        if review.state != "none":
            who = f" by {review.by}" if review.by else ""
            note = f": {review.note}" if review.note else ""
            r.append(f"account {review.state} by review{who}{note}")
        if eff.risk > 0 and (eff_level >= cp.quiet_below or eff.own.flagged):
            r.append(_risk_reason(eff.own.risk, cp.threshold, eff.own.evidence))
        if eff.inherited_from is not None:
            r.append(f"cluster {eff.cluster} {'flagged' if eff.cluster_flagged else 'linked'}: inherits risk "
                     f"{eff.risk:.2f} from linked account {eff.inherited_from}")
        elif eff.cluster_flagged and eff.cluster is not None:
            r.append(f"cluster {eff.cluster} flagged")
        if banned_peer is not None:
            r.append(f"cluster {eff.cluster} has a banned account ({banned_peer})")
        for m in matches:
            r.append(f"matches indicator {m.indicator_id} ({m.kind.replace('_', ' ')})")
        if hot:
            shown = ", ".join(hot[:3]) + (f" and {len(hot) - 3} more" if len(hot) > 3 else "")
            r.append(f"address {ctx.ip} was used by {len(hot)} flagged account{'s' if len(hot) > 1 else ''} "
                     f"({shown}): level {hot_level:.2f}")
        if hot_tpl:
            shown = ", ".join(hot_tpl[:3]) + (f" and {len(hot_tpl) - 3} more" if len(hot_tpl) > 3 else "")
            r.append(f"a new account (first seen {age_s / 3600:.1f} h ago) sending through the prompt template, client "
                     f"and parameters of {len(hot_tpl)} flagged accounts ({shown}): level {tpl_level:.2f}")
        if rule is not None and rule.max_age_s is not None:
            r.append(f"account first seen {age_s / 3600:.1f} h ago (rule {rule.name!r}: younger than "
                     f"{rule.max_age_s / 3600:g} h)")
        if rule is not None:
            r.append(f"rule {rule.name!r} -> {action} (level {eff_level:.2f})")
        if action in ("verify", "block"):
            d.message = (rule.message if rule and rule.message else
                         VERIFY_MESSAGE if action == "verify" else BLOCK_MESSAGE)
        self._finish(cp, d, ctx, eff_level, _budget_key(account, eff), rule)
        board.record_decision(account, _record(ctx, d, eff, review.state, matches))
        self.counts[(d.action, d.rule)] += 1
        return d

    def _finish(self, cp: CompiledPolicy, d: RiskDecision, ctx: PolicyContext, lvl: float, budget_key: str,
                rule: _Rule | None = None) -> None:
        """Attach limit scale, risk budget, degrade plan and watermark for throttle / degrade."""
        if d.action in ("throttle", "degrade"):
            curve = cp.config.throttle
            scale = curve.scale(lvl)
            if scale < 1.0:
                d.limit_scale = scale
                d.reasons.append(f"rate limits x{scale:.2f}")
            hourly = curve.budget(lvl, rule.budget_requests if rule is not None else None)
            daily = curve.daily_budget(lvl, rule.daily_budget_requests if rule is not None else None)
            limits = [(w, n) for w, n in ((curve.budget_window_s, hourly), (86400.0, daily)) if n is not None]
            if not limits and scale >= 1.0 and d.action == "throttle":
                d.action = "allow"  # nothing to tighten at this level
                d.reasons.append("throttle curve not reached: allowed")
                return
            if limits:
                used, retry = self.board.take_budget(budget_key, ctx.ts, limits)
                for (w, n), u in zip(limits, used, strict=True):
                    if w == 86400.0:
                        d.budget_day, d.budget_day_used = n, u
                    else:
                        d.budget, d.budget_used = n, u
                who = "its cluster's shared" if budget_key.startswith("cluster:") else "the account's"
                text = ", ".join(f"{n} requests {_window_words(w)} ({u} used)" for (w, n), u in zip(limits, used, strict=True))
                if retry is not None:
                    d.retry_after_s = retry
                    spent = " and ".join(f"{n} requests {_window_words(w)}" for (w, n), u in zip(limits, used, strict=True)
                                         if u >= n)
                    d.message = (f"Rate limit reached for this account: at most {spent} at the moment. "
                                 f"Retry after {math.ceil(retry)} s.")
                    d.reasons.append(f"{who} risk budget is spent ({text}): 429, retry after {retry:.0f} s")
                    return
                d.reasons.append(f"{who} risk budget: {text} before this one")
                if d.action == "throttle":
                    # served exactly as asked, within the account's tightened limits: the request's
                    # action is "allow" (the rule, level, scale and budget say it is watched); it is
                    # "throttle" only when a limit refuses it (429)
                    d.action = "allow"
                    d.reasons.append("within its risk budget: served")
        if d.action == "degrade":
            plan = cp.plan
            d.degrade = plan
            d.strip_logprobs = plan.logprobs in ("drop", "refuse")
            d.reasons.append(f"degraded: {plan.describe()}")
            # remote upstreams cannot run processors (the gateway would refuse the request): skip there
            if cp.strong_mark is not None and getattr(ctx.engine, "supports_logits_processors", False):
                req = ctx.request
                t = req.get("temperature")
                p = req.get("top_p")
                d.logits_processors = [cp.strong_mark.processor(1.0 if t is None else float(t),
                                                                1.0 if p is None else float(p))]
                d.reasons.append("stronger watermark")

    # ------------------------------------------------------------------ reload
    def reload(self, config: PolicyConfig | None = None, indicators_path: Path | None = None) -> None:
        """Compile and swap in a new policy (and re-read the indicator file). Raises ValueError /
        IndicatorError on a bad config; the current policy then stays."""
        cfg = config or self.compiled.config
        ind = load_indicators(indicators_path or cfg.indicators.file)
        thr = cfg.threshold if cfg.threshold is not None else self._base_threshold
        new = CompiledPolicy.build(cfg, thr, ind, self.watermark)
        self.compiled = new
        self.board.set_threshold(thr)
        self.reloads += 1
        self.reload_error = None

    def reload_file(self, path: Path | str) -> bool:
        """Load ``path`` and swap; on error keep the old policy, log and remember the error."""
        try:
            self.reload(load_policy_file(path))
        except (ValueError, OSError) as exc:
            self.reload_error = str(exc)
            log.error("policy reload failed, keeping the current policy: %s", exc)
            return False
        log.info("policy reloaded from %s", path)
        return True

    def watch(self, path: Path | str | None, interval_s: float = 2.0) -> None:
        """Start hot reload: poll ``path``'s and the indicator file's mtimes off the request path."""
        self.stop()
        self._reloader = PolicyReloader(self, Path(path) if path else None, interval_s)
        self._reloader.start()

    def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.stop()
            self._reloader = None

    def explain(self, account: str) -> dict[str, Any]:
        """The last decision for an account and the state behind it now."""
        return {"last_decision": self.board.last_decision(account), "now": self.board.describe(account),
                "threshold": self.compiled.threshold}


class PolicyReloader(threading.Thread):
    def __init__(self, policy: RiskPolicy, path: Path | None, interval_s: float) -> None:
        super().__init__(name="distillguard-policy-reload", daemon=True)
        self.policy = policy
        self.path = path
        self.interval_s = interval_s
        self._halt = threading.Event()
        self._mtimes = self._stat()

    def _stat(self) -> tuple[float | None, float | None]:
        def mt(p: Path | None) -> float | None:
            try:
                return os.stat(p).st_mtime_ns if p is not None else None
            except OSError:
                return None

        return mt(self.path), mt(self.policy.compiled.config.indicators.file)

    def check(self) -> bool:
        """One poll; returns True when something was (re)loaded successfully."""
        now = self._stat()
        if now == self._mtimes:
            return False
        policy_changed = now[0] != self._mtimes[0]
        self._mtimes = now
        if policy_changed and self.path is not None:
            return self.policy.reload_file(self.path)
        try:
            self.policy.reload()
        except (ValueError, OSError) as exc:
            self.policy.reload_error = str(exc)
            log.error("indicator reload failed, keeping the current indicators: %s", exc)
            return False
        return True

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5.0)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the reloader must outlive one bad poll
                log.exception("policy reloader poll failed")


# ---------------------------------------------------------------------- helpers
def _budget_key(account: str, eff: Any) -> str:
    """Linked accounts are one actor: they share one risk budget (a hydra cannot multiply its
    budget by opening accounts once the detector links them)."""
    return f"cluster:{eff.cluster}" if eff.cluster is not None else account


def _window_words(window_s: float) -> str:
    if window_s == 3600:
        return "per hour"
    if window_s == 86400:
        return "per day"
    return f"per {window_s:g} s"


def _risk_reason(risk: float, thr: float, evidence: tuple[dict[str, Any], ...]) -> str:
    sigs = ", ".join(e.get("signal", "?") for e in evidence[:3] if isinstance(e, dict))
    op = "≥" if risk >= thr else "<"
    return f"risk {risk:.2f} {op} {thr:.2f}" + (f" ({sigs})" if sigs else "")


def _template_keys(ctx: PolicyContext) -> list[int]:
    """The request's pipeline keys: its fingerprint (endpoint, model, client, sampling
    parameters) with the head, and with the tail, of its prompt's skeleton (the detector's
    cohort keys, ``detect.coordination``), hashed (in-process keys: 64-bit ``hash``)."""
    from distillguard.detect.coordination import CohortTracker, template_edges

    text = _last_user_text(ctx.request)
    if not text.strip():
        return []
    fp = CohortTracker.fingerprint(ctx.request, ctx.endpoint, ctx.user_agent)
    head, tail = template_edges(text)
    return [hash((fp, "h", head)), hash((fp, "t", tail))]


def _last_user_text(request: dict[str, Any]) -> str:
    from distillguard.detect.templates import user_text

    return user_text(request)


def _record(ctx: PolicyContext, d: RiskDecision, eff: Any, review: str, matches: list[Match]) -> dict[str, Any]:
    return {"ts": ctx.ts, "action": d.action, "reasons": d.reasons, "rule": d.rule, "level": round(d.level, 4),
            "risk": round(eff.own.risk, 6), "effective_risk": round(eff.risk, 6), "cluster": eff.cluster,
            "limit_scale": d.limit_scale, "budget": d.budget, "budget_used": d.budget_used,
            "budget_day": d.budget_day, "budget_day_used": d.budget_day_used,
            "retry_after_s": d.retry_after_s, "review": review, "indicators": [m.indicator_id for m in matches],
            "endpoint": ctx.endpoint, "tier": ctx.tier}
