"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

One request, top to bottom (``Gateway.handle``):

    auth (cached key lookup) → parse + validate the body → model, tier caps, engine abilities
    → policy.decide → reserve rate limits (requests + prompt/max tokens) → engine
    → response (JSON or SSE) → settle the token reservation → exchange event to writer and bus

Every failure after auth is logged as an exchange event too (with its status); failures before
auth have no account, so they only count in the metrics. Nothing here touches the database:
auth is cached (auth.py), events are queued for a background writer.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from distillguard.config import Settings, TierLimits
from distillguard.engines.base import (
    Engine,
    EngineError,
    GenerationResult,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    UpstreamError,
    UpstreamTimeout,
)
from distillguard.events import Decision as EventDecision
from distillguard.events import ExchangeEvent, ResponseSummary
from distillguard.gateway import schemas
from distillguard.gateway.auth import KeyCache, Principal
from distillguard.gateway.errors import APIError, invalid, rate_limited
from distillguard.gateway.limits import LimitExceeded, Limiter, Reservation
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.policy import VERIFY_MESSAGE, Decision, PolicyContext
from distillguard.policy import degrade
from distillguard.store.base import StoreUnavailable

log = logging.getLogger("distillguard.gateway")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
_JSON = "application/json"
_NO_DECISION = EventDecision(action="allow", reasons=[])
_ids = random.Random()  # seeded from os.urandom once


def new_event_id() -> str:
    """Same format as ``store.ids.new_event_id`` (``ev_`` + 12 hex ms + 16 hex random), from a
    PRNG instead of os.urandom: ids must be unique, not secret, and a syscall per request can
    wait on the GIL behind the writer thread."""
    return f"ev_{int(time.time() * 1000):012x}{_ids.getrandbits(64):016x}"


@dataclass
class Exchange:
    """What one request has gathered so far; becomes the exchange event at the end."""

    endpoint: str
    ts: float
    t0: float
    ip: str | None
    user_agent: str | None
    event_id: str = field(default_factory=new_event_id)
    principal: Principal | None = None
    body: dict[str, Any] | None = None
    decision: Decision | None = None
    reservation: Reservation | None = None
    prompt_tokens: int = 0
    degrade_seed: int = 0


class Gateway:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        keys: KeyCache,
        limiter: Limiter,
        writer: Any,
        bus: Any,
        metrics: Metrics,
        app_state: Any,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.keys = keys
        self.limiter = limiter
        self.writer = writer
        self.bus = bus
        self.metrics = metrics
        self.state = app_state  # app.state: the policy is read per request, so it can be swapped live
        self.shield = getattr(app_state, "shield", None)  # watermark processors (gateway/shield.py)
        self.created = int(time.time())
        self._tasks: set[asyncio.Task] = set()

    # ---- /v1/models ----------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        try:
            await self.keys.authenticate(request.headers.get("authorization"))
        except APIError as exc:
            return exc.response()
        return Response(orjson.dumps({"object": "list", "data": [self._model_card()]}), media_type=_JSON)

    async def model(self, request: Request) -> Response:
        try:
            await self.keys.authenticate(request.headers.get("authorization"))
            name = request.path_params["model"]
            if name != self.engine.model_name:
                raise self._unknown_model(name)
        except APIError as exc:
            return exc.response()
        return Response(orjson.dumps(self._model_card()), media_type=_JSON)

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.engine.model_name, "object": "model", "created": self.created, "owned_by": "distillguard"}

    def _unknown_model(self, name: str) -> APIError:
        return APIError(
            404,
            f"The model {name!r} does not exist; this server serves {self.engine.model_name!r}.",
            param="model",
            code="model_not_found",
        )

    # ---- completions -------------------------------------------------------------------------

    async def handle(self, request: Request, endpoint: str) -> Response:
        client = request.client
        headers = request.headers
        ex = Exchange(
            endpoint=endpoint,
            ts=self._arrival_ts(headers),
            t0=time.perf_counter(),
            ip=client.host if client else None,
            user_agent=headers.get("user-agent"),
        )
        try:
            ex.principal = await self.keys.authenticate(headers.get("authorization"))
            return await self._serve(request, ex)
        except APIError as exc:
            return self._fail(ex, exc)
        except Exception as exc:  # noqa: BLE001 - never crash the server; say it in OpenAI's shape
            error = _engine_error(exc)  # upstream down 502, timeout 504, refused 400, else 500
            if error.status == 500:
                log.exception("unexpected error serving %s", endpoint)
            return self._fail(ex, error)

    def _arrival_ts(self, headers: Any) -> float:
        """Wall clock, or in arena mode (server.arena_secret set and echoed by the client) the
        client's simulated clock from X-DistillGuard-Time, so days of traffic fit in minutes."""
        secret = self.settings.server.arena_secret
        if secret and hmac.compare_digest(headers.get("x-distillguard-arena-secret", "").encode(), secret.encode()):
            try:
                ts = float(headers.get("x-distillguard-time", ""))
            except ValueError:
                ts = float("nan")
            if math.isfinite(ts) and ts > 0:
                return ts
        return time.time()

    async def _serve(self, request: Request, ex: Exchange) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            ex.body = {"_unparsed": raw[:4096].decode("utf-8", "replace")}
            raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            ex.body = {"_unparsed": raw[:4096].decode("utf-8", "replace")}
            raise invalid("The request body must be a JSON object.", code="invalid_json")
        ex.body = body
        chat = ex.endpoint == CHAT
        req = schemas.parse(schemas.ChatRequest if chat else schemas.CompletionRequest, body)
        engine = self.engine
        if req.model != engine.model_name:
            raise self._unknown_model(req.model)

        principal = ex.principal
        assert principal is not None
        tier_name, tier = self._tier(principal)
        want_logprobs, top_logprobs = req.wants_logprobs()
        if want_logprobs and not engine.supports_logprobs:
            raise invalid(
                f"The {type(engine).__name__} engine serving this model cannot return logprobs.", param="logprobs"
            )
        prompt: Any = req.prompt() if chat else req.prompt_text()
        try:
            prompt_tokens = engine.count_prompt_tokens(prompt)
        except EngineError as exc:
            raise invalid(str(exc), param="messages" if chat else "prompt") from None
        ex.prompt_tokens = prompt_tokens
        param = "max_completion_tokens" if chat and req.max_completion_tokens is not None else "max_tokens"
        max_tokens = self._max_tokens(req.requested_max_tokens(), param, tier, prompt_tokens, chat)

        decision = await self._decide(ex, tier_name, prompt_tokens)
        ex.decision = decision
        n = req.n
        plan = getattr(decision, "degrade", None)  # a risk policy's DegradePlan (policy/degrade.py)
        if plan is not None:
            try:
                want_logprobs, top_logprobs, n = degrade.cap_request(plan, want_logprobs, top_logprobs, req.n)
            except degrade.LogprobsRefused as exc:
                raise invalid(str(exc), param="logprobs") from None
            ex.degrade_seed = degrade.noise_seed(principal.account.name, body)
            max_tokens = degrade.cap_max_tokens(plan, max_tokens)
        elif decision.strips_logprobs():
            want_logprobs, top_logprobs = False, 0
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        # A policy's stronger watermark replaces the ordinary one, never both.
        processors = list(decision.logits_processors)
        if not processors and self.shield is not None:
            processors = self.shield.processors_for(principal.account.name, tier_name, temperature, top_p)
        if processors and not engine.supports_logits_processors:
            raise APIError(
                500,
                f"The policy attached logits processors but the {type(engine).__name__} engine cannot apply them.",
                code="policy_engine_mismatch",
            )

        reserve = prompt_tokens + max_tokens * n
        try:
            ex.reservation = await self.limiter.reserve(
                principal.key.key_id, principal.account.name, tier, reserve, decision.limit_scale
            )
        except LimitExceeded as exc:
            self.metrics.limit_rejections.labels(exc.kind).inc()
            raise rate_limited(exc.message(), exc.retry_after_s if exc.retry_after_s is not None else 60.0) from None

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=req.stop_list(),
            seed=req.seed,
            n=n,
            logprobs=want_logprobs,
            top_logprobs=top_logprobs,
            logits_processors=processors,
        )
        if req.stream:
            return await self._stream(ex, prompt, params, chat, req.include_usage())
        t_engine = time.perf_counter()
        try:
            result = await engine.generate(prompt, params)
        finally:
            self.metrics.observe_engine(ex.endpoint, time.perf_counter() - t_engine)
        return self._respond(ex, result, chat, want_logprobs)

    def _tier(self, principal: Principal) -> tuple[str, TierLimits]:
        tiers = self.settings.limits.tiers
        name = principal.key.tier
        if name not in tiers:
            name = self.settings.limits.default_tier
        return name, tiers[name]

    def _max_tokens(self, asked: int | None, param: str, tier: TierLimits, prompt_tokens: int, chat: bool) -> int:
        room = self.engine.context_length - prompt_tokens
        if room <= 0:
            raise APIError(
                400,
                f"The prompt takes {prompt_tokens} tokens, more than this model's context of {self.engine.context_length}.",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        if asked is None:
            return min(tier.max_tokens, room)
        if asked > tier.max_tokens:
            raise invalid(f"max_tokens is {asked}, above this tier's cap of {tier.max_tokens}.", param=param)
        if asked > room:
            raise APIError(
                400,
                f"The prompt ({prompt_tokens} tokens) plus max_tokens ({asked}) exceeds this model's context of "
                f"{self.engine.context_length} tokens; lower max_tokens.",
                param=param,
                code="context_length_exceeded",
            )
        return asked

    async def _decide(self, ex: Exchange, tier: str, prompt_tokens: int) -> Decision:
        policy = self.state.policy
        p = ex.principal
        assert p is not None and ex.body is not None
        ctx = PolicyContext(
            account=p.account,
            key=p.key,
            tier=tier,
            endpoint=ex.endpoint,
            request=ex.body,
            prompt_tokens=prompt_tokens,
            ip=ex.ip,
            user_agent=ex.user_agent,
            ts=ex.ts,
            engine=self.engine,
        )
        decision = policy.decide(ctx)
        if inspect.isawaitable(decision):
            decision = await decision
        self.metrics.policy_actions.labels(decision.action).inc()
        if decision.action == "block":
            ex.decision = decision
            raise APIError(403, decision.message or "This account is blocked from this API.", code="account_blocked")
        if decision.action == "verify":
            ex.decision = decision
            raise APIError(403, decision.message or VERIFY_MESSAGE, code="verification_required")
        retry = getattr(decision, "retry_after_s", None)
        if retry is not None:  # a risk policy's budget is spent (throttle): 429, the client may retry later
            ex.decision = decision
            self.metrics.limit_rejections.labels("risk_budget").inc()
            raise rate_limited(decision.message or "Rate limit reached for this account; retry later.", retry,
                               code="risk_budget_exceeded")
        return decision

    # ---- non-streaming -----------------------------------------------------------------------

    def _respond(self, ex: Exchange, result: GenerationResult, chat: bool, want_logprobs: bool) -> Response:
        model = self.engine.model_name
        choices = []
        for i, c in enumerate(result.choices):
            lp = _logprobs(c.logprobs, chat) if want_logprobs else None
            if chat:
                choices.append(
                    {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp, "finish_reason": c.finish_reason}
                )
            else:
                choices.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        usage = _usage(result.prompt_tokens, result.completion_tokens)
        payload = {
            "id": ("chatcmpl-" if chat else "cmpl-") + ex.event_id[3:],
            "object": "chat.completion" if chat else "text_completion",
            "created": int(ex.ts),
            "model": model,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": None,
        }
        plan = getattr(ex.decision, "degrade", None)
        if plan is not None:
            payload = degrade.apply_to_response(payload, plan, seed=ex.degrade_seed)
            # the log keeps what was returned (shared/spec/events.md)
            text = "\n".join((c["message"]["content"] or "") if chat else c["text"] for c in payload["choices"])
        else:
            text = "\n".join(c.text for c in result.choices)
        content = orjson.dumps(payload)
        finish = result.choices[0].finish_reason if result.choices else None
        self._settle(ex, result.prompt_tokens + result.completion_tokens)
        self._log(ex, 200, text, finish, result.prompt_tokens, result.completion_tokens)
        return Response(content, media_type=_JSON)

    # ---- streaming ---------------------------------------------------------------------------

    async def _stream(self, ex: Exchange, prompt: Any, params: SamplingParams, chat: bool, include_usage: bool) -> Response:
        chunks = self.engine.stream(prompt, params).__aiter__()
        t_engine = time.perf_counter()
        # the first chunk is awaited before answering, so an upstream that is down still gets a
        # proper 502/504 status instead of an error inside a 200 stream
        try:
            first: StreamChunk | None = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _aclose(chunks)
            raise
        return StreamingResponse(
            self._sse(ex, chunks, first, params, chat, include_usage, t_engine),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(
        self,
        ex: Exchange,
        chunks: AsyncIterator[StreamChunk],
        first: StreamChunk | None,
        params: SamplingParams,
        chat: bool,
        include_usage: bool,
        t_engine: float,
    ) -> AsyncIterator[bytes]:
        n = params.n
        texts: list[list[str]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        pieces = 0
        status = 499  # until the stream completes: the client went away
        error: APIError | None = None
        base = {
            "id": ("chatcmpl-" if chat else "cmpl-") + ex.event_id[3:],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(ex.ts),
            "model": self.engine.model_name,
        }
        want_lp = params.logprobs
        plan = getattr(ex.decision, "degrade", None)
        sd = degrade.StreamDegrader(plan, seed=ex.degrade_seed) if plan is not None else None
        sent: list[list[str]] = [[] for _ in range(n)]  # what the client got, when degraded

        def out(choice: dict[str, Any]) -> bytes | None:
            obj: dict[str, Any] | None = {**base, "choices": [choice]}
            if sd is not None:
                obj = sd.process(obj)
                if obj is None:
                    return None
                for c in obj["choices"]:
                    piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
                    if piece:
                        sent[int(c.get("index", 0))].append(piece)
            return _sse_line(obj)

        try:
            if chat:  # OpenAI opens each choice with the role
                for i in range(n):
                    yield _sse_line(
                        {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
                    )
            chunk = first
            while chunk is not None:
                i = chunk.index
                if chunk.text:
                    texts[i].append(chunk.text)
                    pieces += 1
                if chunk.finish_reason is not None:
                    finish[i] = chunk.finish_reason
                if chunk.prompt_tokens is not None:
                    prompt_tokens, completion_tokens = chunk.prompt_tokens, chunk.completion_tokens
                if chunk.text or chunk.finish_reason is not None:
                    lp = _logprobs(chunk.logprobs, chat) if want_lp and chunk.logprobs else None
                    if chat:
                        delta = {"content": chunk.text} if chunk.text else {}
                        choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": chunk.finish_reason}
                    else:
                        choice = {"index": i, "text": chunk.text, "logprobs": lp, "finish_reason": chunk.finish_reason}
                    line = out(choice)
                    if line is not None:
                        yield line
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    chunk = None
            self.metrics.observe_engine(ex.endpoint, time.perf_counter() - t_engine)
            if prompt_tokens is None:  # an engine that did not report usage: count what we saw
                prompt_tokens, completion_tokens = 0, pieces
            if sd is not None:  # text still held back inside an unclosed <think> block
                for c in sd.flush(chat):
                    piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
                    sent[int(c["index"])].append(piece or "")
                    yield _sse_line({**base, "choices": [c]})
            if include_usage:
                yield _sse_line({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens or 0)})
            status = 200
            yield b"data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report inside the stream
            error = _engine_error(exc)
            if error.status == 500:
                log.exception("unexpected error while streaming %s", ex.endpoint)
            status = error.status
            yield _sse_line(error.body())
            yield b"data: [DONE]\n\n"
        finally:
            # Only synchronous work here: on a client disconnect this runs inside a cancelled
            # scope (or from the generator's finaliser), where an await would not complete.
            # Cut short, the engine reported no usage: count the prompt and the pieces sent.
            used_prompt = prompt_tokens if prompt_tokens is not None else ex.prompt_tokens
            used_completion = completion_tokens if completion_tokens is not None else pieces
            text = "\n".join("".join(t) for t in (sent if sd is not None else texts))
            reason = finish[0] if status == 200 else ("error" if error else "disconnected")
            self._log(ex, status, text, reason, used_prompt, used_completion)
            self._settle(ex, used_prompt + used_completion)
            if status != 200:
                self._spawn(_aclose(chunks))  # stop generating for nobody

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _fail(self, ex: Exchange, exc: APIError) -> Response:
        if ex.reservation is not None:
            self._settle(ex, 0)
        if ex.principal is not None:  # events need an account; 401s only count in metrics
            self._log(ex, exc.status, None, None, 0, 0, error=exc.message)
        return exc.response()

    def _settle(self, ex: Exchange, used: int) -> None:
        r = ex.reservation
        if r is None or r.settled:
            return
        pending = self.limiter.settle_nowait(r, used)
        if pending is not None:  # a network storage: refund in the background
            self._spawn(pending)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop any more (finaliser at shutdown): nothing left to do it
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log(
        self,
        ex: Exchange,
        status: int,
        text: str | None,
        finish: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        error: str | None = None,
    ) -> None:
        p = ex.principal
        assert p is not None
        if status == 200:
            self.metrics.count_tokens(prompt_tokens, completion_tokens)
        response = ResponseSummary.model_construct(
            text=text or "", finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
        if error is not None:
            response.error = error  # type: ignore[attr-defined]  # extra field, allowed by the model
        d = ex.decision
        event = ExchangeEvent.model_construct(
            id=ex.event_id,
            ts=ex.ts,
            account=p.account.name,
            key=p.key.key_id,
            ip=ex.ip,
            user_agent=ex.user_agent,
            endpoint=ex.endpoint,
            request=ex.body if ex.body is not None else {},
            response=response,
            status=status,
            latency_ms=round((time.perf_counter() - ex.t0) * 1000.0, 3),
            decision=d.for_event() if d is not None else _NO_DECISION,
        )
        try:
            self.writer.submit(event)
        except RuntimeError:  # writer closed: only during shutdown, after the grace period
            log.error("exchange event %s not logged: the event writer is closed", ex.event_id)
        try:
            self.bus.publish(event)
        except Exception:  # noqa: BLE001 - the bus is best effort; the store has every event
            log.exception("publishing event %s failed", ex.event_id)


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UpstreamTimeout):
        return APIError(504, str(exc), code="upstream_timeout")
    if isinstance(exc, UpstreamError):
        return APIError(502, str(exc), code="upstream_error")
    if isinstance(exc, EngineError):
        return APIError(400, str(exc), code="engine_refused")
    if isinstance(exc, StoreUnavailable):  # a key lookup that found the database down
        return APIError(503, f"The key store is unavailable; retry shortly ({exc}).", code="store_unavailable")
    return APIError(500, f"Internal server error ({type(exc).__name__}); the request was not served.")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse_line(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _logprobs(lps: list[TokenLogprob] | None, chat: bool) -> dict[str, Any] | None:
    if lps is None:
        return None
    if chat:
        return {
            "content": [
                {
                    "token": t.token,
                    "logprob": t.logprob,
                    "bytes": list(t.token.encode("utf-8")),
                    "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))} for s, v in t.top],
                }
                for t in lps
            ],
            "refusal": None,
        }
    offsets, pos = [], 0
    for t in lps:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [dict(t.top) for t in lps],
        "text_offset": offsets,
    }


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001 - closing a broken stream must not raise
            pass

