"""The arena's simulated clock: X-DistillGuard-Time sets an exchange's ts only when the server has
an arena secret and the request carries the same secret; otherwise both headers are ignored."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from distillguard.gateway.app import create_app

from .conftest import live_server
from .fakes import FakeEngine

SIM_TS = 1_763_600_000.5
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _one_event_ts(settings: Any, store: Any, headers: dict[str, str]) -> float:
    app = create_app(settings, engine=FakeEngine(), store=store)
    _, secret = store.create_key("acme", "standard")
    with live_server(app) as url:
        r = httpx.post(url + "/v1/chat/completions", json=BODY,
                       headers={"Authorization": f"Bearer {secret}", **headers}, timeout=30)
        assert r.status_code == 200, r.text
        assert app.state.writer.flush(10)
    events = list(store.iter_events())
    assert len(events) == 1
    return events[0].ts


def test_simulated_time_with_matching_secret(settings: Any, store: Any) -> None:
    settings.server.arena_secret = "s3cret"
    ts = _one_event_ts(settings, store, {"X-DistillGuard-Arena-Secret": "s3cret", "X-DistillGuard-Time": str(SIM_TS)})
    assert ts == pytest.approx(SIM_TS)


@pytest.mark.parametrize("server_secret, sent", [(None, "s3cret"), ("s3cret", "wrong"), ("s3cret", None)])
def test_time_header_ignored_without_the_secret(settings: Any, store: Any, server_secret: str | None,
                                                sent: str | None) -> None:
    settings.server.arena_secret = server_secret
    headers = {"X-DistillGuard-Time": str(SIM_TS)}
    if sent is not None:
        headers["X-DistillGuard-Arena-Secret"] = sent
    before = time.time()
    ts = _one_event_ts(settings, store, headers)
    assert before - 1 <= ts <= time.time() + 1


def test_bad_time_value_falls_back_to_wall_clock(settings: Any, store: Any) -> None:
    settings.server.arena_secret = "s3cret"
    before = time.time()
    ts = _one_event_ts(settings, store, {"X-DistillGuard-Arena-Secret": "s3cret", "X-DistillGuard-Time": "soon"})
    assert before - 1 <= ts <= time.time() + 1
