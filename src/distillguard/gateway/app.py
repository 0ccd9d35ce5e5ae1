"""The gateway application: ``create_app(settings, engine=None, store=None, bus=None)``.

Whatever is not passed in is built at start-up (lifespan) from the settings: the engine
(``build_engine``), the store (``open_store``), the event bus (``build_bus``). The event writer
and the rate limiter are always the app's own. On shutdown (after uvicorn has finished in-flight
requests) the writer is flushed, then what the app built is closed.

State on ``app.state``: ``settings``, ``engine``, ``store``, ``writer``, ``bus``, ``keys`` (the
key cache), ``limiter``, ``metrics``, ``policy`` (see policy.py; replace it to change decisions
live), ``gateway`` (the route handlers).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from distillguard.config import Settings, load_settings
from distillguard.engines.base import Engine
from distillguard.gateway.admin import router as admin_router
from distillguard.gateway.auth import KeyCache
from distillguard.gateway.errors import APIError
from distillguard.gateway.limits import Limiter
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.middleware import GatewayMiddleware
from distillguard.gateway.openai_routes import CHAT, COMPLETIONS, Gateway
from distillguard.gateway.policy import AllowAll
from distillguard.gateway.shield import Shield
from distillguard.store.base import EventBus, Store

log = logging.getLogger("distillguard.gateway")


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    store: Store | None = None,
    bus: EventBus | None = None,
    *,
    policy: Any = None,
    shield: Shield | None = None,
    key_cache_ttl_s: float = 2.0,
    close_given: bool = False,
) -> FastAPI:
    """``close_given``: also close the engine/store/bus passed in when the app shuts down
    (``serve`` builds them up front so that start-up errors are one clear line).
    ``shield``: watermark, detection worker and risk policy (``serve`` builds one); it is started
    with the app and stopped after the last event is written."""
    settings = settings if settings is not None else load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from distillguard.store import EventWriter, build_bus, open_store

        owned: list[Any] = [x for x in (engine, store, bus) if x is not None] if close_given else []
        eng = engine
        if eng is None:
            from distillguard.engines.factory import build_engine

            eng = await run_in_threadpool(build_engine, settings.engine)
            owned.append(eng)
        st = store
        if st is None:
            st = await run_in_threadpool(open_store, settings.store.url)
            owned.append(st)
        b = bus
        if b is None:
            b = build_bus(settings.store.bus_url)
            owned.append(b)
        limiter = Limiter(settings.limits.storage_url)
        await limiter.check()
        writer = EventWriter(st, settings.store.batch_size, settings.store.flush_interval_s)
        metrics.watch_writer(writer)
        keys = KeyCache(st, ttl_s=key_cache_ttl_s)
        s = app.state
        s.engine, s.store, s.bus, s.writer, s.keys, s.limiter = eng, st, b, writer, keys, limiter
        s.gateway = Gateway(settings, eng, keys, limiter, writer, b, metrics, s)
        if shield is not None:
            shield.start()
        log.info("serving model %r on %s", eng.model_name, type(eng).__name__)
        try:
            yield
        finally:
            # uvicorn has stopped accepting and finished in-flight requests (or the grace ran
            # out); every event they produced is in the writer's queue: write it all
            left = writer.close(timeout=settings.server.shutdown_grace_s)
            if left:
                log.error("%d exchange events could not be written before shutdown", left)
            if shield is not None:
                shield.stop()
            limiter.close()
            for thing in (b, st):
                if thing in owned:
                    thing.close()
            if eng in owned:
                await eng.aclose()

    app = FastAPI(title="DistillGuard", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.shield = shield
    if policy is None and shield is not None:
        policy = shield.policy
    app.state.policy = policy if policy is not None else AllowAll()
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.server.max_body_bytes, metrics=metrics)

    # The serving routes take the raw request: parsing and validation happen in Gateway.handle,
    # so errors come out in OpenAI's shape and FastAPI's per-route body machinery is skipped.
    async def chat_completions(request: Request) -> Response:
        return await request.app.state.gateway.handle(request, CHAT)

    async def completions(request: Request) -> Response:
        return await request.app.state.gateway.handle(request, COMPLETIONS)

    async def list_models(request: Request) -> Response:
        return await request.app.state.gateway.models(request)

    async def get_model(request: Request) -> Response:
        return await request.app.state.gateway.model(request)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def health(request: Request) -> Response:
        eng = getattr(request.app.state, "engine", None)
        return Response(orjson.dumps({"status": "ok", "model": eng.model_name if eng else None}), media_type="application/json")

    # Plain Starlette routes: FastAPI's dependency solving would cost ~100 µs per request here
    # for nothing (these endpoints parse their own bodies). They are not in the OpenAPI schema;
    # OpenAI's own API reference documents them.
    for path, endpoint, method in (
        (CHAT, chat_completions, "POST"),
        (COMPLETIONS, completions, "POST"),
        ("/v1/models", list_models, "GET"),
        ("/v1/models/{model}", get_model, "GET"),
        ("/metrics", prometheus, "GET"),
        ("/health", health, "GET"),
    ):
        app.router.routes.append(Route(path, endpoint, methods=[method]))
    app.include_router(admin_router)
    if shield is not None:
        _mount_shield_admin(app, settings, shield)
    _install_error_handlers(app)
    return app


def _mount_shield_admin(app: FastAPI, settings: Settings, shield: Shield) -> None:
    """Review (flagged accounts, exempt, ban, verify, explain), detection state and watermark
    detection under /admin, behind the same admin token."""
    from fastapi import Depends

    from distillguard.gateway.admin import require_admin

    guard = [Depends(require_admin)]
    if shield.policy is not None:
        from distillguard.policy.admin_routes import build_router as policy_router

        app.include_router(policy_router(state=app.state, dependencies=guard, policy_file=settings.policy.file),
                           prefix="/admin")
    extra = APIRouter(prefix="/admin", dependencies=guard, tags=["admin"])

    def _detect_on() -> None:
        if shield.detection is None:
            raise APIError(404, "Detection is off on this server (detect.enabled = false).", code="detect_disabled")

    @extra.get("/detect/accounts/{name}")
    async def detect_account(request: Request, name: str) -> Response:
        """The detector's latest view of an account (written to its flags by the detection process)."""
        _detect_on()
        acct = await run_in_threadpool(request.app.state.store.get_account, name)
        if acct is None:
            raise APIError(404, f"No account named {name!r}.", code="account_not_found")
        f = acct.flags
        return Response(orjson.dumps({
            "account": name, "score": f.get("risk"), "flagged": f.get("risk_flagged", False),
            "flagged_at": f.get("risk_flagged_at"), "requests": f.get("risk_requests", 0),
            "cluster": f.get("cluster"), "evidence": f.get("evidence", []),
        }), media_type="application/json")

    @extra.get("/detect/clusters")
    async def detect_clusters(request: Request) -> Response:
        _detect_on()
        clusters: dict[str, list[str]] = {}
        for acct in await run_in_threadpool(request.app.state.store.list_accounts):
            cid = acct.flags.get("cluster")
            if cid:
                clusters.setdefault(cid, []).append(acct.name)
        return Response(orjson.dumps({"clusters": clusters}), media_type="application/json")

    @extra.post("/watermark/detect")
    async def watermark_detect(request: Request) -> Response:
        """Body: {"text", "fpr"?} (model-free, exact) or, for the Gumbel scheme, {"text", "replay": true,
        "temperature", "messages" or "prompt"?}: redo the keyed choice with the served model (far more power
        when the prompt and temperature are the served ones; see watermark/replay.py)."""
        wm = shield.watermark
        if wm is None or wm.keys is None:
            raise APIError(404, "No watermark key is configured (watermark.key_file or its key_env).", code="watermark_disabled")
        try:
            body = orjson.loads(await request.body())
            text = body["text"]
            fpr = body.get("fpr")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise APIError(400, 'The body must be JSON like {"text": "...", "fpr": 1e-5}.', param="text") from None
        if not isinstance(text, str):
            raise APIError(400, "'text' must be a string.", param="text")
        if fpr is not None and not (isinstance(fpr, (int, float)) and 0 < fpr < 1):
            raise APIError(400, "'fpr' must be a number in (0, 1).", param="fpr")
        if body.get("replay"):
            result = await _replay(wm, body, text, fpr)
        else:
            result = await run_in_threadpool(wm.detect_text, text, fpr)
        if "error" in result:  # too short, another tokenizer...: the message says what to fix
            raise APIError(400, str(result["error"]), param="text")
        return Response(orjson.dumps(result), media_type="application/json")

    async def _replay(wm: Any, body: dict[str, Any], text: str, fpr: float | None) -> dict[str, Any]:
        from distillguard.watermark.processors import ReplayUnavailable

        temperature = body.get("temperature")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise APIError(400, "replay needs 'temperature': the sampling temperature the text was served at (> 0).",
                           param="temperature")
        prompt = body.get("messages", body.get("prompt"))
        if prompt is not None and not (isinstance(prompt, str) or (
                isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt))):
            raise APIError(400, "'messages' must be a list of {\"role\", \"content\"} objects ('prompt': a string).",
                           param="messages")
        try:
            return await run_in_threadpool(wm.detect_replay, text, prompt, float(temperature), fpr)
        except ReplayUnavailable as exc:
            raise APIError(404, str(exc), code="replay_unavailable") from None

    app.include_router(extra)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            msg = f"Unknown URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            msg = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            msg = str(exc.detail)
        return APIError(exc.status_code, msg, code="not_found" if exc.status_code == 404 else None).response()

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return APIError(400, f"invalid value for {param!r}: {err.get('msg')}" if param else str(err.get("msg")), param=param).response()

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, f"Internal server error ({type(exc).__name__}).").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
