"""Behavioural features of one account, from counters that never grow with the account's age.

Volume and growth, time regularity (inter-arrival spread, round-the-clock activity), parameter
uniformity, harvesting (logprobs, n > 1, maximal max_tokens), conversation shape (single-turn
only) and fixed system prompts. Each feature becomes a value in [0, 1] with a sentence a reviewer
can check.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DAY = 86_400.0


def _bounded_inc(c: Counter, key: Any, cap: int) -> None:
    """Counter with at most ``cap`` keys: a new key evicts the rarest (space-saving)."""
    if key in c or len(c) < cap:
        c[key] += 1
        return
    rare, n = min(c.items(), key=lambda kv: kv[1])
    del c[rare]
    c[key] = n + 1


def request_params(request: dict[str, Any]) -> tuple:
    return (request.get("max_tokens", request.get("max_completion_tokens")), request.get("temperature"),
            request.get("top_p"), request.get("n"), bool(request.get("logprobs")), request.get("top_logprobs"))


def turn_shape(request: dict[str, Any]) -> tuple[int, int]:
    """(user turns, assistant turns) in the request."""
    msgs = request.get("messages")
    if not isinstance(msgs, list):
        return 1, 0
    users = sum(1 for m in msgs if isinstance(m, dict) and m.get("role") == "user")
    bots = sum(1 for m in msgs if isinstance(m, dict) and m.get("role") == "assistant")
    return users, bots


@dataclass
class BehaviourState:
    n: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    # Welford on inter-arrival gaps
    gap_n: int = 0
    gap_mean: float = 0.0
    gap_m2: float = 0.0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    days: set[int] = field(default_factory=set)
    #: distinct clock hours with activity (bounded: 60 days' worth)
    hours_active: set[int] = field(default_factory=set)
    #: distinct 10-minute slots with activity (bounded: 30 days' worth)
    slots_active: set[int] = field(default_factory=set)
    tokens: int = 0
    params: Counter = field(default_factory=Counter)
    explicit_params: int = 0
    logprobs: int = 0
    multi_n: int = 0
    maximal: int = 0
    single_turn: int = 0
    followups: int = 0
    system: Counter = field(default_factory=Counter)
    with_system: int = 0
    reasoning_hits: int = 0
    reasoning_example: str | None = None
    datagen_hits: int = 0
    datagen_example: str | None = None
    harvest_example: str | None = None

    def update(self, ts: float, request: dict[str, Any], completion_tokens: int, prompt_tokens: int,
               system_hash: str | None, reasoning_p: float, text: str, max_tokens_maximal: int,
               datagen_p: float = 0.0) -> None:
        self.n += 1
        if self.last_ts is not None:
            gap = max(0.0, ts - self.last_ts)
            self.gap_n += 1
            d = gap - self.gap_mean
            self.gap_mean += d / self.gap_n
            self.gap_m2 += d * (gap - self.gap_mean)
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.hours[int(ts // 3600) % 24] += 1
        if len(self.days) < 400:
            self.days.add(int(ts // DAY))
        if len(self.hours_active) < 24 * 60:
            self.hours_active.add(int(ts // 3600))
        if len(self.slots_active) < 6 * 24 * 30:
            self.slots_active.add(int(ts // 600))
        self.tokens += prompt_tokens + completion_tokens
        p = request_params(request)
        _bounded_inc(self.params, p, 8)
        if p[0] is not None and p[1] is not None:
            self.explicit_params += 1
        n_choices = request.get("n") or 1
        mt = p[0] or 0
        harvest = bool(request.get("logprobs")) or bool(request.get("top_logprobs"))
        self.logprobs += int(harvest)
        self.multi_n += int(isinstance(n_choices, int) and n_choices > 1)
        self.maximal += int(isinstance(mt, int) and mt >= max_tokens_maximal)
        if (harvest or (isinstance(n_choices, int) and n_choices > 1)) and self.harvest_example is None:
            self.harvest_example = f"logprobs={request.get('logprobs')}, top_logprobs={request.get('top_logprobs')}, n={n_choices}, max_tokens={mt}"
        users, bots = turn_shape(request)
        self.single_turn += int(users <= 1 and bots == 0)
        self.followups += int(bots > 0)
        if system_hash is not None:
            self.with_system += 1
            _bounded_inc(self.system, system_hash, 4)
        if reasoning_p >= 0.5:
            self.reasoning_hits += 1
            if self.reasoning_example is None:
                self.reasoning_example = text[:140]
        if datagen_p >= 0.5:
            self.datagen_hits += 1
            if self.datagen_example is None:
                self.datagen_example = text[:140]

    # ---- signal values in [0, 1] ----
    def cv(self) -> float | None:
        if self.gap_n < 5 or self.gap_mean <= 0:
            return None
        return math.sqrt(self.gap_m2 / (self.gap_n - 1)) / self.gap_mean

    def span_days(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return (self.last_ts - self.first_ts) / DAY

    def volume(self, detail: bool = True) -> tuple[float, str]:
        active = max(1, len(self.days))
        per_day = self.n / active
        v = 0.5 * min(1.0, math.log1p(self.n) / math.log1p(5000)) + 0.5 * min(1.0, math.log1p(per_day) / math.log1p(3000))
        if not detail:
            return v, ""
        return v, f"{self.n:,} requests on {active} active day(s) ({per_day:,.0f}/day), {self.tokens:,} tokens"

    def persistence(self, detail: bool = True) -> tuple[float, str]:
        """A campaign keeps going: 10-minute slot after slot, hour after hour, day after day. A
        one-off job (a benchmark pass) is over in well under an hour however fast it sends: it
        fills at most a handful of 10-minute slots."""
        days, hours = len(self.days), len(self.hours_active)
        v = min(1.0, max(0.0, (days - 1) / 4, (hours - 2) / 10, (len(self.slots_active) - 4) / 24))
        if not detail:
            return v, ""
        return v, (f"active in {len(self.slots_active)} ten-minute slot(s), {hours} clock hour(s), {days} day(s) "
                   f"over {self.span_days():.1f} days")

    def time_regularity(self, detail: bool = True) -> tuple[float, str]:
        cv = self.cv()
        active_hours = sum(1 for h in self.hours if h > 0)
        # round-the-clock counts only once there are enough requests to fill the day by chance
        rtc = max(0.0, (active_hours - 16) / 8) if self.n >= 72 else 0.0
        reg = 0.0 if cv is None else min(1.0, max(0.0, (1.6 - cv) / 1.2))
        v = max(reg, rtc)
        if not detail:
            return v, ""
        cv_s = "n/a" if cv is None else f"{cv:.2f}"
        return v, f"inter-arrival CV {cv_s} (people are bursty, > 1.5), active in {active_hours}/24 hours of the day"

    def param_uniformity(self, detail: bool = True) -> tuple[float, str]:
        if not self.n:
            return 0.0, ""
        top, cnt = max(self.params.items(), key=lambda kv: kv[1])
        share = cnt / self.n
        explicit = self.explicit_params / self.n
        if not detail:
            return share * explicit, ""
        return share * explicit, f"{share:.0%} of requests use identical parameters (max_tokens={top[0]}, temperature={top[1]})"

    def harvesting(self, detail: bool = True) -> tuple[float, str]:
        if not self.n:
            return 0.0, ""
        lp, mn, mx = self.logprobs / self.n, self.multi_n / self.n, self.maximal / self.n
        v = max(lp, mn, 0.8 * mx, min(1.0, 0.6 * lp + 0.6 * mn + 0.5 * mx))
        if not detail:
            return v, ""
        text = f"{lp:.0%} ask for logprobs, {mn:.0%} for n > 1, {mx:.0%} for maximal max_tokens"
        if self.harvest_example:
            text += f"; e.g. {self.harvest_example}"
        return v, text

    def single_turn_share(self, detail: bool = True) -> tuple[float, str]:
        if self.n < 5:
            return 0.0, ""
        share = self.single_turn / self.n
        if not detail:
            return (share if self.followups == 0 else share * 0.5), ""
        return share if self.followups == 0 else share * 0.5, f"{share:.0%} single-turn requests, {self.followups} follow-ups"

    def fixed_system_prompt(self, detail: bool = True) -> tuple[float, str]:
        if not self.with_system:
            return 0.0, "no system prompt"
        cnt = max(self.system.values())
        share = cnt / self.n
        if not detail:
            return share, ""
        return share, f"one system prompt in {cnt:,} of {self.n:,} requests"

    def _prompt_share(self, hits: int, example: str | None, what: str, detail: bool) -> tuple[float, str]:
        """Share of prompts a per-prompt scorer fired on, with the first such prompt as evidence."""
        if not self.n:
            return 0.0, ""
        share = hits / self.n
        if not detail:
            return share, ""
        text = f"{share:.0%} of prompts {what}"
        if example:
            text += f'; e.g. "{example}"'
        return share, text

    def reasoning(self, detail: bool = True) -> tuple[float, str]:
        return self._prompt_share(self.reasoning_hits, self.reasoning_example, "ask for written-out reasoning", detail)

    def data_generation(self, detail: bool = True) -> tuple[float, str]:
        """Share of prompts that ask for model training data (Self-Instruct style generation)."""
        return self._prompt_share(self.datagen_hits, self.datagen_example,
                                  "ask for new training examples/tasks with responses", detail)
