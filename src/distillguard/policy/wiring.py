"""Building the risk policy for a server: ``build_policy`` makes a RiskPolicy with its RiskBoard,
starts the board's refresher (review state and detector risk read from the store's account
flags) and the hot reloader; ``shutdown_policy`` stops both.

Where it is used: ``gateway/shield.py`` builds the policy for ``serve``; the detector runs in a
child process (``detect/process.py``) and reaches the board through the store's flags, so
``serve`` needs no callback. ``chain`` combines DetectionWorker ``on_update`` callbacks for an
embedder that runs the detector in-process (for example ``store_flags_callback(store)`` and
``policy.board.detector_callback()``). The gateway applies a RiskDecision's ``degrade`` plan in
``gateway/openai_routes.py`` (``policy.degrade.cap_request``, ``apply_to_response``,
``StreamDegrader``) and mounts ``policy.admin_routes`` under /admin (``gateway/app.py``).
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
