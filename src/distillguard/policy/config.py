"""Settings for the risk policy (owned by distillguard.policy): rules, the throttle curve, what
"degrade" withholds, and how imported threat indicators raise risk.

Risk is read on the detector's own scale through a *level* anchored on its calibrated threshold
``thr`` (``distillguard detect calibrate``), so the same policy file works whatever the threshold:

    level(risk) = risk / thr                          for risk <  thr   (0 .. 1: below the flag line)
                = 1 + (risk - thr) / (1 - thr)        for risk >= thr   (1 .. 2: flagged .. certain)

Level 1.0 is exactly "flagged at the calibrated false-positive rate" (0.1% of benign accounts by
default); nothing below it degrades, verifies or blocks by default, so a legitimate customer is
restricted only as often as the detector's calibrated false-positive rate allows.

Rules are tried in order; the first whose conditions all hold gives the action (a firewall-style
list an operator can read top to bottom). The file is hot-reloaded (``policy.reload``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

Action = Literal["allow", "throttle", "degrade", "verify", "block"]
ReviewState = Literal["none", "exempt", "verified", "banned"]


class ThrottleCurve(BaseModel):
    """limit_scale = max(floor, 1 - ((level - start) / (full - start)) ** power) for level > start.

    Smooth and monotone: 1.0 at ``start``, falling slowly at first (power > 1 spares the many
    accounts just above ``start``) and reaching ``floor`` at ``full``; every rate limit of the
    tier (RPM and TPM, key and account) is multiplied by it."""

    start: float = 0.9
    full: float = 1.6
    power: float = 2.0
    floor: float = 0.05

    @model_validator(mode="after")
    def _check(self) -> ThrottleCurve:
        if not self.full > self.start:
            raise ValueError(f"throttle.full ({self.full}) must be above throttle.start ({self.start})")
        if not 0 < self.floor <= 1:
            raise ValueError(f"throttle.floor must be in (0, 1], got {self.floor}")
        if not self.power > 0:
            raise ValueError(f"throttle.power must be positive, got {self.power}")
        return self

    def scale(self, level: float) -> float:
        if level <= self.start:
            return 1.0
        x = min(1.0, (level - self.start) / (self.full - self.start))
        return max(self.floor, 1.0 - x**self.power)


class DegradeConfig(BaseModel):
    """What a degraded response loses (distillation value) while a human still gets an answer."""

    #: `<think>` blocks and `reasoning_content`: keep, withhold (replaced by a one-line note) or
    #: summarise (extractive: first and last sentence, at most `summary_words` words)
    reasoning: Literal["keep", "withhold", "summarise"] = "withhold"
    summary_words: int = 40
    #: logprobs: keep; cap top_logprobs at `max_top_logprobs`; noise (cap + calibrated noise on
    #: every returned value); drop (answer without logprobs); refuse (400 saying why)
    logprobs: Literal["keep", "cap", "noise", "drop", "refuse"] = "noise"
    max_top_logprobs: int = 2
    #: Gaussian noise (nats) on returned logprobs, truncated at `noise_bound_sigmas` sigmas; the
    #: chosen token stays first among the alternatives with probability `noise_keep_top1`
    noise_sigma: float = 0.7
    noise_bound_sigmas: float = 2.5
    noise_keep_top1: float = 0.9
    #: completions per request (`n`): larger requests are served with this many
    max_n: int = 1
    #: attach a stronger watermark (same key and gamma, larger delta) so the teacher's mark
    #: survives distillation on fewer tokens; needs watermark keys configured
    strong_watermark: bool = True
    strong_watermark_delta: float = 4.0

    @model_validator(mode="after")
    def _check(self) -> DegradeConfig:
        if self.max_top_logprobs < 0 or self.max_n < 1:
            raise ValueError("degrade.max_top_logprobs must be >= 0 and degrade.max_n >= 1")
        if self.noise_sigma < 0 or self.noise_bound_sigmas <= 0 or not 0 <= self.noise_keep_top1 <= 1:
            raise ValueError("degrade noise: sigma >= 0, bound_sigmas > 0, keep_top1 in [0, 1]")
        return self


class IndicatorConfig(BaseModel):
    """Imported STIX indicators (``distillguard intel import``) raise the risk of matching traffic."""

    #: JSON file the importer writes and the policy reads (re-read when it changes)
    file: Path = Path("distillguard-indicators.json")
    #: the level a request is raised to when it matches an indicator of each kind
    ip_level: float = 1.0
    user_agent_level: float = 0.95
    template_level: float = 1.0


class Rule(BaseModel):
    """One row of the policy: conditions (all must hold; an absent condition always holds) → action."""

    name: str
    action: Action
    tiers: list[str] | None = None
    review: list[ReviewState] | None = None
    #: effective risk level (see the module docstring) at least / below
    min_level: float | None = None
    max_level: float | None = None
    #: the account is in a detector cluster that has a flagged member
    cluster_flagged: bool | None = None
    #: the request matched an imported threat indicator
    indicator: bool | None = None
    #: shown to the client on verify / block (default: the gateway's text)
    message: str | None = None


def default_rules() -> list[Rule]:
    """Review state first (a human decided), then risk. Verified customers are never sent to
    verification or blocked automatically; unverified accounts flagged with high confidence must
    verify; flagged accounts are degraded; accounts near the line are throttled smoothly."""
    return [
        Rule(name="banned", review=["banned"], action="block",
             message="This account has been suspended after a review of its usage. Contact the API owner to appeal."),
        Rule(name="exempt", review=["exempt"], action="allow"),
        Rule(name="verified-flagged", review=["verified"], min_level=1.5, action="degrade"),
        Rule(name="verified", review=["verified"], min_level=0.9, action="throttle"),
        Rule(name="verified-ok", review=["verified"], action="allow"),
        Rule(name="high-confidence", min_level=1.6, action="verify",
             message=("This account's usage matches automated model extraction. To continue, verify your "
                      "organisation with the API owner (reply to your account email or contact support with "
                      "your account name); verified accounts get the 'verified' tier and are reviewed by a person.")),
        Rule(name="trial-flagged", tiers=["trial"], min_level=1.0, action="verify"),
        Rule(name="flagged", min_level=1.0, action="degrade"),
        Rule(name="elevated", min_level=0.9, action="throttle"),
    ]


class PolicyConfig(BaseModel):
    #: off = every request allowed (the gateway's AllowAll)
    enabled: bool = True
    #: policy TOML to watch and hot-reload (a `[policy]` table or the policy at top level);
    #: usually the server's own config file
    file: Path | None = None
    reload_interval_s: float = 2.0
    #: detector threshold that anchors the levels; None = the running detector's calibrated one
    threshold: float | None = None
    rules: list[Rule] = Field(default_factory=default_rules)
    #: what happens when no rule matches
    default_action: Action = "allow"
    throttle: ThrottleCurve = Field(default_factory=ThrottleCurve)
    degrade: DegradeConfig = Field(default_factory=DegradeConfig)
    indicators: IndicatorConfig = Field(default_factory=IndicatorConfig)
    #: seconds between reads of the store's account flags (review state set by the CLI in another
    #: process); never read on the request path
    board_refresh_s: float = 2.0
    #: last decisions kept for `explain` (one per account, oldest dropped first)
    explain_accounts: int = 100_000

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"policy rule names must be unique; repeated: {', '.join(sorted(dup))}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"policy.threshold must be in (0, 1), got {self.threshold}")
        return self


def level(risk: float, threshold: float) -> float:
    """Risk on the threshold-anchored scale (see the module docstring)."""
    if risk < threshold:
        return risk / threshold
    return 1.0 + (risk - threshold) / max(1e-9, 1.0 - threshold)


def risk_at(lvl: float, threshold: float) -> float:
    """Inverse of ``level``."""
    if lvl < 1.0:
        return lvl * threshold
    return min(1.0, threshold + (lvl - 1.0) * (1.0 - threshold))


#: A policy file (the server's config file, or a file of its own named by `policy.file`); edit it
#: while the server runs: the change applies within `reload_interval_s`, a broken edit is refused
#: (the running policy stays and /admin/policy/status shows the error).
EXAMPLE_TOML = """
[policy]
# threshold = 0.93            # default: the detector's calibrated threshold
default_action = "allow"

[policy.throttle]              # limit_scale = max(floor, 1 - ((level - start) / (full - start)) ** power)
start = 0.9
full = 1.6
power = 2.0
floor = 0.05

[policy.degrade]
reasoning = "withhold"         # keep | withhold | summarise
logprobs = "noise"             # keep | cap | noise | drop | refuse
max_top_logprobs = 2
noise_sigma = 0.7
max_n = 1
strong_watermark = true
strong_watermark_delta = 4.0

[policy.indicators]
file = "distillguard-indicators.json"   # written by `distillguard intel import`
ip_level = 1.0
user_agent_level = 0.95
template_level = 1.0

# first match wins
[[policy.rules]]
name = "banned"
review = ["banned"]
action = "block"

[[policy.rules]]
name = "exempt"
review = ["exempt"]
action = "allow"

[[policy.rules]]
name = "verified-flagged"
review = ["verified"]
min_level = 1.5
action = "degrade"

[[policy.rules]]
name = "verified"
review = ["verified"]
min_level = 0.9
action = "throttle"

[[policy.rules]]
name = "verified-ok"
review = ["verified"]
action = "allow"

[[policy.rules]]
name = "high-confidence"
min_level = 1.6
action = "verify"

[[policy.rules]]
name = "trial-flagged"
tiers = ["trial"]
min_level = 1.0
action = "verify"

[[policy.rules]]
name = "flagged"
min_level = 1.0
action = "degrade"

[[policy.rules]]
name = "elevated"
min_level = 0.9
action = "throttle"
"""
