"""Requests-per-minute and tokens-per-minute limits, per key and per account, with token reservation.

Tokens are reserved *before* the engine runs (prompt tokens + max_tokens × n) with one atomic
check-and-add per counter, and *settled* afterwards by refunding what was not used. Concurrent
requests therefore cannot all pass a check that only one of them fits (LiteLLM issue 18730): the
counter already holds every in-flight request's worst case.

Counting uses the `limits` library's sliding-window-counter storage primitives (in-process memory,
or Redis through an atomic Lua script), called directly rather than through its strategy classes
because we need three things they do not offer: our own counter keys (so a throttled, scaled-down
limit shares the counter of the full one), refunds, and a Retry-After for a hit of cost > 1.

Refunds: the memory storage's windows are aligned to the clock, so a refund goes to the window the
reservation went into. Redis windows shift inside the Lua script; a refund goes to the current
window (clamped at zero), which can only make a limit slightly more lenient for at most one
window after a shift.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from limits.storage import MemoryStorage, storage_from_string

from distillguard.config import TierLimits

WINDOW_S = 60  # every limit here is "per minute"


class LimitExceeded(Exception):
    def __init__(self, kind: str, limit: int, cost: int, retry_after_s: float | None) -> None:
        self.kind = kind  # key_rpm | key_tpm | account_rpm | account_tpm
        self.limit = limit
        self.cost = cost
        self.retry_after_s = retry_after_s  # None: this request can never fit the limit

    def message(self) -> str:
        who, unit = self.kind.split("_")
        noun = "requests" if unit == "rpm" else "tokens"
        if self.retry_after_s is None:
            return (
                f"Request too large: it reserves {self.cost} tokens (prompt + max_tokens × n) but the {who} limit is "
                f"{self.limit} tokens per minute; lower max_tokens or n."
            )
        return f"Rate limit reached: {self.limit} {noun} per minute per {who}. Retry after {math.ceil(self.retry_after_s)} s."


@dataclass
class Reservation:
    """Tokens held against the TPM counters until ``Limiter.settle``."""

    tokens: int
    at: float
    counters: list[tuple[str, int]] = field(default_factory=list)  # (counter key, tokens reserved)
    settled: bool = False


class Limiter:
    def __init__(self, storage_url: str = "memory://") -> None:
        url = storage_url
        options: dict[str, Any] = {}
        if url.startswith(("redis://", "rediss://", "redis+", "unix://")):
            url = "async+" + url  # never block the event loop on a network round trip
            options["implementation"] = "redispy"  # redis-py is a dependency already; coredis is not
        if url.startswith("memory://") and not options:
            self.storage: Any = QuietMemoryStorage()
        else:
            self.storage = storage_from_string(url, **options)
        if not hasattr(self.storage, "acquire_sliding_window_entry"):
            raise ValueError(f"limits storage {storage_url!r} does not support sliding windows; use memory:// or redis://")
        self.is_async = url.startswith("async+")
        self.storage_url = storage_url

    async def check(self) -> None:
        """Raise if the storage cannot be reached (called at start-up, so a bad URL fails fast)."""
        ok = await _maybe(self.storage.check())
        if not ok:
            raise ConnectionError(f"cannot reach the limits storage at {self.storage_url}")

    async def reserve(self, key_id: str, account: str, tier: TierLimits, tokens: int, scale: float = 1.0) -> Reservation:
        """Count one request and reserve ``tokens``, or raise LimitExceeded (nothing stays counted)."""
        now = time.time()
        checks = (
            ("key_rpm", f"dg/rpm/k/{key_id}", tier.key_rpm, 1),
            ("account_rpm", f"dg/rpm/a/{account}", tier.account_rpm, 1),
            ("key_tpm", f"dg/tpm/k/{key_id}", tier.key_tpm, tokens),
            ("account_tpm", f"dg/tpm/a/{account}", tier.account_tpm, tokens),
        )
        done: list[tuple[str, int]] = []
        for kind, key, full_limit, cost in checks:
            limit = max(1, int(full_limit * scale))
            if cost > 0 and not await _maybe(self.storage.acquire_sliding_window_entry(key, limit, WINDOW_S, cost)):
                for k, c in done:
                    await self._refund(k, c, now)
                retry = None if cost > limit else await self._retry_after(key, limit, cost)
                raise LimitExceeded(kind, limit, cost, retry)
            done.append((key, cost))
        return Reservation(tokens=tokens, at=now, counters=[(k, c) for k, c in done if "/tpm/" in k])

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Give back the reserved tokens that were not used (all of them when used_tokens is 0)."""
        pending = self.settle_nowait(reservation, used_tokens)
        if pending is not None:
            await pending

    def settle_nowait(self, reservation: Reservation, used_tokens: int) -> Coroutine[Any, Any, None] | None:
        """Settle now if the storage is in-process (no await: safe inside a cancelled scope);
        for a network storage return the coroutine that does it, for the caller to schedule."""
        if reservation.settled:
            return None
        reservation.settled = True
        unused = min(reservation.tokens - used_tokens, reservation.tokens)
        if unused <= 0:
            return None
        if self.is_async:
            return self._refund_all(reservation.counters, unused, reservation.at)
        for key, _ in reservation.counters:
            self._refund_sync(key, unused, reservation.at)
        return None

    async def _refund_all(self, counters: list[tuple[str, int]], amount: int, at: float) -> None:
        for key, _ in counters:
            await self._refund(key, amount, at)

    async def _refund(self, key: str, amount: int, at: float) -> None:
        if amount <= 0:
            return
        if not self.is_async:
            self._refund_sync(key, amount, at)
            return
        # Redis: the current window, never below zero
        current = self.storage._current_window_key(key)
        left = await self.storage.incr(current, 2 * WINDOW_S, -amount)
        if left < 0:
            await self.storage.incr(current, 2 * WINDOW_S, -left)

    def _refund_sync(self, key: str, amount: int, at: float) -> None:
        _, current = self.storage.sliding_window_keys(key, WINDOW_S, at)
        self.storage.decr(current, amount)
        if isinstance(self.storage, QuietMemoryStorage):
            self.storage.sweep_now_and_then()

    async def _retry_after(self, key: str, limit: int, cost: int) -> float:
        prev, prev_ttl, cur, cur_ttl = await _maybe(self.storage.get_sliding_window(key, WINDOW_S))
        return seconds_until_fits(limit, cost, WINDOW_S, prev, prev_ttl, cur, cur_ttl)

    def close(self) -> None:
        timer = getattr(self.storage, "timer", None)
        if timer is not None and hasattr(timer, "cancel"):
            timer.cancel()


def seconds_until_fits(limit: int, cost: int, window: float, prev: int, prev_ttl: float, cur: int, cur_ttl: float) -> float:
    """When a hit of ``cost`` will fit a sliding-window counter, from the window's state.

    The counter weighs the previous window by the share of it still inside the last minute:
    ``prev * prev_ttl / window + cur``. It falls at ``prev / window`` per second until the current
    window ends (``cur_ttl - window`` from now); then ``cur`` becomes the previous window and
    decays the same way.
    """
    excess = prev * prev_ttl / window + cur + cost - limit
    if excess <= 0:
        return 0.0
    shift = max(cur_ttl - window, 0.0)
    if prev > 0:
        t = excess * window / prev
        if t <= min(prev_ttl, shift):
            return t
    if cur == 0:
        return shift
    return shift + max(window - (limit - cost) * window / cur, 0.0)


class QuietMemoryStorage(MemoryStorage):
    """`limits`' in-process storage without its expiry timer thread.

    The stock storage starts a new ``threading.Timer`` thread up to 100 times a second to drop
    expired counters; on a busy gateway those threads fight the event loop for the GIL. Expired
    counters are already ignored when read, so only memory is at stake: ``sweep_now_and_then``
    drops them at most every ``SWEEP_S`` seconds, inline, from the request path.
    """

    SWEEP_S = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()
        self._last_sweep = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides the private hook
        pass

    def sweep_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= self.SWEEP_S:
            self._last_sweep = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
