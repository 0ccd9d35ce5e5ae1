"""Settings for the risk policy (owned by distillguard.policy): rules, the throttle curve, what
"degrade" withholds, and how imported threat indicators raise risk.

Risk is read on the detector's own scale through a *level* anchored on its calibrated threshold
``thr`` (``distillguard detect calibrate``), so the same policy file works whatever the threshold:

    level(risk) = risk / thr                          for risk <  thr   (0 .. 1: below the flag line)
                = 1 + (risk - thr) / (1 - thr)        for risk >= thr   (1 .. 2: flagged .. certain)

Level 1.0 is exactly "flagged at the calibrated false-positive rate" (0.1% of benign accounts by
default): by default an unverified account over it must verify. Below it (see ``default_rules``)
a watched account (level 0.6 and up) has a risk budget of requests an hour and a day, shared by
its linked cluster; nothing below the line changes an established account's answer, and nothing
refuses one unless the account sends more requests than its budget. A watched account in its first
hours (``watch-new``) has a tighter budget and degraded answers. Over the line, the budget of a verified account
shrinks smoothly with the level (the throttle curve) and its answers are degraded from 1.5.

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
    tier (RPM and TPM, key and account) is multiplied by it.

    The per-minute limits alone do not slow a distiller: a campaign runs at a steady 15-110
    requests an hour, far under any per-minute limit however scaled. So an account a throttling
    rule applies to (or its whole cluster: linked accounts share one budget) also gets a *risk
    budget*: ``max(1, budget_requests * limit_scale)`` requests per ``budget_window_s`` and
    ``max(1, daily_budget_requests * limit_scale)`` per day, in arrival time (the simulated clock
    in the arena); beyond it the gateway answers 429 with a Retry-After until enough counted
    requests leave the window. Below ``start`` the budget is whole (limit_scale 1); an account
    near ``full`` gets a handful of requests an hour."""

    start: float = 1.0
    full: float = 1.5
    power: float = 1.0
    floor: float = 0.1
    #: requests per window for a watched account (a throttling rule matched), at or below the
    #: curve's start; times limit_scale above it (None: no risk budget, per-minute limits only)
    budget_requests: int | None = 30
    budget_window_s: float = 3600.0
    #: requests per day, likewise (None: none). The day is what tells a campaign from a busy
    #: customer: campaigns run around the clock (15-110 requests an hour is 360-2,600 a day) while
    #: a busy app's day has a night in it (a RAG app: 60-150 a day). Chosen on the benign-only
    #: tune split (bench/policy_simulation.py --split tune): the smallest daily budget that refused
    #: no tune-split request (160), times 1.25
    daily_budget_requests: int | None = 200

    @model_validator(mode="after")
    def _check(self) -> ThrottleCurve:
        if not self.full > self.start:
            raise ValueError(f"throttle.full ({self.full}) must be above throttle.start ({self.start})")
        if not 0 < self.floor <= 1:
            raise ValueError(f"throttle.floor must be in (0, 1], got {self.floor}")
        if not self.power > 0:
            raise ValueError(f"throttle.power must be positive, got {self.power}")
        for name in ("budget_requests", "daily_budget_requests"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"throttle.{name} must be at least 1, got {v}")
        if not self.budget_window_s > 0:
            raise ValueError(f"throttle.budget_window_s must be positive, got {self.budget_window_s}")
        return self

    def scale(self, level: float) -> float:
        if level <= self.start:
            return 1.0
        x = min(1.0, (level - self.start) / (self.full - self.start))
        return max(self.floor, 1.0 - x**self.power)

    def budget(self, level: float, base: int | None = None) -> int | None:
        """Requests per ``budget_window_s`` for an account a throttling rule applies to, at
        ``level`` (None: no hourly budget configured). Full below ``start``, shrinking above.
        ``base``: a rule's own budget instead of ``budget_requests``."""
        full = self.budget_requests if base is None else base
        if full is None:
            return None
        return max(1, int(full * self.scale(level)))

    def daily_budget(self, level: float, base: int | None = None) -> int | None:
        """Requests per day, likewise (None: no daily budget configured)."""
        full = self.daily_budget_requests if base is None else base
        if full is None:
            return None
        return max(1, int(full * self.scale(level)))


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
    #: cap on the answer's length (max_tokens) for a degraded request: the one degradation that
    #: cuts a distiller's useful tokens on every model (reasoning is withheld only where the model
    #: marks it); None = the tier's cap
    max_tokens: int | None = 128
    #: attach a stronger watermark (same key and gamma, larger delta) so the teacher's mark
    #: survives distillation on fewer tokens; needs watermark keys configured
    strong_watermark: bool = True
    strong_watermark_delta: float = 4.0

    @model_validator(mode="after")
    def _check(self) -> DegradeConfig:
        if self.max_top_logprobs < 0 or self.max_n < 1:
            raise ValueError("degrade.max_top_logprobs must be >= 0 and degrade.max_n >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"degrade.max_tokens must be at least 1, got {self.max_tokens}")
        if self.noise_sigma < 0 or self.noise_bound_sigmas <= 0 or not 0 <= self.noise_keep_top1 <= 1:
            raise ValueError("degrade noise: sigma >= 0, bound_sigmas > 0, keep_top1 in [0, 1]")
        return self


class IndicatorConfig(BaseModel):
    """Imported STIX indicators (``distillguard intel import``) raise the risk of matching traffic."""

    #: JSON file the importer writes and the policy reads (re-read when it changes)
    file: Path = Path("distillguard-indicators.json")
    #: the level a request is raised to when it matches an indicator of each kind
    #: an address of a flagged cluster: degraded (shared NATs make an IP weak evidence alone)
    ip_level: float = 0.95
    #: a user agent alone: watched (throttled with a budget)
    user_agent_level: float = 0.7
    #: a prompt-template fingerprint of a flagged campaign: degraded (imported from another
    #: organisation's verdicts: restricted at once, but not refused on their word alone)
    template_level: float = 0.95


class AddressConfig(BaseModel):
    """Local network inheritance: the addresses a flagged account sends from act as indicators at
    once, for every other account (the same network indicators ``intel export`` would publish for
    the cluster, applied here without waiting for an export or for the detector to link the new
    account). A hydra rotates fresh accounts through one proxy pool; its next account usually
    arrives from an address a flagged sibling already used.

    One flagged account behind an address is weak evidence (a shared NAT), so it only raises the
    level to ``one_account_level`` (watch: a risk budget); an address used by
    ``several_accounts`` or more distinct flagged accounts is a proxy of a campaign and raises it
    to ``several_accounts_level`` (default: the flag line, verify)."""

    enabled: bool = True
    #: how long an address stays marked after the flagged account's last request from it
    ttl_s: float = 7 * 86400.0
    one_account_level: float = 0.8
    several_accounts: int = 2
    several_accounts_level: float = 1.0
    #: most addresses remembered (oldest dropped first)
    max_addresses: int = 200_000

    @model_validator(mode="after")
    def _check(self) -> AddressConfig:
        if self.ttl_s <= 0 or self.several_accounts < 2 or self.max_addresses < 1:
            raise ValueError("addresses: ttl_s > 0, several_accounts >= 2, max_addresses >= 1")
        return self


class TemplateInheritanceConfig(BaseModel):
    """Local template inheritance: a brand-new account whose request goes through the prompt
    template, client and sampling parameters that ``several_accounts`` or more accounts used that
    are flagged now (a flagged cluster's pipeline) is raised to ``level`` from its first request,
    before the detector has seen it. A hydra keeps adding accounts to a running campaign: each
    new one would otherwise be served until the detector links it, a batch later.

    The policy notes the pipeline of every request of a new account (younger than
    ``max_account_age_s``) or of an account at ``note_level`` or above: a hydra's first accounts
    were new and not yet flagged when they sent, and are flagged by the time the next ones come.

    The match is exact: the request's fingerprint (endpoint, model, user agent, max_tokens,
    temperature, top_p, n, logprobs) and the first or the last 8 skeleton tokens of its prompt
    (``detect.coordination.template_edges``) equal those of requests the flagged accounts sent.
    Only accounts younger than ``max_account_age_s`` inherit (a customer with a history that
    happens to use the same public template is left to the detector), and one flagged account
    is not enough (a flagged benchmark harness does not make its public template a campaign's)."""

    enabled: bool = True
    ttl_s: float = 7 * 86400.0
    several_accounts: int = 2
    level: float = 1.0
    max_account_age_s: float = 6 * 3600.0
    note_level: float = 0.6
    #: most template keys remembered (oldest dropped first)
    max_templates: int = 100_000

    @model_validator(mode="after")
    def _check(self) -> TemplateInheritanceConfig:
        if (self.ttl_s <= 0 or self.several_accounts < 2 or self.max_templates < 1
                or not self.max_account_age_s > 0):
            raise ValueError("templates: ttl_s > 0, several_accounts >= 2, max_account_age_s > 0, max_templates >= 1")
        return self


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
    #: the account is younger than this (seconds since its first request the gateway saw, or since
    #: it was created in the store, whichever is earlier; arrival-time clock)
    max_account_age_s: float | None = None
    #: this rule's own risk budget (requests per ``throttle.budget_window_s`` and per day) for a
    #: throttle / degrade action, instead of the throttle curve's; scaled by the curve above its
    #: start like the curve's own
    budget_requests: int | None = None
    daily_budget_requests: int | None = None
    #: shown to the client on verify / block (default: the gateway's text)
    message: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Rule:
        for name in ("budget_requests", "daily_budget_requests"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"rule {self.name}: {name} must be at least 1, got {v}")
        if self.max_account_age_s is not None and not self.max_account_age_s > 0:
            raise ValueError(f"rule {self.name}: max_account_age_s must be positive, got {self.max_account_age_s}")
        return self


#: an account younger than this (first request seen, or created in the store) that the detector
#: already watches gets the ``watch-new`` rule (see ``default_rules``)
NEW_ACCOUNT_S = 6 * 3600.0

VERIFY_TEXT = ("This account's usage matches automated model extraction. To continue, verify your organisation "
               "with the API owner (reply to your account email or contact support with your account name); "
               "verified accounts get the 'verified' tier and are reviewed by a person.")


def default_rules() -> list[Rule]:
    """Review state first (a human decided), then risk, tightening as the level rises:

    * ``watch`` (level >= 0.6): a risk budget of ``throttle.budget_requests`` (30) requests an
      hour and ``daily_budget_requests`` (200) a day, for the account or its whole linked cluster;
      beyond it 429 with Retry-After. Requests within it are served as asked (their decision is
      ``allow``, rule ``watch``). A campaign runs around the clock at 15-110 requests an hour
      (360-2,600 a day); people and apps stay under the budget.
    * ``watch-new``: the same band for an account younger than ``NEW_ACCOUNT_S`` (6 h since its
      first request): a tight budget of its own (10 requests an hour, 80 a day) and degraded answers
      (length capped, reasoning withheld, logprobs noised). A campaign's own account reaches the
      watch band within minutes to a few hours of its first request (15-110 requests an hour) and
      spends tens to a hundred requests there before the flag: that band was most of what a
      single-account attacker still obtained. A customer with a history is not touched by it: the
      busiest benign account of the tune split (a RAG app) first reached the band 15 h after its
      first request, and no other tune-split benign account reached it at all.
    * ``flagged`` (level >= 1.0, the calibrated 0.1%-FPR line), unverified: must verify (403
      saying how). The attacker's account is stopped, not slowed.
    * ``indicator``: a request matching an imported threat indicator of an address or a prompt
      template (level 0.95) is degraded (answers capped at ``degrade.max_tokens``, reasoning
      withheld, logprobs capped and noised, stronger watermark); a user agent alone (0.7) only puts
      the account under watch; two kinds at once (+0.1) mean verify.
    * verified customers are never sent to verification or blocked automatically: over the flag
      line their budget shrinks with the level (the throttle curve, from 1.0), from 1.5 they are
      degraded too.

    Chosen on the benign-only tune split (``bench/policy_simulation.py --split tune``), never on
    the held-out report split: the busiest benign account there (a RAG app, 17% of the split's
    requests, ~130 a day, up to 21 an hour) spends most of its life at level 0.9-1.0, just under the
    calibrated line, so nothing below the line may shorten answers or shrink budgets without
    hurting the customers most like it. The daily budget is the smallest that refused no
    tune-split request (160), times 1.25.
    """
    return [
        Rule(name="banned", review=["banned"], action="block",
             message="This account has been suspended after a review of its usage. Contact the API owner to appeal."),
        Rule(name="exempt", review=["exempt"], action="allow"),
        Rule(name="verified-flagged", review=["verified"], min_level=1.5, action="degrade"),
        Rule(name="verified", review=["verified"], min_level=1.0, action="throttle"),
        Rule(name="verified-ok", review=["verified"], action="allow"),
        Rule(name="flagged", min_level=1.0, action="verify", message=VERIFY_TEXT),
        Rule(name="indicator", indicator=True, min_level=0.9, action="degrade"),
        Rule(name="watch-new", min_level=0.6, max_account_age_s=NEW_ACCOUNT_S, action="degrade",
             budget_requests=10, daily_budget_requests=80),
        Rule(name="watch", min_level=0.6, action="throttle"),
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
    addresses: AddressConfig = Field(default_factory=AddressConfig)
    templates: TemplateInheritanceConfig = Field(default_factory=TemplateInheritanceConfig)
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
# threshold = 0.87            # default: the detector's calibrated threshold
default_action = "allow"

[policy.throttle]              # limit_scale = max(floor, 1 - ((level - start) / (full - start)) ** power)
start = 1.0
full = 1.5
power = 1.0
floor = 0.1
budget_requests = 30           # risk budget of a watched account: requests per window (x limit_scale above `start`)
budget_window_s = 3600.0
daily_budget_requests = 200    # and per day (campaigns run around the clock)

[policy.degrade]
reasoning = "withhold"         # keep | withhold | summarise
logprobs = "noise"             # keep | cap | noise | drop | refuse
max_top_logprobs = 2
noise_sigma = 0.7
max_n = 1
max_tokens = 128               # answers of a degraded account are at most this long
strong_watermark = true
strong_watermark_delta = 4.0

[policy.addresses]             # addresses of flagged accounts raise the level of other accounts at once
enabled = true
ttl_s = 604800.0
one_account_level = 0.8        # one flagged account behind it (could be a shared NAT): watch
several_accounts = 2
several_accounts_level = 1.0   # two or more: a campaign's proxy, must verify
max_addresses = 200000

[policy.templates]             # a new account on the pipeline (template, client, parameters) of flagged accounts
enabled = true
ttl_s = 604800.0
several_accounts = 2           # flagged accounts that must have used it
level = 1.0                    # the flag line: must verify
max_account_age_s = 21600.0    # only accounts first seen less than 6 h ago inherit
note_level = 0.6               # pipelines noted: new accounts' and those of accounts at this level or above
max_templates = 100000

[policy.indicators]
file = "distillguard-indicators.json"   # written by `distillguard intel import`
ip_level = 0.95
user_agent_level = 0.7
template_level = 0.95

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
min_level = 1.0
action = "throttle"

[[policy.rules]]
name = "verified-ok"
review = ["verified"]
action = "allow"

[[policy.rules]]
name = "flagged"
min_level = 1.0
action = "verify"

[[policy.rules]]
name = "indicator"
indicator = true
min_level = 0.9
action = "degrade"

[[policy.rules]]
name = "watch-new"             # the watch band for an account first seen less than 6 h ago
min_level = 0.6
max_account_age_s = 21600.0
action = "degrade"
budget_requests = 10           # its own risk budget (instead of [policy.throttle]'s)
daily_budget_requests = 80

[[policy.rules]]
name = "watch"
min_level = 0.6
action = "throttle"
"""
