"""One pure-ASGI middleware for the whole app: body-size limit and per-request metrics.

Pure ASGI (not Starlette's BaseHTTPMiddleware, which adds a task and a memory stream per request)
keeps the overhead to a few microseconds. The body limit is checked twice: against
Content-Length up front, and against the bytes actually received, for chunked uploads or a
Content-Length that lies.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distillguard.gateway.errors import APIError, error_bytes
from distillguard.gateway.metrics import Metrics


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"Request body is larger than the {limit} bytes this server accepts (server.max_body_bytes).",
            code="request_too_large",
        )


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        limit = self.max_body_bytes
        state: dict[str, Any] = {"status": 500, "started": False, "received": 0}

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _send_error(send, BodyTooLarge(limit))
                    self.metrics.observe_request(scope["path"], 413, time.perf_counter() - start)
                    return
                break

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:  # raised while a route outside our handlers read the body
            if not state["started"]:
                await _send_error(watched_send, exc)
        finally:
            self.metrics.observe_request(scope["path"], state["status"], time.perf_counter() - start)


async def _send_error(send: Send, exc: APIError) -> None:
    body = error_bytes(exc.status, exc.message, exc.code)
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
