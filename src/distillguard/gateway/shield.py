"""The parts of the gateway that watch and act, built together for `serve`.

    watermark  WatermarkService: logits processors for watermarked accounts/tiers
    detector   OnlineDetector fed by a DetectionWorker thread from the event bus (never on the
               request path); its risk, evidence and clusters go to the store's account flags
               (for `accounts show`) and to the policy's in-memory RiskBoard
    policy     RiskPolicy deciding allow / throttle / degrade / verify / block per request

Tests and embedders that want a bare gateway pass none of this to ``create_app`` and get the
AllowAll policy; ``serve`` always builds a Shield from the settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.config import Settings
from distillguard.store.base import EventBus, Store

log = logging.getLogger("distillguard.gateway")


@dataclass
class Shield:
    watermark: Any = None  # watermark.processors.WatermarkService | None
    detector: Any = None  # detect.online.OnlineDetector | None
    worker: Any = None  # detect.online.DetectionWorker | None
    policy: Any = None  # policy.engine.RiskPolicy | None (None: the gateway's AllowAll)

    @classmethod
    def build(cls, settings: Settings, store: Store, bus: EventBus, config_file: Path | None = None) -> Shield:
        from distillguard.watermark.processors import WatermarkService

        shield = cls(watermark=WatermarkService.from_settings(settings))
        on_update = None
        if settings.detect.enabled:
            from distillguard.detect.online import DetectionWorker, build_detector, store_flags_callback

            shield.detector = build_detector(settings.detect)
            on_update = store_flags_callback(store)
        if settings.policy.enabled:
            from distillguard.policy.wiring import build_policy, chain

            shield.policy = build_policy(settings, store, detector=shield.detector, watermark=shield.watermark,
                                         config_file=config_file)
            if shield.detector is not None:
                on_update = chain(on_update, shield.policy.board.detector_callback())
        if shield.detector is not None:
            shield.worker = DetectionWorker(shield.detector, bus.subscribe("detect"), on_update=on_update)
        return shield

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.policy is not None:
            from distillguard.policy.wiring import shutdown_policy

            shutdown_policy(self.policy)

    def processors_for(self, account: str, tier: str, temperature: float, top_p: float) -> list[Any]:
        """The ordinary watermark for this request, if watermarking applies to it."""
        if self.watermark is None or self.watermark.keys is None:
            return []
        return self.watermark.processors_for(account, tier, temperature, top_p)
