"""Scenario files: who sends what, when, and what the attacker does with it afterwards.

A scenario is a TOML file (see arena/scenarios/*.toml). Personas are described, not coded:
corpus, volume, timing model, multi-turn habits, sampling parameters and evasion. The runner
(arena/runner.py) turns each persona into a plan of timestamped requests and sends them to a live
gateway.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

SCENARIOS_DIR = Path(__file__).parent / "scenarios"

Kind = Literal["searcher", "app", "chatter", "tutor", "maths_sweep", "code_sweep", "generator"]
Timing = Literal["human", "app", "script", "poisson"]
ATTACK_KINDS = {"maths_sweep", "code_sweep", "generator"}


class ScenarioError(ValueError):
    """The scenario file is missing or invalid; the message says what to fix."""


class PersonaSpec(BaseModel):
    #: account name prefix (accounts are <name>-00, <name>-01, ...)
    name: str
    kind: Kind
    #: benign accounts of this persona (ignored for hydras: see `hydra`)
    accounts: int = Field(1, ge=1)
    #: requests each account (or the whole hydra) plans to send
    requests: int = Field(10, ge=1)
    #: "general" | "maths" | "coding" | "instructions" (built-in or ../shared/datasets), or a JSONL path
    corpus: str = "general"
    timing: Timing = "human"
    #: requests per simulated hour for script / poisson timing
    rate_per_hour: float = Field(30.0, gt=0)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, ge=0)
    #: chance that a conversation gets a follow-up turn that carries the answer so far
    followup: float = Field(0.0, ge=0, le=1)
    #: step-by-step reasoning elicitation wrapper (attackers)
    elicit: bool = False
    #: evasion: reword every prompt (fresh framing and elicitation phrase)
    paraphrase: bool = False
    #: evasion: share of requests that are ordinary-looking cover traffic
    cover: float = Field(0.0, ge=0, lt=1)
    #: one operator driving this many accounts in lock-step (0 = a single account)
    hydra: int = Field(0, ge=0)
    #: keys per account, rotated request by request (hydra key rotation)
    keys_per_account: int = Field(1, ge=1)
    tier: str = "standard"
    #: the attacker keeps what it collected and trains a student on it
    collect: bool = False
    #: give up on a request after this many 429s (each honoured with its Retry-After)
    max_retries: int = Field(3, ge=0)

    @property
    def attacker(self) -> bool:
        return self.kind in ATTACK_KINDS

    @model_validator(mode="after")
    def _check(self) -> PersonaSpec:
        if self.hydra and not self.attacker:
            raise ValueError(f"persona {self.name}: hydra is an attacker evasion; kind {self.kind} is benign")
        return self


class DistillPlan(BaseModel):
    """The attacker's student (distill pipeline, sequence-level KD on what it collected)."""

    enabled: bool = True
    #: student layers kept from the teacher (evenly spaced; the student is smaller than the teacher)
    num_layers: int = 15
    max_steps: int = 24
    batch_size: int = 4
    max_length: int = 192
    learning_rate: float = 3e-4
    #: also train a control student on unwatermarked teacher answers to the same prompts
    control: bool = False
    #: held-out prompts for perplexity / ROUGE-L (teacher, student init, students)
    eval_prompts: int = 8
    eval_generate: int = 3
    eval_max_new_tokens: int = 32
    heldout_fraction: float = 0.15


class AuditPlan(BaseModel):
    enabled: bool = True
    #: attacker texts read by the radioactivity audit (open-weight reading mode)
    max_texts: int = 200
    control_keys: int = 3


class Scenario(BaseModel):
    name: str
    description: str = ""
    seed: int = 0
    #: simulated span of the campaign; personas spread their requests over it
    days: float = Field(3.0, gt=0)
    #: "smollm2" (SmolLM2 on llama.cpp, the default model) or "tiny" (random tiny HF model, CI)
    model: Literal["smollm2", "tiny"] = "smollm2"
    #: "auto": ../shared/datasets when present, else the built-in corpora; "builtin" forces them
    corpora: Literal["auto", "builtin"] = "builtin"
    #: requests in flight at once (the engine decodes one at a time; 2 keeps it busy)
    concurrency: int = Field(2, ge=1)
    #: MiniLM topic signals in the detector (off only for CI speed)
    embeddings: bool = True
    #: detector operating threshold for this run (None: the detector's uncalibrated default 0.9);
    #: say where it comes from in `threshold_note` (it must come from benign traffic only)
    detect_threshold: float | None = Field(None, gt=0, lt=1)
    threshold_note: str = ""
    #: the detector relinks accounts every this many events (the worker also relinks when idle)
    link_every_events: int = 50
    #: seconds of real sleep at most per 429 (the simulated clock moves by the full Retry-After)
    max_real_sleep_s: float = 1.0
    #: stop sending once this many seconds of traffic have passed (the rest counts as not sent)
    traffic_budget_s: float = 600.0
    #: llama.cpp decoding threads: on a busy 2-core box one thread is ~5x faster than two
    #: (the second mostly spins at barriers); measured 20-26 vs 4-6 tokens/s at load average 14
    engine_threads: int = Field(1, ge=1)
    #: torch threads for training, evaluation, audits and embeddings in the arena process
    torch_threads: int = Field(1, ge=1)
    #: rate limits of the standard tier (requests per real minute; the limiter runs on the wall clock)
    standard_rpm: int = 60
    personas: list[PersonaSpec]
    distill: DistillPlan = Field(default_factory=DistillPlan)
    audit: AuditPlan = Field(default_factory=AuditPlan)
    #: topic clusters in the report's heatmap
    topics: int = Field(8, ge=2)

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        names = [p.name for p in self.personas]
        if len(set(names)) != len(names):
            raise ValueError("persona names must be unique")
        if not any(p.attacker for p in self.personas) or not any(not p.attacker for p in self.personas):
            raise ValueError("a scenario needs at least one benign and one attacker persona")
        return self


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name (quick, full, ci) or a TOML file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = SCENARIOS_DIR / f"{name_or_path}.toml"
        if not p.is_file():
            raise ScenarioError(f"no built-in scenario {name_or_path!r}; use one of {', '.join(builtin_names())} "
                                "or a path to a .toml file")
    if not p.is_file():
        raise ScenarioError(f"scenario file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario file {p} is not valid TOML: {exc}") from exc
    data.setdefault("name", p.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        raise ScenarioError(f"scenario {p}: invalid {where}: {e['msg']}") from exc
