"""Settings for watermarking (owned by distillguard.watermark).

Scheme defaults: Gumbel-max with a one-token window; each window's first occurrence in an answer
uses the window's keyed draw and each later occurrence k a draw seeded by (window, k)
(``skip_repeated`` + ``reseed_repeated``). Measured on SmolLM2 chat answers at temperature 0.7:

* plain Gumbel h=1 (199 prompts, watermark_power.json): deterministic given the window, so 106 of
  199 answers fell into loops and 33% never reached p < 1e-5 within 200 tokens;
* ``skip_repeated`` alone (repeats left to the engine's sampler): loops in 10 of 199, but the
  repeats carry no evidence (watermark_power_skip.json; replay detection: median 16 tokens,
  8.6% never, watermark_replay_power.json, session 6);
* with ``reseed_repeated`` (session 7, 220 held-out prompts, watermark_replay_power_reseed.json):
  replay detection median 12 tokens to p < 1e-5 and 5.0% never; model-free detection median 36
  (skip alone: 57.5). Still distortion-free at every position.

The false-positive rate is exact by construction (distinct draws, gamma tail) and matched the
nominal rate over 115k unwatermarked windows (bench/results/watermark_fpr*.json).
Trade-off: the draws are deterministic given the key, so retries of the same prompt start alike;
set ``scheme = "kgw"`` (keyed green list, gamma/delta) where answer diversity matters more than quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class WatermarkConfig(BaseModel):
    #: master switch: no processor is ever built when False
    enabled: bool = False
    #: tiers whose traffic is watermarked; empty = every tier
    tiers: list[str] = Field(default_factory=list)
    #: accounts always watermarked, whatever their tier
    accounts: list[str] = Field(default_factory=list)
    #: accounts never watermarked (e.g. an internal evaluation account)
    exempt_accounts: list[str] = Field(default_factory=list)

    #: "gumbel" (distortion-free Gumbel-max) or "kgw" (keyed green list); both detect without the model
    scheme: Literal["kgw", "gumbel"] = "gumbel"
    #: share of the vocabulary that is green after each window (kgw)
    gamma: float = 0.25
    #: logit bias added to green tokens of the tempered distribution (kgw)
    delta: float = 2.0
    #: tokens before a position that seed its green list / random draw (h)
    context_width: int = 1
    #: seed with min-hash over the window *and* the candidate (Kirchenbauer et al. 2023b SelfHash)
    self_seeding: bool = False
    #: bias only where the model's entropy (nats, at the request temperature) is at least this
    entropy_threshold: float = 0.0
    #: watermark only the first occurrence of each window in an answer (stops Gumbel h=1 loops);
    #: detection must use the same value as generation
    skip_repeated: bool = True
    #: with skip_repeated: watermark a window's k-th repeat too, with a draw seeded by (window, k)
    #: (distortion-free, no loops, every position carries evidence); ignored when skip_repeated is
    #: false (every position then uses its window's draw); detection must use the same value
    reseed_repeated: bool = True

    #: secret file: one key per line, first = current, others = previous keys still detected
    key_file: Path | None = None
    #: environment variable holding the key(s) when no key_file is set
    key_env: str | None = "DISTILLGUARD_WATERMARK_KEY"
    #: verdict threshold for detection (false-positive rate)
    fpr: float = 1e-5
    #: cached green-list rows (one per distinct window) per key
    cache_size: int = 4096
    #: tokenizer used by detection: GGUF file or HF folder; default the served SmolLM2
    tokenizer_path: Path | None = None
    #: model for replay detection on /admin/watermark/detect ("replay": true): "served" (the
    #: engine's model_path, else the packaged SmolLM2), a GGUF file or HF folder, or None (off).
    #: Loaded on the first replay request (float32 in transformers: about 0.6 GB for SmolLM2-135M)
    replay_model: str | None = "served"

    def scheme_params(self):  # -> SchemeParams (import kept local: config stays light)
        from distillguard.watermark.schemes import SchemeParams

        return SchemeParams(
            scheme=self.scheme, gamma=self.gamma, delta=self.delta, context_width=self.context_width,
            self_seeding=self.self_seeding, entropy_threshold=self.entropy_threshold,
            skip_repeated=self.skip_repeated, reseed_repeated=self.reseed_repeated and self.skip_repeated,
        )
