"""What the gateway calls: which requests get a watermark, and the processor that applies it.

    service = WatermarkService.from_settings(settings)      # once, at startup
    params.logits_processors += service.processors_for(account, tier, temperature, top_p)
    service.detect_text(text)                                # /admin/watermark/detect

Only the current key of the ring watermarks new text; detection tries every key.
"""

from __future__ import annotations

from typing import Any

from distillguard.engines.base import LogitsProcessor
from distillguard.watermark.config import WatermarkConfig
from distillguard.watermark.detect import DetectionInputError, Detector
from distillguard.watermark.keys import KeyRing, load_key_ring
from distillguard.watermark.schemes import Watermark
from distillguard.watermark.tokenizer import Tokenizer, load_tokenizer


def build_processor(
    config: WatermarkConfig,
    key_ring: KeyRing,
    tokenizer_info: Tokenizer | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> LogitsProcessor:
    """A fresh processor under the ring's current key (the tokenizer is not needed to generate)."""
    del tokenizer_info  # kept in the signature: the vocabulary size comes from the logits row
    return Watermark(config.scheme_params(), key_ring.current.secret, config.cache_size).processor(
        temperature, top_p
    )


class WatermarkService:
    def __init__(self, config: WatermarkConfig, key_ring: KeyRing | None, tokenizer: Tokenizer | None = None):
        self.config = config
        self.keys = key_ring
        self._tokenizer = tokenizer
        self._detector: Detector | None = None
        # one Watermark for the current key, shared by all requests so its row cache is warm
        self._mark = (
            Watermark(config.scheme_params(), key_ring.current.secret, config.cache_size)
            if key_ring is not None
            else None
        )

    @classmethod
    def from_settings(cls, settings: Any, tokenizer: Tokenizer | None = None) -> WatermarkService:
        """``settings`` is the project Settings (or a WatermarkConfig). Keys load only if enabled
        or configured, so a server without watermarking needs no key."""
        cfg: WatermarkConfig = getattr(settings, "watermark", settings)
        ring = None
        if cfg.enabled or cfg.key_file:
            ring = load_key_ring(cfg.key_file, cfg.key_env)
        return cls(cfg, ring, tokenizer)

    def applies_to(self, account: str, tier: str) -> bool:
        c = self.config
        if not c.enabled or self._mark is None or account in c.exempt_accounts:
            return False
        return account in c.accounts or not c.tiers or tier in c.tiers

    def processors_for(
        self, account: str, tier: str, temperature: float = 1.0, top_p: float = 1.0
    ) -> list[LogitsProcessor]:
        if not self.applies_to(account, tier):
            return []
        assert self._mark is not None
        return [self._mark.processor(temperature, top_p)]

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.tokenizer_path)
        return self._tokenizer

    def detector(self) -> Detector:
        if self.keys is None:
            from distillguard.watermark.keys import WatermarkKeyError

            raise WatermarkKeyError("no watermark key configured: set watermark.key_file or watermark.key_env")
        if self._detector is None:
            self._detector = Detector(self.config.scheme_params(), self.keys, self.tokenizer)
        return self._detector

    def detect_text(self, text: str, fpr: float | None = None) -> dict[str, Any]:
        """JSON-ready result for /admin/watermark/detect. Bad input → {"error": ...} (answer 400)."""
        try:
            return self.detector().detect_text(text, self.config.fpr if fpr is None else fpr).to_dict()
        except DetectionInputError as exc:
            return {"error": str(exc)}
