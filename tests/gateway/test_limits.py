"""Rate limits through the live gateway: RPM, TPM reservation under concurrency, Retry-After."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest

from distillguard.config import TierLimits
from distillguard.gateway.app import create_app
from distillguard.gateway.limits import Limiter, seconds_until_fits

from .conftest import live_server, make_settings
from .fakes import FakeEngine

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}  # 5 prompt tokens (FakeEngine)


def _setup(tmp_path: Any, tier: TierLimits, storage_url: str = "memory://", delay_s: float = 0.0, engine: Any = None) -> tuple[Any, Any, str]:
    from distillguard.store import open_store

    settings = make_settings(tmp_path, tiny=tier)
    settings.limits.storage_url = storage_url
    store = open_store(settings.store.url)
    # a fresh account name per test: Redis keeps counters between tests and runs
    _, secret = store.create_key(f"acme-{uuid.uuid4().hex[:8]}", "tiny")
    return create_app(settings, engine=engine or FakeEngine(delay_s=delay_s), store=store), store, secret


async def _burst(url: str, secret: str, n: int, body: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60,
                                 limits=httpx.Limits(max_connections=n)) as c:
        return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(n)))


def _redis_or_skip(url: str) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")


STORAGES = ["memory://", pytest.param("redis://127.0.0.1:6379", marks=pytest.mark.redis)]


@pytest.mark.parametrize("storage_url", STORAGES)
def test_50_concurrent_requests_cannot_overshoot_tpm(tmp_path: Any, storage_url: str, tiny_engine: Any) -> None:
    if storage_url.startswith("redis"):
        _redis_or_skip(storage_url)
    # each request reserves its prompt + 6 tokens; the limit holds ten reservations
    reservation = tiny_engine.count_prompt_tokens(CHAT["messages"]) + 6
    limit = 10 * reservation
    tier = TierLimits(key_rpm=1000, account_rpm=1000, key_tpm=limit, account_tpm=100_000, max_tokens=64)
    app, store, secret = _setup(tmp_path, tier, storage_url, engine=tiny_engine)
    with live_server(app) as url:
        responses = asyncio.run(_burst(url, secret, 50, {**CHAT, "max_tokens": 6}))
    store.close()
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited) == 50, {r.status_code for r in responses}
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    # without reservation every request would pass (50 x ~reservation tokens); with it the limit holds
    assert used <= limit + reservation, f"{len(ok)} requests used {used} tokens against a limit of {limit}"
    assert len(ok) >= 9 and limited
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in limited)
    assert all(1 <= int(r.headers["Retry-After"]) <= 120 for r in limited), [r.headers.get("Retry-After") for r in limited]


@pytest.mark.parametrize("storage_url", STORAGES)
def test_unused_reservation_is_refunded(tmp_path: Any, storage_url: str) -> None:
    if storage_url.startswith("redis"):
        _redis_or_skip(storage_url)
    # max_tokens=40 reserves 45 but each request uses 11 (FakeEngine): without refunds only 2 would fit in 110
    tier = TierLimits(key_rpm=1000, account_rpm=1000, key_tpm=110, account_tpm=110, max_tokens=64)
    app, store, secret = _setup(tmp_path, tier, storage_url)
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        for _ in range(6):
            client.chat.completions.create(**CHAT, max_tokens=40)
        with pytest.raises(openai.RateLimitError):  # 66 used + 45 reserved > 110
            client.chat.completions.create(**CHAT, max_tokens=40)
        client.chat.completions.create(**CHAT, max_tokens=6)  # 66 + 11 fits
    store.close()


def test_rpm_429_with_retry_after_and_metrics(tmp_path: Any) -> None:
    tier = TierLimits(key_rpm=2, account_rpm=100, key_tpm=10_000, account_tpm=10_000, max_tokens=64)
    app, store, secret = _setup(tmp_path, tier)
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        client.chat.completions.create(**CHAT, max_tokens=2)
        client.chat.completions.create(**CHAT, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(**CHAT, max_tokens=2)
        retry_after = int(exc.value.response.headers["Retry-After"])
        assert 1 <= retry_after <= 120  # sliding window: the current window ends, then decays
        assert "2 requests per minute per key" in exc.value.message
        metrics = httpx.get(url + "/metrics").text
        assert 'distillguard_limit_rejections_total{kind="key_rpm"} 1.0' in metrics
        app.state.writer.flush(10)
    assert [e.status for e in store.iter_events()] == [200, 200, 429]
    store.close()


def test_request_larger_than_the_tpm_limit(tmp_path: Any) -> None:
    tier = TierLimits(key_rpm=100, account_rpm=100, key_tpm=30, account_tpm=1000, max_tokens=64)
    app, store, secret = _setup(tmp_path, tier)
    with live_server(app) as url:
        r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": 60}, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 429 and "Request too large" in r.json()["error"]["message"]
    store.close()


def test_rejection_leaves_nothing_counted() -> None:
    async def go() -> None:
        lim = Limiter("memory://")
        tier = TierLimits(key_rpm=10, account_rpm=10, key_tpm=100, account_tpm=50, max_tokens=64)
        with pytest.raises(Exception) as exc:
            await lim.reserve("k1", "a1", tier, 60)  # account TPM refuses after key RPM/TPM counted
        assert getattr(exc.value, "kind", None) == "account_tpm"
        r = await lim.reserve("k1", "a1", tier, 50)  # the failed attempt left no trace
        await lim.settle(r, 10)
        await lim.reserve("k1", "a1", tier, 40)  # 10 used + 40 fits in 50
        lim.close()

    asyncio.run(go())


def test_seconds_until_fits() -> None:
    # empty previous window, current full: wait until the current window rolls and decays enough
    assert seconds_until_fits(10, 1, 60, 0, 0, 10, 90) == pytest.approx(30 + 6)
    # previous window decaying: 10 * 30/60 + 0 = 5 used of 5; one more needs 6 s of decay
    assert seconds_until_fits(5, 1, 60, 10, 30, 0, 90) == pytest.approx(6)
    assert seconds_until_fits(10, 1, 60, 0, 0, 3, 90) == 0
