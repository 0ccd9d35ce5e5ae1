"""The shield inside the live gateway: watermark on served text, the detection process fed from the
bus, the risk policy acting (block, degrade) and the admin routes that expose them."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from distillguard.gateway.app import create_app
from distillguard.gateway.shield import Shield
from distillguard.store import build_bus

from .conftest import ADMIN_TOKEN, live_server

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def shielded(settings: Any, store: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_KEY", "shield-test-key-0123456789abcdef")
    settings.watermark.enabled = True
    settings.detect.embeddings = False  # MiniLM is exercised by the detection tests
    bus = build_bus("memory")
    shield = Shield.build(settings, store, bus)
    app = create_app(settings, engine=tiny_engine, store=store, bus=bus, shield=shield)
    with live_server(app) as url:
        yield url, store, shield


def _client(url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)


def test_served_text_carries_the_watermark(shielded: Any) -> None:
    url, store, _ = shielded
    _, secret = store.create_key("wm-acct", "standard")
    r = _client(url, secret).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=80, temperature=1.0, seed=3
    )
    text = r.choices[0].message.content
    found = httpx.post(f"{url}/admin/watermark/detect", json={"text": text}, headers=ADMIN).json()
    assert found["tokens_scored"] >= 40
    assert found["p_value"] < 1e-4, found
    # the same endpoint on text the gateway never produced is not significant
    other = "A plain sentence written by a person, about rivers, hills, bread and the weather in spring."
    assert httpx.post(f"{url}/admin/watermark/detect", json={"text": other}, headers=ADMIN).json()["p_value"] > 1e-3
    assert httpx.post(f"{url}/admin/watermark/detect", json={"txt": 1}, headers=ADMIN).status_code == 400


def test_admin_replay_detection(shielded: Any, tiny_engine: Any) -> None:
    """/admin/watermark/detect with "replay": the served model redoes the keyed choices from the
    prompt and temperature in the exchange log; bad bodies get OpenAI-style 400s."""
    url, store, shield = shielded
    shield.watermark.config.replay_model = str(tiny_engine.model_path)  # the model this gateway serves
    _, secret = store.create_key("replay-acct", "standard")
    msgs = [{"role": "user", "content": "Name three rivers."}]
    r = _client(url, secret).chat.completions.create(model="smollm2", messages=msgs, max_tokens=24, temperature=0.9)
    text = r.choices[0].message.content
    body = {"text": text, "replay": True, "messages": msgs, "temperature": 0.9}
    found = httpx.post(f"{url}/admin/watermark/detect", json=body, headers=ADMIN).json()
    assert found["detector"] == "replay" and found["verdict"] == "watermarked", found
    # random weights: each choice is spread over ~49k tokens, so a handful of matches is overwhelming
    assert found["p_value"] < 1e-20 and found["match_rate"] > 0.8, found
    classic = httpx.post(f"{url}/admin/watermark/detect", json={"text": text}, headers=ADMIN).json()
    assert found["p_value"] < classic["p_value"]
    other = "A plain sentence written by a person, about rivers, hills, bread and the weather in spring."
    assert httpx.post(f"{url}/admin/watermark/detect", json={**body, "text": other}, headers=ADMIN).json()["p_value"] > 1e-3
    bad = httpx.post(f"{url}/admin/watermark/detect", json={"text": text, "replay": True}, headers=ADMIN)
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]
    bad = httpx.post(f"{url}/admin/watermark/detect", json={**body, "messages": [1]}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    assert httpx.post(f"{url}/admin/watermark/detect", json={**body, "fpr": 2}, headers=ADMIN).status_code == 400


def test_detection_worker_sees_traffic_and_admin_shows_it(shielded: Any) -> None:
    url, store, _ = shielded
    _, secret = store.create_key("busy", "standard")
    c = _client(url, secret)
    for i in range(3):
        c.completions.create(model="smollm2", prompt=f"Question {i}: think step by step.", max_tokens=4)
    deadline = time.time() + 90  # the detection process starts (imports torch) alongside the server
    verdict: dict[str, Any] = {}
    while time.time() < deadline:
        verdict = httpx.get(f"{url}/admin/detect/accounts/busy", headers=ADMIN).json()
        if verdict.get("requests") == 3:
            break
        time.sleep(0.2)
    assert verdict["requests"] == 3 and 0.0 <= verdict["score"] <= 1.0
    # the worker also pushed the risk into the account's flags (what `accounts show` prints)
    deadline = time.time() + 10
    while "risk" not in (store.get_account("busy").flags) and time.time() < deadline:
        time.sleep(0.2)
    assert "risk" in store.get_account("busy").flags


def test_banned_account_is_blocked_and_explained(shielded: Any) -> None:
    url, store, _ = shielded
    _, secret = store.create_key("rogue", "standard")
    c = _client(url, secret)
    c.completions.create(model="smollm2", prompt="hello", max_tokens=2)
    r = httpx.post(f"{url}/admin/policy/accounts/rogue/ban", headers=ADMIN)
    assert r.status_code == 200, r.text
    with pytest.raises(openai.PermissionDeniedError):
        c.completions.create(model="smollm2", prompt="hello again", max_tokens=2)
    explained = httpx.get(f"{url}/admin/policy/accounts/rogue/explain", headers=ADMIN).json()
    assert "block" in str(explained)


def test_high_risk_account_is_degraded(shielded: Any) -> None:
    url, store, shield = shielded
    _, secret = store.create_key("risky", "standard")
    board = shield.policy.board
    # what the detection worker does when an account's risk climbs past the degrade level
    # level 1.6 at the default threshold 0.9, on a verified account: degrade (unverified: verify)
    board.set_risk("risky", 0.96, evidence=[{"signal": "template_reuse", "value": 1.0, "detail": "test"}], flagged=True)
    from distillguard.policy.review import apply_review

    apply_review(store, "risky", "verify", by="test", board=board)  # in the store too: refreshes keep it
    r = _client(url, secret).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4, logprobs=True, top_logprobs=5
    )
    # a degraded account gets at most policy.degrade.max_top_logprobs alternatives per token
    cap = shield.policy.config.degrade.max_top_logprobs if hasattr(shield.policy, "config") else 2
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content and all(len(t.top_logprobs) <= cap < 5 for t in lp.content)
    explained = httpx.get(f"{url}/admin/policy/accounts/risky/explain", headers=ADMIN).json()
    assert "degrade" in str(explained)
