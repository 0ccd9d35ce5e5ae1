"""Review API: flagged accounts, clusters, exempt / ban / unban / verify, explain, policy status.

    app.include_router(build_router(board, store, policy=policy, dependencies=[Depends(require_admin)]),
                       prefix="/admin")

Routes (relative to where it is mounted):

    GET  /policy/flagged?min_risk=       flagged accounts (own risk or cluster), evidence, review state
    GET  /policy/clusters                detector clusters with members and risk
    POST /policy/accounts/{name}/{action}  action: exempt | unexempt | ban | unban | verify | unverify
                                         body (optional): {"note": "...", "by": "..."}
    GET  /policy/accounts/{name}/explain the last decision, its reasons, and the state now
    GET  /policy/intel/export?since=     STIX 2.1 bundle of the flagged clusters (live board + stored events)
    GET  /policy/status                  threshold, rules, reloads, last reload error, indicator count
    POST /policy/reload                  re-read the policy file and indicators now

Store calls run in the thread pool; nothing here is on the serving path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from distillguard.policy.review import ACTIONS, apply_review
from distillguard.policy.state import RiskBoard
from distillguard.store.base import StoreError


class ReviewBody(BaseModel):
    note: str | None = None
    by: str | None = None


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj, default=str), status_code=status, media_type="application/json")


def _error(status: int, message: str, code: str, param: str | None = None) -> Response:
    return _json({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}, status)


class _Late:
    """Resolves board / store / policy per call from ``app.state`` when the router is built before
    the app's lifespan has created them."""

    def __init__(self, state: Any, name: str) -> None:
        self._state, self._name = state, name

    def get(self) -> Any:
        if self._name == "board":
            board = getattr(getattr(self._state, "policy", None), "board", None)
            if board is None:
                raise HTTPException(503, "The risk policy is not running (policy.enabled is false or detection is off).")
            return board
        return getattr(self._state, self._name, None)


def build_router(board: RiskBoard | None = None, store: Any = None, *, policy: Any = None, state: Any = None,
                 dependencies: Sequence[Any] = (), verified_tier: str | None = "verified",
                 policy_file: Any = None) -> APIRouter:
    """``dependencies``: e.g. ``[Depends(require_admin)]`` (the admin token check).
    ``state``: instead of board/store/policy, read ``state.policy`` (a RiskPolicy), ``state.policy.board``
    and ``state.store`` at request time (``app.state``, filled in the lifespan).
    ``verified_tier``: tier an account moves to when verified (None: tier unchanged)."""
    router = APIRouter(dependencies=list(dependencies), tags=["policy"])
    if state is not None:
        return _build(router, _Late(state, "board"), _Late(state, "store"), _Late(state, "policy"), verified_tier, policy_file)

    class _Fixed:
        def __init__(self, v: Any) -> None:
            self.v = v

        def get(self) -> Any:
            return self.v

    if board is None and policy is not None:
        board = policy.board
    if board is None or store is None:
        raise ValueError("build_router needs board and store (or policy and store, or state=app.state)")
    return _build(router, _Fixed(board), _Fixed(store), _Fixed(policy), verified_tier, policy_file)


def _build(router: APIRouter, board_ref: Any, store_ref: Any, policy_ref: Any, verified_tier: str | None,
           policy_file: Any) -> APIRouter:

    @router.get("/policy/flagged")
    async def flagged(min_risk: float | None = Query(None, ge=0.0, le=1.0)) -> Response:
        board = board_ref.get()
        data = board.flagged(min_risk)
        return _json({"object": "list", "threshold": board.threshold, "data": data})

    @router.get("/policy/clusters")
    async def clusters() -> Response:
        board = board_ref.get()
        return _json({"object": "list", "data": [{"cluster": k, **v} for k, v in sorted(board.clusters().items())]})

    @router.post("/policy/accounts/{name}/{action}")
    async def review(name: str, action: str, body: ReviewBody | None = None) -> Response:
        if action not in ACTIONS:
            return _error(404, f"unknown review action {action!r}; use one of {', '.join(ACTIONS)}", "unknown_action", "action")
        body = body or ReviewBody()
        board, store = board_ref.get(), store_ref.get()
        try:
            acc = await run_in_threadpool(apply_review, store, name, action, by=body.by or "admin-api",
                                          note=body.note, board=board, verified_tier=verified_tier)
        except StoreError as exc:
            return _error(404, str(exc), "account_not_found", "name")
        return _json({"account": acc.name, "tier": acc.tier, "action": action, "review": board.review(name).state,
                      "flags": {k: acc.flags.get(k) for k in ("banned", "exempt", "verified") if k in acc.flags}})

    @router.get("/policy/accounts/{name}/explain")
    async def explain(name: str) -> Response:
        board, store = board_ref.get(), store_ref.get()
        last = board.last_decision(name)
        now = board.describe(name)
        if last is None and now["source"] == "none" and now["review"] == "none":
            acc = await run_in_threadpool(store.get_account, name)
            if acc is None:
                return _error(404, f"No account named {name!r}.", "account_not_found", "name")
        return _json({"account": name, "last_decision": last, "now": now, "threshold": board.threshold})

    @router.get("/policy/intel/export")
    async def intel_export(since: float | None = Query(None, description="events at or after (Unix seconds)"),
                           include_prompts: bool = False, include_account_names: bool = False) -> Response:
        """STIX 2.1 bundle of the flagged clusters, from the live board and the store's events."""
        from distillguard.intel.stix import ExportOptions, build_bundle

        board, store = board_ref.get(), store_ref.get()
        opt = ExportOptions(include_prompts=include_prompts, include_account_names=include_account_names)

        def make() -> str:
            return build_bundle(board.verdicts(), store.iter_events(since=since), opt).serialize()

        return Response(await run_in_threadpool(make), media_type="application/json")

    @router.get("/policy/status")
    async def status() -> Response:
        policy = policy_ref.get()
        board = board_ref.get()
        if policy is None:
            return _json({"policy": None})
        cp = policy.compiled
        return _json({
            "threshold": cp.threshold,
            "rules": [r.model_dump() for r in cp.config.rules],
            "default_action": cp.config.default_action,
            "throttle": cp.config.throttle.model_dump(),
            "degrade": cp.config.degrade.model_dump(),
            "indicators": len(cp.indicators),
            "reloads": policy.reloads,
            "reload_error": policy.reload_error,
            "board_last_refresh": board.last_refresh,
            "decisions": [{"action": a, "rule": r, "count": n} for (a, r), n in sorted(policy.counts.items(), key=str)],
        })

    @router.post("/policy/reload")
    async def reload() -> Response:
        policy = policy_ref.get()
        if policy is None:
            return _error(503, "no risk policy is running", "policy_disabled")
        if policy_file is not None:
            ok = await run_in_threadpool(policy.reload_file, policy_file)
        else:
            try:
                await run_in_threadpool(policy.reload)
                ok = True
            except (ValueError, OSError) as exc:
                policy.reload_error, ok = str(exc), False
        if not ok:
            return _error(400, f"reload failed, the current policy stays: {policy.reload_error}", "invalid_policy")
        return _json({"reloaded": True, "reloads": policy.reloads, "indicators": len(policy.compiled.indicators)})

    return router
