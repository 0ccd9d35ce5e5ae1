"""RiskPolicy inside the real gateway app (a tiny in-test engine): verify/block answer 403 with
the policy's message, degrade withholds reasoning, noises logprobs and caps the answer's length,
a spent risk budget answers 429 with Retry-After, and the decision with its reasons reaches the
exchange log."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from distillguard.config import Settings
from distillguard.engines.base import Choice, Engine, GenerationResult, SamplingParams, StreamChunk, TokenLogprob
from distillguard.gateway.app import create_app
from distillguard.policy.config import PolicyConfig, level, risk_at
from distillguard.policy.engine import RiskPolicy
from distillguard.policy.state import Review, RiskBoard
from distillguard.store.sql import SqlStore


REPLY = "<think>secret steps 3+4=7</think>The answer is 7."
PIECES = ["<th", "ink>secret st", "eps 3+4=7</thi", "nk>The answer", " is 7."]


class TinyEngine(Engine):
    model_name = "smollm2"
    supports_logprobs = True
    supports_logits_processors = True

    def __init__(self) -> None:
        self.max_tokens_seen: list[int] = []

    def count_prompt_tokens(self, prompt) -> int:  # noqa: ANN001
        return 5

    async def generate(self, prompt, params: SamplingParams) -> GenerationResult:  # noqa: ANN001
        self.max_tokens_seen.append(params.max_tokens)
        lps = [TokenLogprob("ok", -0.1, [("ok", -0.1), ("no", -2.0), ("maybe", -3.0)][: params.top_logprobs])] if params.logprobs else None
        return GenerationResult([Choice(REPLY, "stop", logprobs=lps) for _ in range(params.n)], 5, params.n)

    async def stream(self, prompt, params: SamplingParams) -> AsyncIterator[StreamChunk]:  # noqa: ANN001
        for j, piece in enumerate(PIECES):
            last = j == len(PIECES) - 1
            yield StreamChunk(0, piece, "stop" if last else None, prompt_tokens=5 if last else None,
                              completion_tokens=len(PIECES) if last else None)


THR = 0.9


@pytest.fixture
def setup(tmp_path: Path):
    settings = Settings()
    settings.store.url = f"sqlite:///{tmp_path / 'gw.db'}"
    settings.store.flush_interval_s = 0.05
    store = SqlStore(settings.store.url)
    board = RiskBoard(THR)
    cfg = PolicyConfig()
    cfg.indicators.file = tmp_path / "ind.json"
    policy = RiskPolicy(board, cfg, threshold=THR)
    engine = TinyEngine()
    app = create_app(settings, engine=engine, store=store, policy=policy)
    secrets = {name: store.create_key(name, "standard")[1]
               for name in ("good", "flagged", "certain", "banned", "watched")}
    with TestClient(app) as client:
        client.engine = engine  # type: ignore[attr-defined]
        client.policy = policy  # type: ignore[attr-defined]
        yield client, store, board, secrets
    store.close()


def chat(client: TestClient, secret: str, **extra):  # noqa: ANN003
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    return client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"})


def test_policy_in_the_gateway(setup) -> None:  # noqa: ANN001
    client, store, board, secrets = setup
    # "flagged" here is a verified customer far over the line: degraded (unverified, it must verify)
    board.set_risk("flagged", risk_at(1.6, THR), evidence=[{"signal": "harvesting", "value": 0.9, "detail": "logprobs"}])
    board.set_review("flagged", Review("verified", by="ops"))
    board.set_risk("certain", risk_at(1.9, THR))
    board.set_review("banned", Review("banned", by="ops"))

    r = chat(client, secrets["good"], logprobs=True, top_logprobs=3, n=2)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    good = r.json()["choices"][0]
    assert good["message"]["content"] == REPLY and good["logprobs"]["content"][0]["logprob"] == -0.1

    cap = PolicyConfig().degrade.max_tokens
    assert cap is not None
    r = chat(client, secrets["flagged"], logprobs=True, top_logprobs=3, n=2, max_tokens=cap + 50)
    assert r.status_code == 200
    assert client.engine.max_tokens_seen[-1] == cap  # the answer's length is capped
    choices = r.json()["choices"]
    assert len(choices) == 1  # n capped
    assert choices[0]["message"]["content"] == "<think>[reasoning withheld]</think>The answer is 7."
    lp = choices[0]["logprobs"]
    if lp is not None:  # noised and capped (a gateway that strips instead returns None)
        item = lp["content"][0]
        assert len(item["top_logprobs"]) == 2 and abs(item["logprob"] + 0.1) <= 0.7 * 2.5 + 1e-9

    with client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {secrets['flagged']}"},
                       json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as resp:
        body = "".join(resp.iter_text())
    import json as _json

    streamed = "".join((_json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content", "")
                       for line in body.splitlines() if line.startswith("data: {"))
    assert streamed == "<think>[reasoning withheld]</think>The answer is 7." and "secret" not in body

    r = chat(client, secrets["certain"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "verification_required"
    assert "verify your organisation" in r.json()["error"]["message"]

    r = chat(client, secrets["banned"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_blocked"

    deadline = time.time() + 5
    while store.count_events() < 5:
        assert time.time() < deadline
        time.sleep(0.05)
    decisions = {ev.account: ev.decision for ev in store.iter_events()}
    assert decisions["good"].action == "allow"
    assert decisions["flagged"].action == "degrade"
    assert f"risk {risk_at(1.6, THR):.2f} ≥ 0.90 (harvesting)" in decisions["flagged"].reasons
    assert decisions["certain"].action == "verify" and decisions["banned"].action == "block"
    assert decisions["flagged"].model_dump()["rule"] == "verified-flagged"  # extra fields ride along in the log
    assert decisions["flagged"].model_dump()["max_tokens"] == cap


def test_spent_risk_budget_answers_429_with_retry_after(setup) -> None:  # noqa: ANN001
    client, store, board, secrets = setup
    # a small budget, so that it (not the scaled per-minute limits) is what refuses here
    cfg = client.policy.compiled.config.model_copy(deep=True)
    cfg.throttle.budget_requests = 10
    client.policy.reload(cfg)
    curve = client.policy.compiled.config.throttle
    board.set_risk("watched", risk_at(0.8, THR))
    budget = curve.budget(level(risk_at(0.8, THR), THR))
    assert budget is not None and 2 <= budget < 60 * curve.scale(0.8)
    statuses = [chat(client, secrets["watched"]).status_code for _ in range(budget + 2)]
    assert statuses[:budget] == [200] * budget and statuses[budget:] == [429, 429]
    r = chat(client, secrets["watched"])
    assert r.status_code == 429 and r.json()["error"]["code"] == "risk_budget_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= curve.budget_window_s
    assert f"at most {budget} requests per hour" in r.json()["error"]["message"]
    deadline = time.time() + 5
    while sum(1 for ev in store.iter_events() if ev.account == "watched") < budget + 3:
        assert time.time() < deadline
        time.sleep(0.05)
    refused = [ev for ev in store.iter_events() if ev.account == "watched" and ev.status == 429]
    assert len(refused) == 3
    d = refused[-1].decision.model_dump()
    assert d["budget"] == budget and d["budget_used"] == budget and d["retry_after_s"] > 0
    assert any("risk budget" in r and "429" in r for r in d["reasons"])
