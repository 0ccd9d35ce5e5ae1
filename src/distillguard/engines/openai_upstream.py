"""Any OpenAI-compatible server as an engine (vLLM, a llama.cpp server, a hosted API), via httpx.

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

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx

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


class OpenAIUpstreamEngine(Engine):
    """An OpenAI-compatible HTTP upstream.

    Args:
        base_url: the upstream's API root including ``/v1``, e.g. ``http://127.0.0.1:8080/v1``.
        api_key: sent as ``Authorization: Bearer``; None sends no key.
        model: the upstream's model id (sent upstream).
        timeout_s: seconds to wait for a response (and between streamed chunks).
        model_name: the id our clients send; defaults to ``model``.
        context_length: the upstream model's context, for the gateway's checks.
        transport: an httpx transport (tests pass ``httpx.MockTransport``).
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
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    # ---- Engine interface ----------------------------------------------------------------------

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return estimate_tokens(prompt)

    async def generate(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        path, body = self._request(prompt, params, stream=False)
        try:
            resp = await self._client.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream {self.base_url} did not answer within {self.timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.base_url} is unreachable: {exc!r}") from exc
        self._check(resp.status_code, resp.text)
        try:
            data = resp.json()
            chat = isinstance(prompt, list)
            choices = [self._choice(c, chat) for c in sorted(data["choices"], key=lambda c: c.get("index", 0))]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"upstream {self.base_url} sent a malformed response: {exc!r}", resp.status_code) from exc
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
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    self._check(resp.status_code, (await resp.aread()).decode("utf-8", "replace"))
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError as exc:
                        raise UpstreamError(f"upstream sent a malformed stream event: {data[:200]!r}") from exc
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
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream {self.base_url} did not answer within {self.timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.base_url} is unreachable: {exc!r}") from exc
        last = held or StreamChunk(index=max(texts, default=0), text="")
        last.prompt_tokens = int(usage.get("prompt_tokens", self.count_prompt_tokens(prompt)))
        last.completion_tokens = int(
            usage.get("completion_tokens", sum(estimate_tokens("".join(t)) for t in texts.values()))
        )
        yield last

    def tokenizer_id(self) -> str:
        return f"openai:{self.base_url}:{self.upstream_model}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "upstream": self.base_url, "upstream_model": self.upstream_model}

    async def aclose(self) -> None:
        await self._client.aclose()

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
