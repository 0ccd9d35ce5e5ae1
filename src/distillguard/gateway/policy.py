"""The policy hook: what to do with a request, decided before the engine runs.

``app.state.policy`` is any object with ``decide(ctx: PolicyContext) -> Decision`` (a coroutine
function works too). The gateway acts on the decision:

* ``allow``    serve normally (a risk policy may still have tightened the limits: ``limit_scale``);
* ``throttle`` serve, with every rate limit multiplied by ``limit_scale`` (e.g. 0.25); when the
               policy also sets ``retry_after_s`` (the account's risk budget is spent) answer
               429 with that Retry-After instead;
* ``degrade``  serve, without logprobs, limits times ``limit_scale``;
* ``verify``   403 telling the customer how to verify the account;
* ``block``    403.

``logits_processors`` go to the engine with the request (``SamplingParams.logits_processors``):
this is where a watermark or a countermeasure is attached per request. Engines that cannot run
processors (remote upstreams) refuse requests that carry them rather than silently skip them.
The default policy allows everything and attaches nothing; the real one lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from distillguard.engines.base import Engine, LogitsProcessor
from distillguard.events import Decision as EventDecision
from distillguard.store.base import Account, KeyRecord

ACTIONS = ("allow", "throttle", "degrade", "verify", "block")

VERIFY_MESSAGE = (
    "This account must be verified before it can continue: contact the API owner to verify your "
    "organisation (verified accounts get the 'verified' tier)."
)


@dataclass
class PolicyContext:
    account: Account
    key: KeyRecord
    tier: str
    endpoint: str  # "/v1/chat/completions" | "/v1/completions"
    request: dict[str, Any]  # the body as the client sent it
    prompt_tokens: int
    ip: str | None
    user_agent: str | None
    ts: float  # arrival time
    engine: Engine


@dataclass
class Decision:
    action: str = "allow"
    reasons: list[str] = field(default_factory=list)
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    #: multiplies every rate limit of the request's tier (1.0 = unchanged)
    limit_scale: float = 1.0
    #: serve without logprobs (always so for "degrade" until the degrade plans of the policy
    #: area are wired into the routes: never hand out un-degraded logprobs by accident)
    strip_logprobs: bool = False
    #: shown to the client on "verify" / "block" (and on a 429 for a spent risk budget)
    message: str | None = None
    #: throttle/degrade only: the policy's own budget for this account is spent; answer 429 with
    #: this Retry-After (seconds) instead of serving (the per-minute limits cannot see it: they
    #: reset every minute, while a risk budget spans an hour or more)
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown policy action {self.action!r}; expected one of {ACTIONS}")
        if not self.limit_scale > 0:
            raise ValueError("limit_scale must be positive")

    def strips_logprobs(self) -> bool:
        return self.strip_logprobs or self.action == "degrade"

    def for_event(self) -> EventDecision:
        # model_construct: the fields were checked in __post_init__; validating again per
        # request would cost more than the rest of the event
        return EventDecision.model_construct(action=self.action, reasons=[str(r) for r in self.reasons])


class Policy(Protocol):
    def decide(self, ctx: PolicyContext) -> Decision: ...


class AllowAll:
    """The default: every request is allowed, nothing is attached."""

    _ALLOW = Decision()

    def decide(self, ctx: PolicyContext) -> Decision:
        return self._ALLOW
