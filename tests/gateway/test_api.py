"""End to end with the official `openai` client against a live gateway on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from distillguard.gateway.app import create_app

from .conftest import live_server


class Live:
    def __init__(self, url: str, app: Any, store: Any, secret: str, key_id: str) -> None:
        self.url, self.app, self.store, self.secret, self.key_id = url, app, store, secret, key_id

    def client(self, secret: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=secret or self.secret, max_retries=0)

    def events(self) -> list[Any]:
        assert self.app.state.writer.flush(10)
        return list(self.store.iter_events())


@pytest.fixture
def live(settings: Any, store: Any, tiny_engine: Any) -> Iterator[Live]:
    app = create_app(settings, engine=tiny_engine, store=store, key_cache_ttl_s=0.3)
    record, secret = store.create_key("acme", "standard")
    with live_server(app) as url:
        yield Live(url, app, store, secret, record.key_id)


MSGS = [{"role": "user", "content": "Say hello please"}]


def test_chat_non_streaming(live: Live, tiny_engine: Any) -> None:
    r = live.client().chat.completions.create(model="smollm2", messages=MSGS, max_tokens=4, temperature=0.5, seed=3)
    content = r.choices[0].message.content
    assert content is not None and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and 1 <= r.usage.completion_tokens <= 4
    assert r.usage.prompt_tokens == tiny_engine.count_prompt_tokens(MSGS)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-") and r.model == "smollm2" and r.object == "chat.completion"
    ev = live.events()[-1]
    assert ev.account == "acme" and ev.key == live.key_id and ev.status == 200
    assert ev.request == {"model": "smollm2", "messages": MSGS, "max_tokens": 4, "temperature": 0.5, "seed": 3}
    assert ev.response is not None and ev.response.text == content
    assert ev.response.completion_tokens == r.usage.completion_tokens
    assert ev.id == "ev_" + r.id.removeprefix("chatcmpl-")
    assert ev.ip == "127.0.0.1" and ev.user_agent and ev.user_agent.startswith("OpenAI/Python")
    assert ev.decision is not None and ev.decision.action == "allow"
    assert ev.latency_ms is not None and ev.latency_ms > 0
    # same seed, same answer: the gateway passes sampling parameters through unchanged
    again = live.client().chat.completions.create(model="smollm2", messages=MSGS, max_tokens=4, temperature=0.5, seed=3)
    assert again.choices[0].message.content == content


def test_completions_n_and_stop(live: Live) -> None:
    c = live.client()
    r = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=12, n=2, seed=5, temperature=1.0)
    assert len(r.choices) == 2 and [ch.index for ch in r.choices] == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens >= 2
    text = r.choices[0].text
    assert len(text) > 4
    stop = text[len(text) // 2 :][:3]
    cut = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=12, seed=5, temperature=1.0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    assert text.startswith(cut.choices[0].text)
    ev = live.events()[-1]
    assert ev.endpoint == "/v1/completions" and ev.request["prompt"] == "Once upon a time"


def test_max_completion_tokens_is_honoured(live: Live) -> None:
    r = live.client().chat.completions.create(model="smollm2", messages=MSGS, max_completion_tokens=2)
    assert r.usage is not None and r.usage.completion_tokens <= 2


@pytest.mark.parametrize("chat", [True, False])
def test_streaming_matches_non_streaming(live: Live, chat: bool) -> None:
    c = live.client()
    kw: dict[str, Any] = {"model": "smollm2", "max_tokens": 10, "seed": 11, "temperature": 1.0}
    if chat:
        whole = c.chat.completions.create(messages=MSGS, **kw)
        expected, expected_finish = whole.choices[0].message.content, whole.choices[0].finish_reason
        stream = c.chat.completions.create(messages=MSGS, stream=True, stream_options={"include_usage": True}, **kw)
    else:
        whole = c.completions.create(prompt="Once upon a time", **kw)
        expected, expected_finish = whole.choices[0].text, whole.choices[0].finish_reason
        stream = c.completions.create(prompt="Once upon a time", stream=True, stream_options={"include_usage": True}, **kw)
    text, finish, usage, n_chunks = "", None, None, 0
    for chunk in stream:
        n_chunks += 1
        usage = chunk.usage or usage
        for ch in chunk.choices:
            text += (ch.delta.content or "") if chat else ch.text
            finish = ch.finish_reason or finish
    assert text == expected and finish == expected_finish and n_chunks > 2
    assert usage is not None and whole.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    ev = live.events()[-1]
    assert ev.status == 200 and ev.response is not None and ev.response.text == text
    assert ev.response.finish_reason == finish


def test_streaming_without_usage(live: Live) -> None:
    chunks = list(live.client().completions.create(model="smollm2", prompt="x", max_tokens=3, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_logprobs_shapes(live: Live) -> None:
    r = live.client().chat.completions.create(model="smollm2", messages=MSGS, max_tokens=3, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert r.usage is not None and lp is not None and lp.content is not None
    assert len(lp.content) == r.usage.completion_tokens
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp.content)
    c = live.client().completions.create(model="smollm2", prompt="x", max_tokens=3, logprobs=2)
    clp = c.choices[0].logprobs
    assert clp is not None and clp.tokens is not None and clp.text_offset is not None
    assert "".join(clp.tokens) == c.choices[0].text and clp.text_offset[0] == 0
    assert clp.top_logprobs is not None and all(len(t) <= 2 for t in clp.top_logprobs)


def test_models(live: Live) -> None:
    models = live.client().models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    assert live.client().models.retrieve("smollm2").id == "smollm2"
    with pytest.raises(openai.NotFoundError):
        live.client().models.retrieve("gpt-4")


# ---- errors ------------------------------------------------------------------------------------


def _post(live: Live, body: Any = None, *, content: Any = None, secret: str | None = "default", headers: dict | None = None,
          path: str = "/v1/chat/completions") -> httpx.Response:
    h = dict(headers or {})
    if secret is not None:
        h["Authorization"] = f"Bearer {live.secret if secret == 'default' else secret}"
    return httpx.post(live.url + path, json=body, content=content, headers=h, timeout=30)


def _err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_401_missing_invalid_and_revoked(live: Live) -> None:
    r = _post(live, CHAT, secret=None)
    assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key" and "Missing API key" in _err(r)["message"]
    with pytest.raises(openai.AuthenticationError) as exc:
        live.client("dg-key_000000000000-" + "x" * 32).chat.completions.create(**CHAT)
    assert exc.value.code == "invalid_api_key"
    # revoked through the store (as `distillguard keys revoke` does): effective once the cache refreshes
    record, secret = live.store.create_key("acme", "standard")
    assert live.client(secret).chat.completions.create(**CHAT).choices
    live.store.revoke_key(record.key_id)
    deadline = time.time() + 5
    while True:
        try:
            live.client(secret).chat.completions.create(**CHAT)
        except openai.AuthenticationError as e:
            assert "revoked" in e.message
            break
        assert time.time() < deadline, "a key revoked in the store still works after 5 s"
        time.sleep(0.1)
    assert all(ev.status != 401 for ev in live.events())  # unauthenticated requests are not events


def test_404_unknown_model(live: Live) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        live.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
    assert live.events()[-1].status == 404


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 100_000}, "max_tokens"),  # above the standard tier's cap (2048)
        ({"n": 50}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs=true
        ({"model": None}, "model"),
    ],
)
def test_400_invalid_parameters(live: Live, patch: dict, param: str) -> None:
    r = _post(live, {**CHAT, **patch})
    assert r.status_code == 400, r.text
    err = _err(r)
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_400_via_openai_client(live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        live.client().chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=-5)
    assert exc.value.param == "max_tokens"


def test_400_malformed_json_and_missing_field(live: Live) -> None:
    r = _post(live, content=b'{"model": "smollm2", "messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and _err(r)["code"] == "invalid_json"
    r = _post(live, content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = _post(live, {"model": "smollm2"})
    assert r.status_code == 400 and _err(r)["param"] == "messages" and "missing" in _err(r)["message"]
    r = _post(live, {"model": "smollm2", "prompt": ["a", "b"]}, path="/v1/completions")
    assert r.status_code == 400 and _err(r)["param"] == "prompt"
    ev = live.events()[-4]
    assert ev.status == 400 and "_unparsed" in ev.request  # logged, with the raw body


def test_413_by_content_length_and_by_streamed_bytes(live: Live) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = _post(live, big)
    assert r.status_code == 413 and _err(r)["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: only counting the bytes can catch it
        yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}]}'

    r = _post(live, content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and _err(r)["code"] == "request_too_large"
    # the server is fine afterwards
    assert _post(live, CHAT).status_code == 200


def test_unknown_route_and_method_are_openai_errors(live: Live) -> None:
    r = httpx.get(live.url + "/v1/nothing")
    assert r.status_code == 404 and _err(r)
    r = httpx.get(live.url + "/v1/chat/completions")
    assert r.status_code == 405 and _err(r)


def test_500_is_openai_shaped_and_logged(live: Live) -> None:
    class Broken:
        def decide(self, ctx: Any) -> Any:
            raise ZeroDivisionError("policy bug")

    live.app.state.policy = Broken()
    r = _post(live, CHAT)
    assert r.status_code == 500 and _err(r)["type"] == "server_error"
    assert live.events()[-1].status == 500
    live.app.state.policy = None  # type: ignore[assignment]


def test_metrics(live: Live) -> None:
    live.client().chat.completions.create(**{**CHAT, "max_tokens": 2})
    _post(live, CHAT, secret=None)
    text = httpx.get(live.url + "/metrics").text
    assert 'distillguard_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'distillguard_requests_total{route="/v1/chat/completions",status="401"} 1.0' in text
    assert 'distillguard_tokens_total{kind="completion"} ' in text
    assert "distillguard_request_latency_seconds_bucket" in text
    assert "distillguard_engine_latency_seconds_bucket" in text
    assert "distillguard_events_queued_total 1.0" in text
