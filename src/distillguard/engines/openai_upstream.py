"""Any OpenAI-compatible server as an engine (vLLM, a llama.cpp server, a hosted API).

HTTP goes through one aiohttp ``ClientSession`` (keep-alive pool, created lazily on the running
event loop) because httpx's pool dominated the gateway's CPU: per proxied request the gateway
process spent 2.6 ms (8 concurrent) to 4.6 ms (64) with httpx and 0.6 to 0.7 ms with aiohttp,
of which ~0.35 ms is the gateway itself (bench/gateway_cpu_split.py).
An httpx transport can still be injected (tests use ``httpx.MockTransport``); the request and
response mapping and the error mapping are shared by both paths.

Errors: connection failures and upstream 5xx (and 401/403/429, which are the gateway's own
credentials or quota, not the client's fault) raise ``UpstreamError`` with the status kept;
timeouts raise ``UpstreamTimeout``; an upstream 400/404/422 (the request itself was refused)
raises ``EngineError`` with the upstream's message.

Logits processors cannot run remotely, so a request carrying any raises ``EngineError``
(``supports_logits_processors`` is False); callers must not send them here.

Token counts: reported usage is the upstream's ``usage``. ``count_prompt_tokens`` can only
estimate, because the upstream tokenises with its own tokenizer: ceil(characters / 4) per text,
plus 4 tokens per chat message and 3 for the reply header (OpenAI's published overhead).
Real English text runs at about 4 characters per token on GPT-style tokenizers, so the estimate
is close but not exact; it is only used to reserve token limits before the call.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson

from distillguard.engines.base import (
    Choice,
    Engine,
    EngineError,
    GenerationResult,
    Prompt,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    UpstreamError,
    UpstreamTimeout,
)
from distillguard.engines.sampling import validate

# statuses that mean the client's request was refused, not that the upstream failed
_CLIENT_FAULT = {400, 404, 413, 422}
# checked in this order: aiohttp's read timeout is both a TimeoutError and a ClientError, and
# TimeoutError is an OSError
_TIMEOUTS = (httpx.TimeoutException, TimeoutError)
_FAILURES = (httpx.HTTPError, aiohttp.ClientError, OSError)


def estimate_tokens(prompt: Prompt) -> int:
    """The documented estimate used by ``count_prompt_tokens`` (see module docstring)."""
    if isinstance(prompt, str):
        return math.ceil(len(prompt) / 4)
    total = 3
    for message in prompt:
        total += 4 + math.ceil(len(_message_text(message)) / 4)
    return total


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: count the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return f"{message.get('role', '')}{message.get('name', '')}{content}"


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # e.g. an integer beyond 64 bits, which orjson refuses and json does not
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP(S)_PROXY / NO_PROXY), read once.

    httpx honours these by default; aiohttp's own ``trust_env`` would also read ~/.netrc in a
    thread on every request, so the proxy is resolved here instead.
    """
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Split a byte stream into text lines (LF, CRLF or CR), decoding whole lines as UTF-8."""
    tail = b""
    async for chunk in chunks:
        lines = (tail + chunk).splitlines(keepends=True)
        tail = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if tail:
        yield tail.decode("utf-8", "replace")


class _Reply:
    """A response whose body is still to be read: the status, then chunks or the whole body."""

    def __init__(self, status: int, chunks: AsyncIterator[bytes], read: Any):
        self.status, self.chunks, self.read = status, chunks, read


class _AiohttpPool:
    """The product path: one keep-alive ``aiohttp.ClientSession`` per event loop."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float):
        self.base_url = base_url
        self.headers = {**headers, "Content-Type": "application/json"}
        # connect covers waiting for a pooled connection too; sock_read bounds the wait for the
        # response and between streamed chunks, like httpx.Timeout(timeout_s)
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self.proxy = _env_proxy(base_url)
        # the context httpx would use (certifi's CAs, SSL_CERT_FILE/DIR honoured), so an https
        # upstream is verified exactly as before
        self.ssl = httpx.create_ssl_context() if base_url.startswith("https://") else True
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            self._abandon()
            # 100 connections, as httpx's default pool. Idle connections are dropped after 4 s,
            # before common servers close them (uvicorn, so vLLM: 5 s), so a request is not sent
            # down a connection the server is closing at that moment
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=4.0, ssl=self.ssl),
                headers=self.headers, timeout=self.timeout, trust_env=False,
            )
            self._loop = loop
        return self._session

    def _abandon(self) -> None:
        """Drop a session made on an event loop that is gone (each asyncio.run is a new loop)."""
        if self._session is not None:
            # ClientSession.close() closes the sockets at once and then only waits for them,
            # which needs no loop when there is nothing to wait for (the old loop closed them)
            closing = self._session.close()
            try:
                closing.send(None)
            except StopIteration:
                pass
            except RuntimeError:  # that loop is closed; its sockets went with it
                closing.close()
            else:
                closing.close()
            self._session = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.session().post(self.base_url + path, data=body, proxy=self.proxy) as resp:
            return resp.status, await resp.read()

    @asynccontextmanager
    async def stream(self, path: str, body: bytes) -> AsyncIterator[_Reply]:
        async with self.session().post(self.base_url + path, data=body, proxy=self.proxy) as resp:
            yield _Reply(resp.status, resp.content.iter_any(), resp.read)

    async def aclose(self) -> None:
        if self._session is not None:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
                self._session = None
            else:
                self._abandon()


class _HttpxPool:
    """An injected httpx transport (tests pass ``httpx.MockTransport``)."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float, transport: httpx.AsyncBaseTransport):
        self.client = httpx.AsyncClient(
            base_url=base_url, headers={**headers, "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout_s), transport=transport,
        )

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        resp = await self.client.post(path, content=body)
        return resp.status_code, resp.content

    @asynccontextmanager
    async def stream(self, path: str, body: bytes) -> AsyncIterator[_Reply]:
        async with self.client.stream("POST", path, content=body) as resp:
            yield _Reply(resp.status_code, resp.aiter_bytes(), resp.aread)

    async def aclose(self) -> None:
        await self.client.aclose()


class OpenAIUpstreamEngine(Engine):
    """An OpenAI-compatible HTTP upstream.

    Args:
        base_url: the upstream's API root including ``/v1``, e.g. ``http://127.0.0.1:8080/v1``.
        api_key: sent as ``Authorization: Bearer``; None sends no key.
        model: the upstream's model id (sent upstream).
        timeout_s: seconds to wait for a response (and between streamed chunks).
        model_name: the id our clients send; defaults to ``model``.
        context_length: the upstream model's context, for the gateway's checks.
        transport: an httpx transport to use instead of the aiohttp pool (tests pass
            ``httpx.MockTransport``).
    """

    supports_logprobs = True
    supports_logits_processors = False

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 120.0,
        model_name: str | None = None,
        context_length: int = 8192,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise EngineError(f"upstream URL {base_url!r} must start with http:// or https://")
        if not model:
            raise EngineError("the upstream model id is missing; set engine.upstream_model")
        self.base_url = base_url.rstrip("/")
        self.upstream_model = model
        self.model_name = model_name or model
        self.context_length = context_length
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: _AiohttpPool | _HttpxPool = (
            _AiohttpPool(self.base_url, headers, timeout_s)
            if transport is None
            else _HttpxPool(self.base_url, headers, timeout_s, transport)
        )

    # ---- Engine interface ----------------------------------------------------------------------

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return estimate_tokens(prompt)

    async def generate(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        path, body = self._request(prompt, params, stream=False)
        try:
            status, content = await self._http.post(path, _dumps(body))
        except _TIMEOUTS as exc:
            raise self._timeout() from exc
        except _FAILURES as exc:
            raise self._unreachable(exc) from exc
        self._check(status, content.decode("utf-8", "replace"))
        try:
            data = orjson.loads(content)
            chat = isinstance(prompt, list)
            choices = [self._choice(c, chat) for c in sorted(data["choices"], key=lambda c: c.get("index", 0))]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"upstream {self.base_url} sent a malformed response: {exc!r}", status) from exc
        usage = data.get("usage") or {}
        return GenerationResult(
            choices=choices,
            prompt_tokens=int(usage.get("prompt_tokens", self.count_prompt_tokens(prompt))),
            completion_tokens=int(
                usage.get("completion_tokens", sum(estimate_tokens(c.text) for c in choices))
            ),
        )

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[StreamChunk]:
        path, body = self._request(prompt, params, stream=True)
        chat = isinstance(prompt, list)
        texts: dict[int, list[str]] = {}
        usage: dict[str, Any] = {}
        held: StreamChunk | None = None  # a finishing chunk waits so the last one can carry usage
        try:
            async with self._http.stream(path, _dumps(body)) as resp:
                if resp.status >= 400:
                    self._check(resp.status, (await resp.read()).decode("utf-8", "replace"))
                async for line in _lines(resp.chunks):
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = orjson.loads(data)
                    except ValueError as exc:
                        raise UpstreamError(f"upstream sent a malformed stream event: {data[:200]!r}") from exc
                    if not isinstance(event, dict):
                        raise UpstreamError(f"upstream sent a malformed stream event: {data[:200]!r}")
                    if event.get("error"):
                        raise UpstreamError(f"upstream error mid-stream: {event['error']}")
                    usage = event.get("usage") or usage
                    for c in event.get("choices") or []:
                        chunk = self._chunk(c, chat)
                        if chunk is None:
                            continue
                        texts.setdefault(chunk.index, []).append(chunk.text)
                        if held is not None:
                            yield held
                            held = None
                        if chunk.finish_reason is not None:
                            held = chunk
                        else:
                            yield chunk
        except _TIMEOUTS as exc:
            raise self._timeout() from exc
        except _FAILURES as exc:
            raise self._unreachable(exc) from exc
        last = held or StreamChunk(index=max(texts, default=0), text="")
        last.prompt_tokens = int(usage.get("prompt_tokens", self.count_prompt_tokens(prompt)))
        last.completion_tokens = int(
            usage.get("completion_tokens", sum(estimate_tokens("".join(t)) for t in texts.values()))
        )
        yield last

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"upstream {self.base_url} did not answer within {self.timeout_s:g} s")

    def _unreachable(self, exc: BaseException) -> UpstreamError:
        return UpstreamError(f"upstream {self.base_url} is unreachable: {exc!r}")

    def tokenizer_id(self) -> str:
        return f"openai:{self.base_url}:{self.upstream_model}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "upstream": self.base_url, "upstream_model": self.upstream_model}

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- request and response mapping ------------------------------------------------------------

    def _request(self, prompt: Prompt, params: SamplingParams, stream: bool) -> tuple[str, dict[str, Any]]:
        validate(params)
        if params.logits_processors:
            raise EngineError(
                f"engine {self.model_name} is a remote upstream and cannot apply logits processors "
                "(watermarks, countermeasures); serve a local engine (llamacpp or hf) for those"
            )
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        chat = isinstance(prompt, list)
        if chat:
            body["messages"] = prompt
            if params.logprobs:
                body["logprobs"] = True
                if params.top_logprobs:
                    body["top_logprobs"] = params.top_logprobs
        else:
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = params.top_logprobs  # legacy API: an int, 0 = sampled token only
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return ("/chat/completions" if chat else "/completions"), body

    def _check(self, status: int, text: str) -> None:
        if status < 400:
            return
        message = text[:500]
        try:
            err = json.loads(text).get("error")
        except (ValueError, AttributeError):
            err = None
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
        elif isinstance(err, str) and err:
            message = err
        if status in _CLIENT_FAULT:
            raise EngineError(f"upstream refused the request ({status}): {message}")
        raise UpstreamError(f"upstream {self.base_url} answered {status}: {message}", status)

    @staticmethod
    def _choice(c: dict[str, Any], chat: bool) -> Choice:
        text = (c.get("message") or {}).get("content") or "" if chat else c.get("text") or ""
        return Choice(
            text=text,
            finish_reason=_finish(c.get("finish_reason")) or "stop",
            logprobs=_logprobs(c.get("logprobs"), chat),
        )

    @staticmethod
    def _chunk(c: dict[str, Any], chat: bool) -> StreamChunk | None:
        text = (c.get("delta") or {}).get("content") or "" if chat else c.get("text") or ""
        finish = _finish(c.get("finish_reason"))
        if not text and finish is None:
            return None  # e.g. the role-only first delta
        return StreamChunk(index=int(c.get("index", 0)), text=text, finish_reason=finish, logprobs=_logprobs(c.get("logprobs"), chat))


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _logprobs(lp: dict[str, Any] | None, chat: bool) -> list[TokenLogprob] | None:
    if not lp:
        return None
    if chat:
        return [
            TokenLogprob(
                token=t["token"],
                logprob=float(t["logprob"]),
                top=[(x["token"], float(x["logprob"])) for x in t.get("top_logprobs") or []],
            )
            for t in lp.get("content") or []
        ]
    tops = lp.get("top_logprobs") or []
    return [
        TokenLogprob(
            token=tok,
            logprob=float(val if val is not None else 0.0),
            top=sorted(((k, float(v)) for k, v in (tops[i] or {}).items()), key=lambda kv: -kv[1])
            if i < len(tops)
            else [],
        )
        for i, (tok, val) in enumerate(zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], strict=False))
    ]
