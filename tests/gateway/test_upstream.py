"""Upstream failures (502/504) with the openai engine, the stub upstream path, and disconnects."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from distillguard.engines.openai_upstream import OpenAIUpstreamEngine
from distillguard.gateway.app import create_app
from distillguard.gateway.stub import REPLY, make_stub_app

from .conftest import free_port, live_server
from .fakes import FakeEngine

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def _engine(upstream: str, timeout_s: float = 5.0) -> OpenAIUpstreamEngine:
    return OpenAIUpstreamEngine(upstream + "/v1", model="stub", model_name="smollm2", timeout_s=timeout_s, context_length=2048)


def _client(url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)


def test_through_an_openai_compatible_upstream(settings: Any, store: Any) -> None:
    _, secret = store.create_key("acme", "standard")
    with live_server(make_stub_app()) as stub, live_server(create_app(settings, engine=_engine(stub), store=store)) as url:
        r = _client(url, secret).chat.completions.create(**CHAT)
        assert r.choices[0].message.content == REPLY and r.usage is not None
        chunks = list(_client(url, secret).completions.create(model="smollm2", prompt="x", max_tokens=50, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY


@pytest.mark.parametrize("stream", [False, True])
def test_502_when_the_upstream_is_down(settings: Any, store: Any, stream: bool) -> None:
    _, secret = store.create_key("acme", "standard")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = create_app(settings, engine=_engine(closed), store=store)
    with live_server(app) as url:
        with pytest.raises(openai.APIStatusError) as exc:
            _client(url, secret).chat.completions.create(**CHAT, stream=stream)
        assert exc.value.status_code == 502 and exc.value.code == "upstream_error"
        # the reservation was given back: the failed call cost no tokens
        assert app.state.writer.flush(5)
    ev = list(store.iter_events())[-1]
    assert ev.status == 502 and ev.response is not None and "unreachable" in ev.response.model_dump()["error"]


def test_504_when_the_upstream_is_too_slow(settings: Any, store: Any) -> None:
    _, secret = store.create_key("acme", "standard")
    with live_server(make_stub_app(delay_s=3.0)) as stub:
        with live_server(create_app(settings, engine=_engine(stub, timeout_s=0.3), store=store)) as url:
            t = time.perf_counter()
            with pytest.raises(openai.APIStatusError) as exc:
                _client(url, secret).chat.completions.create(**CHAT)
            assert exc.value.status_code == 504 and exc.value.code == "upstream_timeout"
            assert time.perf_counter() - t < 2.5


def test_logprobs_refused_when_the_engine_cannot(settings: Any, store: Any) -> None:
    _, secret = store.create_key("acme", "standard")
    engine = FakeEngine()
    engine.supports_logprobs = False
    with live_server(create_app(settings, engine=engine, store=store)) as url:
        with pytest.raises(openai.BadRequestError) as exc:
            _client(url, secret).chat.completions.create(**CHAT, logprobs=True)
    assert exc.value.param == "logprobs" and "cannot return logprobs" in exc.value.message


def test_stream_cut_by_the_client_is_logged(settings: Any, store: Any) -> None:
    _, secret = store.create_key("acme", "standard")
    app = create_app(settings, engine=FakeEngine(delay_s=0.3), store=store)
    with live_server(app) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={**CHAT, "stream": True},
                          headers={"Authorization": f"Bearer {secret}"}, timeout=10) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content":"Hello"' in line:
                    break  # leave after the first word
        deadline = time.time() + 5
        while True:
            app.state.writer.flush(1)
            evs = list(store.iter_events())
            if evs:
                break
            assert time.time() < deadline, "no event for a stream the client cut"
            time.sleep(0.1)
    ev = evs[0]
    assert ev.status == 499 and ev.response is not None and ev.response.text.startswith("Hello")
    assert ev.response.finish_reason == "disconnected"


def test_503_when_the_key_store_is_down(settings: Any, store: Any) -> None:
    from distillguard.store.base import StoreUnavailable

    _, secret = store.create_key("acme", "standard")
    app = create_app(settings, engine=FakeEngine(), store=store)
    with live_server(app) as url:
        def down(secret: str) -> Any:
            raise StoreUnavailable("database is locked")

        store.authenticate = down  # type: ignore[method-assign]
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        assert httpx.get(url + "/health").status_code == 200  # still serving
