"""How the risk policy plugs into the gateway (the gateway's files are not this area's; these are
the exact edits, also in the area's report).

config.py (Settings):
    from distillguard.policy.config import PolicyConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

app lifespan / serve, after the store, bus and detector exist:
    from distillguard.policy.wiring import build_policy, chain, shutdown_policy
    policy = build_policy(settings, store, detector=detector, watermark=watermark_service,
                          config_file=config_path)            # starts store refresher + hot reload
    app.state.policy = policy
    worker = DetectionWorker(detector, bus.subscribe("detect"),
                             on_update=chain(store_flags_callback(store), policy.board.detector_callback()))
    ...
    shutdown_policy(policy)

create_app (admin routes; bound late to app.state, so they can be mounted before the lifespan):
    from distillguard.policy.admin_routes import build_router as policy_router
    app.include_router(policy_router(state=app.state, dependencies=[Depends(require_admin)],
                                     policy_file=settings.policy.file), prefix="/admin")

openai_routes.Gateway._serve, replacing `if decision.strip_logprobs or decision.action == "degrade": ...`:
    from distillguard.policy import degrade
    plan = getattr(decision, "degrade", None)
    n = req.n
    if plan is not None:
        try:
            want_logprobs, top_logprobs, n = degrade.cap_request(plan, want_logprobs, top_logprobs, req.n)
        except degrade.LogprobsRefused as exc:
            raise invalid(str(exc), param="logprobs") from None
    elif decision.strip_logprobs:
        want_logprobs, top_logprobs = False, 0
    # ... reserve with `n` and SamplingParams(n=n, ...)
    # watermark: the policy's stronger one replaces the ordinary one, never both
    processors = list(decision.logits_processors) or watermark.processors_for(account, tier, temperature, top_p)

_respond (non-streaming), after building `payload`:
    if plan is not None:
        payload = degrade.apply_to_response(payload, plan, seed=degrade.noise_seed(account, ex.body))

_sse (streaming): once, `sd = degrade.StreamDegrader(plan, seed=degrade.noise_seed(account, ex.body)) if plan else None`;
for every chunk dict `obj` before `_sse_line(obj)`: `obj = sd.process(obj)` and skip it when None;
before the usage chunk / [DONE]: `for c in sd.flush(chat): yield _sse_line({**base, "choices": [c]})`.

cli.py:
    from distillguard.intel.cli import app as intel_app
    app.add_typer(intel_app, name="intel", help="Share distillation threat intelligence (STIX 2.1).")

metrics (optional): a counter labelled (action, rule): `decision.rule` names the policy rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillguard.policy.config import PolicyConfig
from distillguard.policy.engine import RiskPolicy
from distillguard.policy.state import RiskBoard


def build_policy(settings: Any, store: Any, *, detector: Any = None, watermark: Any = None,
                 config_file: Path | str | None = None, start_threads: bool = True) -> RiskPolicy:
    """A RiskPolicy with its board; levels anchored on ``policy.threshold`` or the detector's
    calibrated threshold (else the detection config's default). Starts the store refresher (review
    state from the CLI) and the hot reloader (``policy.file``, else ``config_file``)."""
    cfg: PolicyConfig = getattr(settings, "policy", None) or PolicyConfig()
    if detector is not None:
        thr = float(detector.threshold)
    else:
        det_cfg = getattr(settings, "detect", None)
        thr = float(det_cfg.default_threshold) if det_cfg is not None else 0.9
        if det_cfg is not None and det_cfg.threshold_file is not None:
            from distillguard.detect.reference import load_calibration

            thr = float(load_calibration(det_cfg.threshold_file)["threshold"])
    board = RiskBoard(cfg.threshold or thr, explain_accounts=cfg.explain_accounts)
    policy = RiskPolicy(board, cfg, threshold=thr, watermark=watermark)
    if start_threads:
        if store is not None:
            board.start_refresher(store, cfg.board_refresh_s)
        watched = cfg.file or config_file
        policy.watch(watched, cfg.reload_interval_s)
    return policy


def shutdown_policy(policy: RiskPolicy) -> None:
    policy.stop()
    policy.board.stop_refresher()


def chain(*callbacks: Callable[..., None] | None) -> Callable[..., None]:
    """Several DetectionWorker ``on_update`` callbacks as one (each runs even if another fails)."""
    import logging

    cbs = [c for c in callbacks if c is not None]
    log = logging.getLogger("distillguard.policy")

    def run(detector: Any, changed: set[str]) -> None:
        for cb in cbs:
            try:
                cb(detector, changed)
            except Exception:  # noqa: BLE001 - one consumer failing must not starve the others
                log.exception("detection update callback %r failed", cb)

    return run
