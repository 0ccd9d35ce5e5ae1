"""What the gateway calls: which requests get a watermark, and the processor that applies it.

    service = WatermarkService.from_settings(settings)      # once, at startup
    params.logits_processors += service.processors_for(account, tier, temperature, top_p)
    service.detect_text(text)                                # /admin/watermark/detect
    service.detect_replay(text, messages, temperature)       # ... with "replay": true

Only the current key of the ring watermarks new text; detection tries every key.
"""

from __future__ import annotations

import threading
from pathlib import Path
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
    def __init__(self, config: WatermarkConfig, key_ring: KeyRing | None, tokenizer: Tokenizer | None = None,
                 served_model_path: Path | None = None):
        self.config = config
        self.keys = key_ring
        self._tokenizer = tokenizer
        self._detector: Detector | None = None
        self._served_model_path = served_model_path  # what replay_model = "served" means
        self._replay_model: Any = None
        self._replay_lock = threading.Lock()
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
        engine = getattr(settings, "engine", None)
        served = engine.model_path if engine is not None and engine.kind in ("llamacpp", "hf") else None
        return cls(cfg, ring, tokenizer, served_model_path=served)

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

    def replay_model(self) -> Any:
        """The ScoringModel replay detection uses (loaded once); ReplayUnavailable if none."""
        from distillguard.watermark.entropy import ScoringModel, ScoringModelError

        with self._replay_lock:
            if self._replay_model is None:
                path = self.config.replay_model
                if path is None:
                    raise ReplayUnavailable("replay detection is off on this server (watermark.replay_model is null)")
                if path == "served":
                    from distillguard.models import ModelNotInstalled, smollm2_gguf

                    try:
                        path = str(self._served_model_path or smollm2_gguf())
                    except ModelNotInstalled as exc:
                        raise ReplayUnavailable(str(exc)) from None
                try:
                    model = ScoringModel.load(path)
                    model.check_tokenizer(self.tokenizer)
                except (ScoringModelError, OSError, ValueError) as exc:
                    raise ReplayUnavailable(f"cannot load watermark.replay_model {path!r}: {exc}") from None
                self._replay_model = model
            return self._replay_model

    def detect_replay(self, text: str, prompt: Any, temperature: float, fpr: float | None = None) -> dict[str, Any]:
        """Replay test of one served answer (``replay.py``): the prompt (chat messages or text, or
        None) and the temperature it was served with. Bad input → {"error": ...}."""
        from distillguard.watermark.entropy import ScoringModelError
        from distillguard.watermark.replay import ReplayError, replay_inputs, replay_verdict

        det = self.detector()
        if det.params.scheme != "gumbel":
            return {"error": f"replay is for the 'gumbel' scheme; this server's watermark is {det.params.scheme!r}"}
        try:
            ids = det.encode(text)
            h = det.params.context_width
            if len(ids) <= (0 if prompt else h):
                return {"error": f"text too short: the watermark's context width is {h}, so at least {h + 1} "
                                 "tokens are needed (or send the prompt too)"}
            group = [x for _, x in replay_inputs(self.replay_model(), [(prompt, ids, temperature)])]
            return replay_verdict(det.marks, group, self.config.fpr if fpr is None else fpr)
        except (DetectionInputError, ReplayError, ScoringModelError) as exc:
            return {"error": str(exc)}


class ReplayUnavailable(RuntimeError):
    """This server cannot run replay detection (no model configured or loadable); says why."""
