"""Event buses: carry exchange events from the gateway to the detection worker.

``InProcessBus`` (default, ``"memory"``): the worker runs in the gateway's process. Each named
subscription has a bounded queue; when a slow consumer lets it fill up, the OLDEST event is
dropped and counted (``Subscription.dropped``): detection prefers fresh traffic, and the store
still has every event for replay.

``RedisBus`` (``redis://...``): a Redis Stream capped with ``XADD MAXLEN ~``; each subscription
name is a consumer group, so a worker that restarts continues where it stopped, and several
workers under one name share the load. ``publish`` hands the event to a background thread that
pipelines XADDs, so the request path never waits on Redis; if Redis is down, the newest
``buffer_size`` events wait in memory (older ones are dropped and counted). A batch returned by
``get_batch`` is acknowledged when the same subscription asks for the next batch, so a worker
that dies mid-batch gets that batch again on restart (at-least-once).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

from distillguard.events import ExchangeEvent
from distillguard.store.base import EventBus, StoreUnavailable, Subscription

log = logging.getLogger(__name__)


def build_bus(url: str = "memory", **kwargs: Any) -> EventBus:
    """``"memory"`` → InProcessBus; ``redis://host:port/db`` → RedisBus (keyword args go to it)."""
    if url in ("memory", "memory://", ""):
        return InProcessBus(**kwargs)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBus(url, **kwargs)
    raise ValueError(f"unknown event bus URL {url!r}: use 'memory' or redis://host:6379")


# --- in process ---------------------------------------------------------------------------------


class InProcessSubscription(Subscription):
    def __init__(self, name: str, max_queue: int) -> None:
        self.name = name
        self.max_queue = max_queue
        self._queue: deque[ExchangeEvent] = deque()
        self._cond = threading.Condition()
        self.dropped = 0  # events discarded because this queue was full
        self.delivered = 0

    def _put(self, event: ExchangeEvent) -> None:
        with self._cond:
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            self._cond.notify()

    def get_batch(self, max_events: int = 256, timeout_s: float = 0.5) -> list[ExchangeEvent]:
        with self._cond:
            if not self._queue:
                self._cond.wait_for(lambda: bool(self._queue), timeout_s)
            n = min(max_events, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self.delivered += n
            return batch

    def __len__(self) -> int:
        return len(self._queue)


class InProcessBus(EventBus):
    """Fan-out to named subscriptions in this process; events published before a name subscribes
    are not delivered to it. Subscribing twice with one name returns the same subscription."""

    def __init__(self, max_queue: int = 100_000) -> None:
        self.max_queue = max_queue
        self._subs: dict[str, InProcessSubscription] = {}
        self._lock = threading.Lock()
        self.published = 0

    def publish(self, event: ExchangeEvent) -> None:
        self.published += 1
        for sub in tuple(self._subs.values()):
            sub._put(event)

    def subscribe(self, name: str) -> InProcessSubscription:
        with self._lock:
            if name not in self._subs:
                self._subs[name] = InProcessSubscription(name, self.max_queue)
            return self._subs[name]

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in tuple(self._subs.values()))


# --- Redis Streams ------------------------------------------------------------------------------


class RedisBus(EventBus):
    """Events on the Redis Stream ``stream`` (field ``e`` holds the event JSON)."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "distillguard:events",
        maxlen: int = 1_000_000,
        buffer_size: int = 100_000,
        start: str = "$",
    ) -> None:
        import redis  # here, so the in-process default never imports it

        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        #: where a new consumer group starts: "$" (only new events) or "0" (everything kept)
        self.start = start
        self._redis_mod = redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        # few, short client retries: the publisher thread has its own backoff loop
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"event bus {url} unreachable: {exc}") from exc
        self._buffer: deque[ExchangeEvent] = deque(maxlen=buffer_size)
        self._wake = threading.Event()
        self._closed = False
        self._give_up = False  # close() timed out: stop retrying
        self.published = 0
        self.sent = 0
        self.dropped = 0  # publishes lost because the buffer overflowed while Redis was down
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="distillguard-redis-bus", daemon=True)
        self._thread.start()

    def publish(self, event: ExchangeEvent) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1  # deque(maxlen) discards the oldest on append
        self._buffer.append(event)
        self.published += 1
        self._wake.set()

    def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._buffer:
                if self._closed:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            batch = [self._buffer.popleft() for _ in range(min(512, len(self._buffer)))]
            try:
                pipe = self.client.pipeline(transaction=False)
                for ev in batch:
                    pipe.xadd(self.stream, {"e": ev.to_json()}, maxlen=self.maxlen, approximate=True)
                pipe.execute()
                self.sent += len(batch)
                backoff = 0.05
            except self._redis_mod.RedisError as exc:
                self.failed += 1
                # back to the front in order; if publishes filled the buffer meanwhile, the oldest
                # of the batch give way (extendleft on a full deque would silently drop the newest)
                overflow = len(self._buffer) + len(batch) - (self._buffer.maxlen or 0)
                if overflow > 0:
                    batch = batch[overflow:]
                    self.dropped += overflow
                self._buffer.extendleft(reversed(batch))
                log.warning("publishing %d events to %s failed (%s); retrying in %.2fs", len(batch), self.url, exc, backoff)
                if self._closed and self._give_up:
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every published event has been sent to Redis."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self.sent + self.dropped < self.published:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def subscribe(self, name: str, consumer: str | None = None) -> RedisSubscription:
        """Join consumer group ``name`` (created at ``start`` if new) as ``consumer`` (default:
        host-pid). Give a fixed consumer name to resume unacknowledged events after a restart."""
        try:
            self.client.xgroup_create(self.stream, name, id=self.start, mkstream=True)
        except self._redis_mod.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        return RedisSubscription(self, name, consumer)

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._give_up = True
            self._thread.join(1.0)
        if self._buffer:
            log.error("event bus closed with %d events not published to %s", len(self._buffer), self.url)
        self.client.close()


class RedisSubscription(Subscription):
    def __init__(self, bus: RedisBus, group: str, consumer: str) -> None:
        self.bus = bus
        self.group = group
        self.consumer = consumer
        self._unacked: list[bytes] = []
        self._read_pending = True  # first, anything delivered to this consumer but never acked

    def get_batch(self, max_events: int = 256, timeout_s: float = 0.5) -> list[ExchangeEvent]:
        client, redis = self.bus.client, self.bus._redis_mod
        try:
            if self._unacked:
                client.xack(self.bus.stream, self.group, *self._unacked)
                self._unacked = []
            entries: list[Any] = []
            if self._read_pending:
                resp = client.xreadgroup(self.group, self.consumer, {self.bus.stream: "0"}, count=max_events)
                entries = resp[0][1] if resp else []
                if not entries:
                    self._read_pending = False
            if not entries:
                block_ms = max(1, int(timeout_s * 1000))
                resp = client.xreadgroup(self.group, self.consumer, {self.bus.stream: ">"}, count=max_events, block=block_ms)
                entries = resp[0][1] if resp else []
        except redis.RedisError as exc:
            log.warning("reading events from %s failed: %s", self.bus.url, exc)
            time.sleep(min(timeout_s, 1.0))
            return []
        events: list[ExchangeEvent] = []
        for entry_id, fields in entries:
            self._unacked.append(entry_id)
            raw = fields.get(b"e") if fields else None
            if raw is None:
                continue  # trimmed away while pending, or not ours
            try:
                events.append(ExchangeEvent.model_validate_json(raw))
            except ValueError as exc:
                log.warning("skipping malformed event %s on %s: %s", entry_id, self.bus.stream, exc)
        return events

    def ack(self) -> None:
        """Acknowledge the last batch now (otherwise the next get_batch does it)."""
        if self._unacked:
            self.bus.client.xack(self.bus.stream, self.group, *self._unacked)
            self._unacked = []
