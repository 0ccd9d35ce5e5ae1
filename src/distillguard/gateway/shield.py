"""The parts of the gateway that watch and act, built together for `serve`.

    watermark  WatermarkService: logits processors for watermarked accounts/tiers
    detection  the OnlineDetector in a child process (detect/process.py), fed from the event bus
               by a pump thread, so embedding and scoring never compete with requests for the
               GIL; it writes risk, evidence and clusters to the store's account flags, where
               `accounts show`, the admin API and the policy's RiskBoard (refreshed from the
               store every policy.board_refresh_s) read them
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
    detection: Any = None  # detect.process.DetectionProcess | None
    policy: Any = None  # policy.engine.RiskPolicy | None (None: the gateway's AllowAll)

    @classmethod
    def build(cls, settings: Settings, store: Store, bus: EventBus, config_file: Path | None = None) -> Shield:
        from distillguard.watermark.processors import WatermarkService

        shield = cls(watermark=WatermarkService.from_settings(settings))
        if settings.detect.enabled:
            from distillguard.detect.process import DetectionProcess

            shield.detection = DetectionProcess(settings, bus.subscribe("detect"))
        if settings.policy.enabled:
            from distillguard.policy.wiring import build_policy

            # the detector runs elsewhere: the board learns its risk from the store's flags
            shield.policy = build_policy(settings, store, watermark=shield.watermark, config_file=config_file)
        return shield

    def start(self) -> None:
        if self.detection is not None:
            self.detection.start()

    def stop(self) -> None:
        if self.detection is not None:
            self.detection.stop()
        if self.policy is not None:
            from distillguard.policy.wiring import shutdown_policy

            shutdown_policy(self.policy)

    def processors_for(self, account: str, tier: str, temperature: float, top_p: float) -> list[Any]:
        """The ordinary watermark for this request, if watermarking applies to it."""
        if self.watermark is None or self.watermark.keys is None:
            return []
        return self.watermark.processors_for(account, tier, temperature, top_p)
