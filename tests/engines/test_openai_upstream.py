"""OpenAIUpstreamEngine: request/response mapping (httpx.MockTransport) and, for the product's
aiohttp path, a real loopback server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from distillguard.engines.base import (
    EngineError,
    SamplingParams,
    UpstreamError,
    UpstreamTimeout,
)
from distillguard.engines.openai_upstream import OpenAIUpstreamEngine, estimate_tokens

from .conftest import collect, run

MSGS = [{"role": "user", "content": "Say hi"}]


def mock_engine(handler: Any, **kw: Any) -> OpenAIUpstreamEngine:
    return OpenAIUpstreamEngine(
        "http://upstream.test/v1", api_key="sk-up", model="up-model", transport=httpx.MockTransport(handler), **kw
    )


def sse(*events: Any) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


# ---- mapping ----------------------------------------------------------------------------------


def test_chat_request_and_response_mapping() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["auth"], seen["body"] = str(request.url), request.headers["authorization"], json.loads(request.content)
        return httpx.Response(200, json={
            "choices": [
                {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "length", "logprobs": None},
                {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop",
                 "logprobs": {"content": [{"token": "A", "logprob": -0.5, "top_logprobs": [{"token": "A", "logprob": -0.5}, {"token": "Z", "logprob": -1.5}]}]}},
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
        })

    e = mock_engine(handler, model_name="public-name")
    r = run(e.generate(MSGS, SamplingParams(max_tokens=5, temperature=0.3, top_p=0.9, stop=["\n"], seed=4, n=2, logprobs=True, top_logprobs=2)))
    assert seen["url"] == "http://upstream.test/v1/chat/completions" and seen["auth"] == "Bearer sk-up"
    assert seen["body"] == {
        "model": "up-model", "messages": MSGS, "max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "n": 2,
        "stop": ["\n"], "seed": 4, "logprobs": True, "top_logprobs": 2,
    }
    assert [c.text for c in r.choices] == ["A", "B"] and [c.finish_reason for c in r.choices] == ["stop", "length"]
    assert r.choices[0].logprobs[0].token == "A" and r.choices[0].logprobs[0].top == [("A", -0.5), ("Z", -1.5)]
    assert (r.prompt_tokens, r.completion_tokens) == (11, 2)
    assert e.model_name == "public-name"


def test_completion_mapping_with_legacy_logprobs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/v1/completions" and body["prompt"] == "Once" and body["logprobs"] == 1
        return httpx.Response(200, json={
            "choices": [{"index": 0, "text": " upon", "finish_reason": "length",
                         "logprobs": {"tokens": [" up", "on"], "token_logprobs": [-0.1, -0.2],
                                      "top_logprobs": [{" up": -0.1}, {"on": -0.2}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2},
        })

    r = run(mock_engine(handler).generate("Once", SamplingParams(max_tokens=2, logprobs=True, top_logprobs=1)))
    (c,) = r.choices
    assert c.text == " upon" and [(lp.token, lp.logprob) for lp in c.logprobs] == [(" up", -0.1), ("on", -0.2)]
    assert c.logprobs[1].top == [("on", -0.2)]


def test_missing_usage_falls_back_to_the_estimate() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "abcdefgh", "finish_reason": "stop"}]})

    r = run(mock_engine(handler).generate("12345", SamplingParams()))
    assert (r.prompt_tokens, r.completion_tokens) == (2, 2)


def test_stream_parses_sse_and_puts_usage_on_the_last_chunk() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
            {"choices": [{"index": 1, "delta": {"content": "Bye"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
        ))

    chunks = run(collect(mock_engine(handler).stream(MSGS, SamplingParams(n=2))))
    assert [(c.index, c.text, c.finish_reason) for c in chunks] == [
        (0, "Hel", None), (1, "Bye", None), (0, "lo", None), (0, "", "stop"), (1, "", "length"),
    ]
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (9, 4)
    assert all(c.prompt_tokens is None for c in chunks[:-1])


def test_logits_processors_are_refused_not_ignored() -> None:
    called: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        called.append(1)
        return httpx.Response(200, json={"choices": []})

    e = mock_engine(handler)
    assert e.supports_logits_processors is False
    params = SamplingParams(logits_processors=[lambda ids, s: np.asarray(s)])
    with pytest.raises(EngineError, match="logits processors"):
        run(e.generate(MSGS, params))
    with pytest.raises(EngineError, match="logits processors"):
        run(collect(e.stream(MSGS, params)))
    assert not called


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, kind", [(500, UpstreamError), (503, UpstreamError), (401, UpstreamError), (400, EngineError)])
def test_upstream_error_statuses(status: int, kind: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "upstream says no"}})

    e = mock_engine(handler)
    for call in (lambda: e.generate(MSGS, SamplingParams()), lambda: collect(e.stream(MSGS, SamplingParams()))):
        with pytest.raises(kind, match="upstream says no") as exc:
            run(call())
        assert type(exc.value) is kind
        if kind is UpstreamError:
            assert exc.value.status == status


@pytest.mark.parametrize("error, kind", [(httpx.ReadTimeout("slow"), UpstreamTimeout), (httpx.ConnectError("refused"), UpstreamError)])
def test_transport_failures(error: Exception, kind: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    e = mock_engine(handler)
    with pytest.raises(kind):
        run(e.generate(MSGS, SamplingParams()))
    with pytest.raises(kind):
        run(collect(e.stream(MSGS, SamplingParams())))


def test_malformed_upstream_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>proxy error</html>")

    with pytest.raises(UpstreamError, match="malformed"):
        run(mock_engine(handler).generate(MSGS, SamplingParams()))


def test_token_estimate() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    # 3 for the reply header, 4 per message, ceil(chars/4) over role + content
    assert estimate_tokens([{"role": "user", "content": "Say hi"}]) == 3 + 4 + 3
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]
    assert estimate_tokens(parts) == estimate_tokens(MSGS)


def test_bad_configuration() -> None:
    with pytest.raises(EngineError, match="http"):
        OpenAIUpstreamEngine("localhost:8080", model="m")
    with pytest.raises(EngineError, match="upstream_model"):
        OpenAIUpstreamEngine("http://127.0.0.1:1/v1", model=None)


# ---- a real server on loopback ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_app() -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if body["messages"][-1]["content"] == "sleep":
            await asyncio.sleep(3)
        words = ["Hello", " from", " upstream"][: body["max_tokens"]]
        finish = "length" if body["max_tokens"] < 3 else "stop"
        if not body.get("stream"):
            return JSONResponse({
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(words)},
            })

        async def events() -> Any:
            for w in words:
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': w}, 'finish_reason': None}]})}\n\n"
                await asyncio.sleep(0.05)
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': finish}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 7, 'completion_tokens': len(words)}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        # the prompt picks the behaviour: "status N" answers N; "chunked" sends JSON without a
        # Content-Length; "crlf" streams SSE with CRLF line ends split mid-line; "stall" stops
        # sending mid-stream
        prompt = body["prompt"]
        if prompt.startswith("status "):
            return JSONResponse({"error": {"message": f"upstream says {prompt}"}}, status_code=int(prompt[7:]))
        reply = {"choices": [{"index": 0, "text": "chunky", "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
        if prompt == "chunked" and not body.get("stream"):
            data = json.dumps(reply).encode()

            async def pieces() -> Any:
                for i in range(0, len(data), 7):
                    yield data[i:i + 7]

            return StreamingResponse(pieces(), media_type="application/json")
        if prompt == "crlf":
            raw = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in (
                {"choices": [{"index": 0, "text": "é", "finish_reason": None}]},
                {"choices": [{"index": 0, "text": "!", "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
            )).encode() + b"data: [DONE]\r\n\r\n"

            async def split() -> Any:
                for i in range(0, len(raw), 5):  # cuts lines, CRLFs and the 2-byte "é"
                    yield raw[i:i + 5]

            return StreamingResponse(split(), media_type="text/event-stream")
        if prompt == "stall":

            async def stall() -> Any:
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': 'a', 'finish_reason': None}]})}\n\n"
                await asyncio.sleep(3)
                yield "data: [DONE]\n\n"

            return StreamingResponse(stall(), media_type="text/event-stream")
        return JSONResponse({"error": {"message": "model overloaded"}}, status_code=503)

    return app


@contextmanager
def loopback_server() -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(upstream_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "loopback upstream did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


def test_real_loopback_upstream() -> None:
    with loopback_server() as url:

        async def scenario() -> None:
            e = OpenAIUpstreamEngine(url, model="m", timeout_s=0.5)
            try:
                r = await e.generate(MSGS, SamplingParams(max_tokens=3))
                assert r.choices[0].text == "Hello from upstream" and r.choices[0].finish_reason == "stop"
                assert (r.prompt_tokens, r.completion_tokens) == (7, 3)
                chunks = await collect(e.stream(MSGS, SamplingParams(max_tokens=2)))
                assert [c.text for c in chunks] == ["Hello", " from", ""] and chunks[-1].finish_reason == "length"
                assert chunks[-1].completion_tokens == 2
                with pytest.raises(UpstreamError) as exc:
                    await e.generate("x", SamplingParams())
                assert exc.value.status == 503 and "overloaded" in str(exc.value)
                t = time.perf_counter()
                with pytest.raises(UpstreamTimeout):
                    await e.generate([{"role": "user", "content": "sleep"}], SamplingParams())
                assert time.perf_counter() - t < 2.5
            finally:
                await e.aclose()

        run(scenario())


def test_connection_refused_is_upstream_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    e = OpenAIUpstreamEngine(url, model="m", timeout_s=5)
    with pytest.raises(UpstreamError, match="unreachable") as exc:
        run(e.generate(MSGS, SamplingParams()))
    assert not isinstance(exc.value, UpstreamTimeout) and exc.value.status is None
    with pytest.raises(UpstreamError, match="unreachable"):
        run(collect(e.stream(MSGS, SamplingParams())))
    run(e.aclose())


def test_real_loopback_statuses_bodies_and_stalls() -> None:
    """The product HTTP path (no injected transport): status mapping, chunked bodies, SSE framing."""
    with loopback_server() as url:

        async def scenario() -> None:
            e = OpenAIUpstreamEngine(url, model="m", timeout_s=0.5)
            try:
                for status, kind in [(400, EngineError), (404, EngineError), (401, UpstreamError), (429, UpstreamError), (500, UpstreamError)]:
                    for call in (lambda: e.generate(f"status {status}", SamplingParams()),
                                 lambda: collect(e.stream(f"status {status}", SamplingParams()))):
                        with pytest.raises(kind, match=f"upstream says status {status}") as exc:
                            await call()
                        assert type(exc.value) is kind
                        if kind is UpstreamError:
                            assert exc.value.status == status
                r = await e.generate("chunked", SamplingParams())
                assert r.choices[0].text == "chunky" and (r.prompt_tokens, r.completion_tokens) == (2, 1)
                chunks = await collect(e.stream("crlf", SamplingParams()))
                assert [(c.text, c.finish_reason) for c in chunks] == [("é", None), ("!", "stop")]
                assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (1, 2)
                t = time.perf_counter()
                with pytest.raises(UpstreamTimeout):
                    await collect(e.stream("stall", SamplingParams()))
                assert time.perf_counter() - t < 2.5
                # after all that the pool still serves
                r = await e.generate(MSGS, SamplingParams(max_tokens=3))
                assert r.choices[0].text == "Hello from upstream"
            finally:
                await e.aclose()

        run(scenario())
