"""The policy hook: actions, limit scaling, logprob stripping, logits processors reaching the engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from distillguard.config import TierLimits
from distillguard.gateway.app import create_app
from distillguard.gateway.policy import Decision, PolicyContext

from .conftest import live_server

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


class Scripted:
    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.seen: list[PolicyContext] = []

    async def decide(self, ctx: PolicyContext) -> Decision:  # async policies are supported too
        self.seen.append(ctx)
        return self.decision


@pytest.fixture
def env(settings: Any, store: Any, tiny_engine: Any) -> Iterator[tuple[str, Any, Any, str, Any]]:
    settings.limits.tiers["tiny"] = TierLimits(key_rpm=4, account_rpm=100, key_tpm=10_000, account_tpm=10_000, max_tokens=64)
    engine = tiny_engine
    app = create_app(settings, engine=engine, store=store)
    _, secret = store.create_key("acme", "tiny")
    with live_server(app) as url:
        yield url, app, store, secret, engine


def _post(url: str, secret: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}", "User-Agent": "t/1"})


def test_block_and_verify_are_403_and_logged(env: Any) -> None:
    url, app, store, secret, _ = env
    app.state.policy = Scripted(Decision("block", ["campaign c1"]))
    r = _post(url, secret, CHAT)
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_blocked"
    app.state.policy = Scripted(Decision("verify", ["unverified high volume"]))
    r = _post(url, secret, CHAT)
    assert r.status_code == 403 and "verif" in r.json()["error"]["message"]
    app.state.writer.flush(5)
    evs = list(store.iter_events())
    assert [(e.status, e.decision.action, e.decision.reasons) for e in evs] == [
        (403, "block", ["campaign c1"]),
        (403, "verify", ["unverified high volume"]),
    ]


def test_context_carries_who_and_what(env: Any) -> None:
    url, app, _, secret, _ = env
    policy = Scripted(Decision())
    app.state.policy = policy
    assert _post(url, secret, CHAT).status_code == 200
    ctx = policy.seen[0]
    assert ctx.account.name == "acme" and ctx.tier == "tiny" and ctx.request == CHAT
    assert ctx.prompt_tokens == ctx.engine.count_prompt_tokens(CHAT["messages"])
    assert ctx.user_agent == "t/1" and ctx.endpoint == "/v1/chat/completions"


def test_throttle_scales_limits(env: Any) -> None:
    url, app, _, secret, _ = env
    app.state.policy = Scripted(Decision("throttle", ["risk 0.8"], limit_scale=0.5))  # 4 rpm -> 2
    codes = [_post(url, secret, CHAT).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_degrade_strips_logprobs(env: Any) -> None:
    url, app, _, secret, _ = env
    body = {**CHAT, "logprobs": True, "top_logprobs": 2}
    assert _post(url, secret, body).json()["choices"][0]["logprobs"] is not None
    app.state.policy = Scripted(Decision("degrade", ["logprob harvesting"]))
    assert _post(url, secret, body).json()["choices"][0]["logprobs"] is None
    app.state.policy = Scripted(Decision("allow", [], strip_logprobs=True))
    assert _post(url, secret, body).json()["choices"][0]["logprobs"] is None


def test_logits_processors_reach_the_engine(env: Any) -> None:
    url, app, _, secret, engine = env
    forced = engine.tokenizer.convert_tokens_to_ids("Paris")
    seen: list[int] = []

    def only_paris(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        seen.append(len(ids))
        out = np.full_like(logits, -np.inf)
        out[forced] = 0.0
        return out

    app.state.policy = Scripted(Decision("allow", ["watermark"], logits_processors=[only_paris]))
    r = _post(url, secret, {**CHAT, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ParisParisParis"
    assert len(seen) == 3  # called once per generated token, with the growing sequence
    app.state.policy = Scripted(Decision())
    assert _post(url, secret, {**CHAT, "max_tokens": 3}).json()["choices"][0]["message"]["content"] != "ParisParisParis"


def test_decision_validates_action() -> None:
    with pytest.raises(ValueError):
        Decision("explode")
