"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every failure the gateway can name is an ``APIError``; the route wrapper turns it (and anything
unexpected, as a 500) into the same JSON, so clients written for OpenAI parse our errors unchanged.
"""

from __future__ import annotations

import math

import orjson
from starlette.responses import Response

# OpenAI's ``type`` per status: the official clients map the status to an exception class and
# show ``message``; ``type`` and ``code`` let programs branch without parsing text.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """A request that ends in an error response. ``headers`` adds e.g. ``Retry-After``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), status_code=self.status, headers=self.headers, media_type="application/json")


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def rate_limited(message: str, retry_after_s: float, code: str = "rate_limit_exceeded") -> APIError:
    seconds = max(1, math.ceil(retry_after_s))
    return APIError(429, message, code=code, headers={"Retry-After": str(seconds)})


def error_bytes(status: int, message: str, code: str | None = None) -> bytes:
    """The JSON body for errors raised outside a route (pure ASGI middleware)."""
    return orjson.dumps(APIError(status, message, code=code).body())
