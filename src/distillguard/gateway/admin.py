"""The admin API under /admin, for the API owner, behind its own bearer token.

Customer keys never open it: only the token from ``server.admin_token`` (or the file named by
``server.admin_token_file``) does. Without one configured, every admin route answers 503 saying
how to set it. Store calls run in the thread pool; none of this is on the serving path.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from distillguard.gateway.errors import APIError
from distillguard.store.base import StoreError

_JSON = "application/json"
MAX_EVENTS = 10_000


def require_admin(request: Request) -> None:
    expected = request.app.state.settings.admin_token_value()
    if not expected:
        raise APIError(
            503,
            "The admin API is disabled: set server.admin_token in the config file, or the environment "
            "variable DISTILLGUARD_SERVER__ADMIN_TOKEN, then restart the server.",
            code="admin_disabled",
        )
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(401, "The admin API needs 'Authorization: Bearer <admin token>' (customer keys are not accepted).", code="invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], tags=["admin"])


class NewKey(BaseModel):
    account: str
    tier: str | None = None


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def _store(request: Request) -> Any:
    return request.app.state.store


@router.get("/accounts")
async def list_accounts(request: Request) -> Response:
    accounts = await run_in_threadpool(_store(request).list_accounts)
    return _json({"object": "list", "data": [asdict(a) for a in accounts]})


@router.get("/accounts/{name}")
async def show_account(name: str, request: Request) -> Response:
    store = _store(request)

    def fetch() -> tuple[Any, Any, int]:
        acc = store.get_account(name)
        if acc is None:
            return None, [], 0
        return acc, store.list_keys(name), store.count_events(name)

    acc, keys, n_events = await run_in_threadpool(fetch)
    if acc is None:
        raise APIError(404, f"No account named {name!r}.", param="name", code="account_not_found")
    return _json({**asdict(acc), "keys": [_key(k) for k in keys], "events": n_events})


@router.get("/keys")
async def list_keys(request: Request, account: str | None = None) -> Response:
    keys = await run_in_threadpool(_store(request).list_keys, account)
    return _json({"object": "list", "data": [_key(k) for k in keys]})


@router.post("/keys")
async def create_key(new: NewKey, request: Request) -> Response:
    tiers = request.app.state.settings.limits.tiers
    if new.tier is not None and new.tier not in tiers:
        raise APIError(400, f"Unknown tier {new.tier!r}; configured tiers: {', '.join(sorted(tiers))}.", param="tier", code="invalid_value")
    try:
        record, secret = await run_in_threadpool(_store(request).create_key, new.account, new.tier)
    except StoreError as exc:
        raise APIError(400, str(exc), param="account", code="invalid_value") from None
    # the secret is shown here once; only its salted hash is stored
    return _json({**_key(record), "secret": secret}, status=201)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    try:
        record = await run_in_threadpool(_store(request).revoke_key, key_id)
    except StoreError as exc:
        raise APIError(404, str(exc), param="key_id", code="key_not_found") from None
    request.app.state.keys.invalidate(key_id=key_id)  # takes effect on the next request
    return _json(_key(record))


@router.get("/events")
async def events(
    request: Request,
    since: float | None = Query(None, description="Unix seconds; events at or after this arrival time"),
    account: str | None = None,
    limit: int = Query(1000, ge=1, le=MAX_EVENTS),
    format: str = Query("json", pattern="^(json|jsonl)$"),  # noqa: A002
) -> Response:
    store = _store(request)

    def fetch() -> list[Any]:
        out = []
        for ev in store.iter_events(since=since, account=account):
            out.append(ev)
            if len(out) >= limit:
                break
        return out

    evs = await run_in_threadpool(fetch)
    if format == "jsonl" or "ndjson" in (request.headers.get("accept") or ""):
        body = "".join(ev.to_json() + "\n" for ev in evs)
        return Response(body, media_type="application/x-ndjson")
    return _json({"object": "list", "data": [ev.model_dump(mode="json", exclude_none=True) for ev in evs]})


def _key(k: Any) -> dict[str, Any]:
    return {"key_id": k.key_id, "account": k.account, "tier": k.tier, "created_at": k.created_at, "revoked_at": k.revoked_at}
