"""Settings for detection (owned by distillguard.detect).

Defaults are the recommended operating point; the threshold itself is not a setting to hand-tune:
it comes from ``distillguard detect calibrate`` on benign traffic (``threshold_file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RiskWeights(BaseModel):
    """How much each signal family moves the risk. Set from what each signal means (intent beats
    automation beats topic shape), not fitted to attack labels; the threshold is calibrated on
    benign traffic only. Frozen: the risk model caches the weights table per object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reasoning_elicitation: float = 0.8
    data_generation: float = 0.8
    harvesting: float = 1.0
    template_reuse: float = 0.8
    fixed_system_prompt: float = 0.3
    param_uniformity: float = 0.3
    time_regularity: float = 0.5
    single_turn: float = 0.3
    volume: float = 0.6
    persistence: float = 0.3
    topic_concentration: float = 0.8
    topic_sweep: float = 1.0
    mmd_distance: float = 0.9
    #: bias of the logistic squashing; only the ranking matters, the threshold is calibrated
    bias: float = -4.0


class DetectConfig(BaseModel):
    #: run the online detection worker inside `serve`
    enabled: bool = True
    #: JSON written by `distillguard detect calibrate`; without one, `default_threshold` is used
    threshold_file: Path | None = None
    #: used only when no calibration file exists (an uncalibrated operating point: say so in reports)
    default_threshold: float = 0.9
    #: embed prompts with MiniLM (topic signals). Off only for fast tests; the product keeps it on
    embeddings: bool = True
    #: MiniLM truncation: a prompt's topic is clear from its first 64 tokens, and cost grows with length
    embed_max_seq_length: int = 64
    embed_batch_size: int = 64
    #: torch threads for embedding: one, so the worker never starves the serving path
    embed_threads: int = 1
    #: "auto": bfloat16 where the CPU has native bfloat16 maths (twice as fast, cosine >= 0.998 to
    #: float32), else float32
    embed_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    #: prompts embedded per account: all of the first `embed_full_first`, then one in `embed_every`
    #: (bounded cost per event; the topic statistics are sample means and need no more)
    embed_full_first: int = 32
    embed_every: int = 16
    #: per-account bounded state
    template_slots: int = 16
    example_slots: int = 4
    time_buckets_kept: int = 512
    #: seconds per activity bucket for lock-step timing
    lockstep_bucket_s: float = 600.0
    #: minimum requests before an account's own score may exceed the prior (evidence shrinkage)
    shrinkage_requests: float = 25.0
    #: max_tokens at or above this counts as "maximal" (the harvesting signal)
    max_tokens_maximal: int = 2048
    #: random Fourier features for the streaming MMD estimate
    mmd_features: int = 256
    mmd_bandwidth: float = 0.8
    seed: int = 1234
    #: coordination: recompute account links and clusters every this many events
    link_every_events: int = 2000
    #: an attribute (IP, user agent, system prompt, template) shared by more accounts than this is
    #: common (a cloud NAT, the default SDK) and links nobody
    link_max_shared: int = 60
    link_min_weight: float = 1.6
    #: an account needs this many requests before its centroid/timing can link it
    link_min_requests: int = 8
    #: sybil cohorts (``coordination.CohortTracker``): this many new accounts that start sending one
    #: template with identical parameters and client within ``cohort_gap_s`` of each other are
    #: linked at once (0 turns cohorts off)
    cohort_min_accounts: int = 4
    #: an account is new for its first this many requests
    cohort_young_requests: int = 4
    cohort_gap_s: float = 900.0
    #: every account is new to a detector that just started: no cohorts in its first this many
    #: seconds of traffic (arrival time)
    cohort_warmup_s: float = 6 * 3600.0
    #: a cohort change relinks at once, but at most once per this many events (a relink scores
    #: every pair; a hydra's window would otherwise relink at nearly every one of its requests)
    cohort_relink_every_events: int = 4
    weights: RiskWeights = Field(default_factory=RiskWeights)
    #: worker: events per batch pulled from the bus
    worker_batch: int = 256
