"""Fixtures for store tests. Postgres and Redis tests use the real servers on 127.0.0.1; each test
gets its own Postgres schema / Redis stream and removes it afterwards, so parallel runs do not
clash. If a server is unreachable those tests are skipped, or fail when
DISTILLGUARD_REQUIRE_SERVICES=1 (set it where the servers are part of the environment)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from distillguard.events import ExchangeEvent
from distillguard.store.sql import SqlStore

PG_URL = os.environ.get("DISTILLGUARD_TEST_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DISTILLGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} not reachable: {exc}"
    if os.environ.get("DISTILLGUARD_REQUIRE_SERVICES") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'dg.db'}"


@pytest.fixture
def sqlite_store(sqlite_url) -> Iterator[SqlStore]:
    store = SqlStore(sqlite_url)
    yield store
    store.close()


@pytest.fixture
def pg_store() -> Iterator[SqlStore]:
    import sqlalchemy as sa

    schema = f"dg_test_{uuid.uuid4().hex[:12]}"
    try:
        store = SqlStore(PG_URL, schema=schema)
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", exc)
    try:
        yield store
    finally:
        store.close()
        eng = sa.create_engine(PG_URL)
        with eng.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request) -> SqlStore:
    return request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "pg_store")


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_stream() -> Iterator[str]:
    import redis

    stream = f"dg_test:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    try:
        yield stream
    finally:
        client.delete(stream)
        client.close()


def _make_event(i: int, account: str = "acme", ts: float | None = None, **extra):
    """A realistic chat event; ``ts`` defaults to a fixed base + i so order is known."""

    body = {
        "ts": 1_763_712_000.0 + i if ts is None else ts,
        "account": account,
        "key": "key_0123456789ab",
        "ip": "198.51.100.7",
        "user_agent": "OpenAI/Python 1.54.0",
        "endpoint": "/v1/chat/completions",
        "request": {"model": "smollm2", "messages": [{"role": "user", "content": f"question {i} ünïcødé"}], "max_tokens": 64},
        "response": {"text": f"answer {i}", "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 7},
        "status": 200,
        "latency_ms": 12.5,
        "decision": {"action": "allow", "reasons": []},
    }
    body.update(extra)
    return ExchangeEvent.model_validate(body)


@pytest.fixture
def make_event():
    return _make_event
