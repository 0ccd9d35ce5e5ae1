"""Topic behaviour in prompt-embedding space.

Three per-account statistics, each kept as a bounded running sum so an event costs O(d):

* **concentration**: mean pairwise cosine of the account's prompt embeddings, from the running
  sum of unit vectors (``(|S|^2 - m) / (m(m-1))``), compared with the same quantity in the benign
  reference. A capability sweep stays in one area; people wander.
* **sweep**: a concentrated account whose prompts keep being new (no near-duplicate among the
  recent ones) and whose count of distinct prompts keeps growing is systematically covering an
  area. A business app that sends the same few contexts again and again saturates instead.
* **MMD distance**: the kernel two-sample statistic between the account's prompt distribution and
  a benign reference sample (arXiv 2606.05725 uses MMD this way). With random Fourier features
  for the Gaussian kernel, MMD^2 is the squared distance between feature means, so the account
  keeps one D-vector; the unbiased within-account term uses the running sum of squared norms.
  The noise floor for m samples is estimated from the reference itself (split halves), so small
  accounts do not look far away by chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ReferenceModel:
    """Benign reference sample in embedding space, with the random-feature map for MMD."""

    def __init__(self, ref: np.ndarray, n_features: int = 256, bandwidth: float = 0.8, seed: int = 0) -> None:
        if ref.ndim != 2 or len(ref) < 8:
            raise ValueError(f"the benign reference needs at least 8 embedded prompts (got {len(ref)})")
        rng = np.random.default_rng(seed)
        d = ref.shape[1]
        self.dim = d
        self.W = (rng.standard_normal((d, n_features)) / bandwidth).astype(np.float32)
        self.b = rng.uniform(0, 2 * np.pi, n_features).astype(np.float32)
        self.scale = np.float32(np.sqrt(2.0 / n_features))
        phi = self.features(ref)
        # unbiased ||mu_ref||^2 so the reference's own sampling noise does not bias MMD upwards
        s = phi.sum(axis=0)
        n = len(phi)
        self.mu = s / n
        self.mu_sq = float((s @ s - np.einsum("ij,ij->", phi, phi)) / (n * (n - 1)))
        # second moment of the centred features: Var of the unbiased MMD^2 under H0 for m samples
        # is about 2 tr(C^2) / (m(m-1)) (the cross term vanishes to first order)
        c = phi - self.mu
        cov = (c.T @ c) / (n - 1)
        self.tr_c2 = float(np.sum(cov * cov))
        unit = ref / (np.linalg.norm(ref, axis=1, keepdims=True) + 1e-9)
        su = unit.sum(axis=0)
        self.mean_unit = su / n
        self.concentration = float((su @ su - n) / (n * (n - 1)))
        self.size = n

    def features(self, x: np.ndarray) -> np.ndarray:
        return (self.scale * np.cos(x @ self.W + self.b)).astype(np.float32)

    def null_sd(self, m: int) -> float:
        if m < 2:
            return float("inf")
        return float(np.sqrt(2.0 * self.tr_c2 / (m * (m - 1))))


@dataclass
class TopicState:
    """Bounded per-account embedding statistics (O(d + D + recent) floats)."""

    m: int = 0
    sum_unit: np.ndarray | None = None
    sum_phi: np.ndarray | None = None
    sum_phi_sq: float = 0.0
    novel: int = 0
    #: ring buffer of the last ``recent_max`` embeddings (rows ``[:recent_n]`` are filled)
    recent: np.ndarray | None = None
    recent_n: int = 0
    recent_max: int = 48
    novel_cos: float = 0.92
    #: (m, TopicSignals) of the last computation: statistics change only when m does
    cache: tuple | None = None

    def add(self, x: np.ndarray, phi: np.ndarray) -> bool:
        """Add one unit embedding and its random features; returns whether it was novel (no
        near-duplicate among the last ``recent_max`` prompts)."""
        if self.sum_unit is None:
            self.sum_unit = np.zeros_like(x)
            self.sum_phi = np.zeros_like(phi)
            self.recent = np.empty((self.recent_max, len(x)), dtype=x.dtype)
        is_novel = True
        if self.recent_n:
            is_novel = float(np.max(self.recent[: self.recent_n] @ x)) < self.novel_cos
        self.recent[self.m % self.recent_max] = x
        self.recent_n = min(self.recent_max, self.recent_n + 1)
        self.m += 1
        self.sum_unit += x
        self.sum_phi += phi
        self.sum_phi_sq += float(phi @ phi)
        self.novel += int(is_novel)
        return is_novel

    def merged(self, other: TopicState) -> TopicState:
        out = TopicState(m=self.m + other.m, novel=self.novel + other.novel,
                         sum_phi_sq=self.sum_phi_sq + other.sum_phi_sq)
        for name in ("sum_unit", "sum_phi"):
            a, b = getattr(self, name), getattr(other, name)
            setattr(out, name, a if b is None else b if a is None else a + b)
        return out

    # ---- statistics ----
    def concentration(self) -> float:
        if self.m < 2 or self.sum_unit is None:
            return 0.0
        s = self.sum_unit
        return float((s @ s - self.m) / (self.m * (self.m - 1)))

    def centroid(self) -> np.ndarray | None:
        return None if self.sum_unit is None or self.m == 0 else self.sum_unit / self.m

    def mmd2(self, ref: ReferenceModel) -> float:
        if self.m < 2 or self.sum_phi is None:
            return 0.0
        s = self.sum_phi
        within = (s @ s - self.sum_phi_sq) / (self.m * (self.m - 1))
        return float(within + ref.mu_sq - 2.0 * (s / self.m) @ ref.mu)

    def novelty_rate(self) -> float:
        return self.novel / self.m if self.m else 0.0


@dataclass
class TopicSignals:
    concentration: float
    sweep: float
    mmd: float
    raw_concentration: float
    raw_mmd2: float
    mmd_z: float
    novelty: float = 0.0


#: MMD^2 above the noise floor at which the distance signal saturates (unit-norm MiniLM vectors,
#: bandwidth 0.8: completely different topic areas sit around 0.1-0.3)
MMD_SCALE = 0.08
#: novel *embedded* prompts in a concentrated area before a sweep counts fully. Accounts embed
#: their first 32 prompts and then one in 16, so 32 novel embedded prompts is 32 to a few hundred
#: requests' worth of new content in one area
SWEEP_SATURATION = 32


def topic_signals(state: TopicState, ref: ReferenceModel) -> TopicSignals:
    c = state.concentration()
    # relative to the benign reference: 0 at the reference's spread, 1 at twice its distance to 1
    conc = float(np.clip((c - ref.concentration) / max(1e-6, (1.0 - ref.concentration) * 0.5), 0.0, 1.0))
    mmd2 = state.mmd2(ref)
    sd = ref.null_sd(state.m)
    z = mmd2 / sd if np.isfinite(sd) and sd > 0 else 0.0
    mmd = float(np.clip((mmd2 - 2.0 * sd) / MMD_SCALE, 0.0, 1.0)) if np.isfinite(sd) else 0.0
    sweep = conc * state.novelty_rate() * min(1.0, state.novel / SWEEP_SATURATION)
    return TopicSignals(concentration=conc, sweep=float(sweep), mmd=mmd, raw_concentration=c,
                        raw_mmd2=mmd2, mmd_z=float(z), novelty=state.novelty_rate())
