"""A canned OpenAI-compatible upstream, for benchmarks and tests of the gateway itself.

It answers every chat/completions request at once (or after ``--delay-ms``) with the same short
text, so what a benchmark measures in front of it is the gateway's own cost. It is never used as
a model: it is only reachable by pointing an ``openai`` engine at it explicitly.

    python -m distillguard.gateway.stub --port 9100 [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

REPLY = "This is a canned reply from the stub upstream."
_WORDS = REPLY.split(" ")


def make_stub_app(delay_s: float = 0.0, model: str = "stub") -> Any:
    """A raw ASGI app (no framework: its own overhead must be negligible)."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        if delay_s:
            await asyncio.sleep(delay_s)
        if scope["method"] == "GET" and path.endswith("/models"):
            return await _json(send, {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "stub"}]})
        if scope["method"] != "POST" or not path.endswith(("/chat/completions", "/completions")):
            return await _json(send, {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}}, 404)
        req = orjson.loads(body or b"{}")
        chat = path.endswith("/chat/completions")
        n = int(req.get("n") or 1)
        max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        words = _WORDS[:max_tokens]
        finish = "stop" if len(words) == len(_WORDS) else "length"
        text = " ".join(words)
        usage = {"prompt_tokens": 10, "completion_tokens": len(words) * n, "total_tokens": 10 + len(words) * n}
        base = {"id": "stub-1", "created": int(time.time()), "model": req.get("model", model)}
        if req.get("stream"):
            return await _stream(send, base, chat, n, words, finish, usage)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish} for i in range(n)]
            return await _json(send, {**base, "object": "chat.completion", "choices": choices, "usage": usage})
        choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish} for i in range(n)]
        return await _json(send, {**base, "object": "text_completion", "choices": choices, "usage": usage})

    return app


async def _json(send: Any, obj: Any, status: int = 200) -> None:
    body = orjson.dumps(obj)
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _stream(send: Any, base: dict, chat: bool, n: int, words: list[str], finish: str, usage: dict) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    obj = "chat.completion.chunk" if chat else "text_completion"
    for i in range(n):
        for j, w in enumerate(words):
            piece = w if j == 0 else " " + w
            last = j == len(words) - 1
            c = {"index": i, "delta": {"content": piece}} if chat else {"index": i, "text": piece}
            c["finish_reason"] = finish if last else None
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps({**base, "object": obj, "choices": [c]}) + b"\n\n", "more_body": True})
    tail = b"data: " + orjson.dumps({**base, "object": obj, "choices": [], "usage": usage}) + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": tail})


def main() -> None:  # pragma: no cover - command line
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    uvicorn.run(make_stub_app(args.delay_ms / 1000.0), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":  # pragma: no cover
    main()
