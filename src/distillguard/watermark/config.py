"""Settings for watermarking (owned by distillguard.watermark).

Scheme defaults: Gumbel-max with a one-token window. Measured on SmolLM2 chat answers
(bench/results/watermark_power.json, small sample, see the file): it reaches p < 1e-5 in a median
of ~38 tokens at no perplexity cost (distortion-free), and its false-positive rate over 115k
unwatermarked text windows matches the nominal rate (bench/results/watermark_fpr.json).
Trade-off: it is deterministic given the prompt, so ``n > 1`` choices and retries of the same
prompt return the same text; set ``scheme = "kgw"`` (keyed green list, gamma/delta) where answer
diversity matters more than quality.
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

    def scheme_params(self):  # -> SchemeParams (import kept local: config stays light)
        from distillguard.watermark.schemes import SchemeParams

        return SchemeParams(
            scheme=self.scheme, gamma=self.gamma, delta=self.delta, context_width=self.context_width,
            self_seeding=self.self_seeding, entropy_threshold=self.entropy_threshold,
        )
