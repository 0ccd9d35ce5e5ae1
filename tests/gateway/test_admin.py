"""The admin API: its own token, key lifecycle, accounts and events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import time

import httpx
import openai
import orjson
import pytest

from distillguard.gateway.app import create_app

from .conftest import ADMIN_TOKEN, live_server
from .fakes import FakeEngine

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def url(settings: Any, store: Any, tiny_engine: Any) -> Iterator[str]:
    with live_server(create_app(settings, engine=tiny_engine, store=store)) as u:
        yield u


def test_key_lifecycle_through_the_admin_api(url: str) -> None:
    r = httpx.post(url + "/admin/keys", json={"account": "acme", "tier": "trial"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    created = r.json()
    secret, key_id = created["secret"], created["key_id"]
    assert created["account"] == "acme" and created["tier"] == "trial"

    client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content is not None

    accounts = httpx.get(url + "/admin/accounts", headers=ADMIN).json()["data"]
    assert [a["name"] for a in accounts] == ["acme"]
    acc = httpx.get(url + "/admin/accounts/acme", headers=ADMIN).json()
    assert acc["tier"] == "trial" and [k["key_id"] for k in acc["keys"]] == [key_id]
    assert "secret" not in acc["keys"][0]
    assert httpx.get(url + "/admin/accounts/nobody", headers=ADMIN).status_code == 404

    r = httpx.post(url + f"/admin/keys/{key_id}/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError) as exc:  # at once: the admin API clears the cache
        client.chat.completions.create(**CHAT)
    assert "revoked" in exc.value.message
    assert httpx.post(url + "/admin/keys/key_nothere/revoke", headers=ADMIN).status_code == 404


def test_events_listing(url: str, settings: Any) -> None:
    secret = httpx.post(url + "/admin/keys", json={"account": "acme", "tier": "standard"}, headers=ADMIN).json()["secret"]
    secret2 = httpx.post(url + "/admin/keys", json={"account": "other", "tier": "standard"}, headers=ADMIN).json()["secret"]
    for s in (secret, secret, secret2):
        openai.OpenAI(base_url=url + "/v1", api_key=s, max_retries=0).chat.completions.create(**CHAT)
    deadline = time.time() + 5
    while len(httpx.get(url + "/admin/events", headers=ADMIN).json()["data"]) < 3:
        assert time.time() < deadline
        time.sleep(0.05)
    data = httpx.get(url + "/admin/events", params={"account": "acme"}, headers=ADMIN).json()["data"]
    assert len(data) == 2 and all(e["account"] == "acme" for e in data)
    first_ts = data[0]["ts"]
    r = httpx.get(url + "/admin/events", params={"since": first_ts + 1e-6, "limit": 1, "format": "jsonl"}, headers=ADMIN)
    lines = r.text.splitlines()
    assert r.headers["content-type"].startswith("application/x-ndjson") and len(lines) == 1
    assert orjson.loads(lines[0])["ts"] > first_ts


def test_admin_rejects_customer_keys_and_bad_input(url: str) -> None:
    secret = httpx.post(url + "/admin/keys", json={"account": "acme", "tier": "standard"}, headers=ADMIN).json()["secret"]
    for headers in ({}, {"Authorization": f"Bearer {secret}"}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(url + "/admin/accounts", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
    r = httpx.post(url + "/admin/keys", json={"account": "acme", "tier": "platinum"}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tier"
    r = httpx.post(url + "/admin/keys", json={"tier": "trial"}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "account"
    r = httpx.get(url + "/admin/events", params={"limit": 0}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_admin_without_a_token_configured_is_503(settings: Any, store: Any) -> None:
    settings.server.admin_token = None
    with live_server(create_app(settings, engine=FakeEngine(), store=store)) as u:
        r = httpx.get(u + "/admin/accounts", headers=ADMIN)
    assert r.status_code == 503 and "DISTILLGUARD_SERVER__ADMIN_TOKEN" in r.json()["error"]["message"]
