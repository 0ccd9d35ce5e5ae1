"""Prometheus metrics, in a registry of the app's own (several apps in one process stay apart)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# request latencies on CPU span ~1 ms (errors, cache hits) to minutes (long generations)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/health"})


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("distillguard_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.tokens = Counter("distillguard_tokens_total", "Tokens served, by kind (prompt, completion).", ["kind"], registry=r)
        self.latency = Histogram(
            "distillguard_request_latency_seconds", "Time from request to last byte, by route.", ["route"], buckets=_BUCKETS, registry=r
        )
        self.engine_latency = Histogram(
            "distillguard_engine_latency_seconds", "Time spent in the engine, by route.", ["route"], buckets=_BUCKETS, registry=r
        )
        self.limit_rejections = Counter(
            "distillguard_limit_rejections_total", "Requests refused by a rate limit, by kind (key_rpm, account_tpm...).", ["kind"], registry=r
        )
        self.policy_actions = Counter("distillguard_policy_actions_total", "Policy decisions by action.", ["action"], registry=r)
        self.events_queued = Gauge("distillguard_events_queued_total", "Exchange events accepted by the writer.", registry=r)
        self.events_written = Gauge("distillguard_events_written_total", "Exchange events written to the store.", registry=r)
        self.events_pending = Gauge("distillguard_events_pending", "Exchange events waiting to be written.", registry=r)
        # .labels() costs a dict lookup and a lock; the children are cached here
        self._req: dict[tuple[str, int], Any] = {}
        self._lat: dict[str, Any] = {}
        self._eng: dict[str, Any] = {}
        self._prompt = self.tokens.labels("prompt")
        self._completion = self.tokens.labels("completion")

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        if route not in ROUTES:
            route = "/admin" if route.startswith("/admin") else "other"
        c = self._req.get((route, status))
        if c is None:
            c = self._req[(route, status)] = self.requests.labels(route, str(status))
        c.inc()
        h = self._lat.get(route)
        if h is None:
            h = self._lat[route] = self.latency.labels(route)
        h.observe(seconds)

    def observe_engine(self, route: str, seconds: float) -> None:
        h = self._eng.get(route)
        if h is None:
            h = self._eng[route] = self.engine_latency.labels(route)
        h.observe(seconds)

    def count_tokens(self, prompt: int, completion: int) -> None:
        self._prompt.inc(prompt)
        self._completion.inc(completion)

    def watch_writer(self, writer: Any) -> None:
        """Read the event writer's counters when scraped (no work on the request path)."""
        self.events_queued.set_function(lambda: writer.queued)
        self.events_written.set_function(lambda: writer.written)
        self.events_pending.set_function(lambda: writer.pending)

    def render(self) -> bytes:
        return generate_latest(self.registry)
