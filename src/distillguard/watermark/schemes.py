"""Watermark schemes: how generation is nudged, and what detection counts.

Two families, both driven by the keyed uniform ``u(window, token)`` from ``hashing.py`` where the
window is the ``h`` token ids before the position:

* **Green list** (Kirchenbauer et al. 2023, "KGW"): token t is green after a window iff
  ``u < gamma``; generation adds ``delta`` to green logits (of the tempered distribution). Under H0 (text written without the key)
  each distinct (window, token) is green with probability gamma, so the green count of n distinct
  tuples is Binomial(n, gamma). ``self_seeding`` puts the candidate itself into the seed
  (min-hash "SelfHash"). ``entropy_threshold`` > 0 spends the bias only where the model is
  uncertain (SWEET, Lee et al. 2023): low-entropy tokens are left alone, which saves perplexity
  and costs little power because a bias there rarely changes the choice anyway. Detection stays
  model-free: ungated tokens are simply green at the null rate.
* **Gumbel-max** (Aaronson 2022): choose ``argmax_i u_i^(1/p_i)`` where p is the request's own
  sampling distribution (temperature and top-p applied first). Over the key this is an exact
  sample from p, so quality is untouched (distortion-free). The score of a token is
  ``-log(1 - u)``: Exp(1) under H0, so the sum over n distinct tuples is Gamma(n, 1).

``skip_repeated`` (both schemes; SynthID-style repeated-context masking, Dathathri et al. 2024):
only the first occurrence of each window inside an answer is watermarked; when a window comes
back, the processor leaves the scores alone and the engine samples as usual. Why: Gumbel-max is
deterministic given the window, so with a short window, once an answer repeats a phrase the same
argmax comes back after every token and the answer locks into a loop ("New York Giants\n- New
York Giants\n- ..."), which costs quality and, since repeated tuples are scored once, gives no
evidence either (measured on SmolLM2: a third of Gumbel h=1 answers never reached p < 1e-5, most
of them 200-token loops). Detection then scores only the first occurrence of each window in a
text (the positions that were watermarked); under H0 those tuples are still distinct, so the
p-values stay exact.

``reseed_repeated`` (with ``skip_repeated``): instead of leaving a repeated window alone, its k-th
repeat (k >= 1) is watermarked with a fresh keyed draw seeded by (window, k). Each occurrence
still samples exactly from p, so the answer is distortion-free and cannot lock into a loop, and
every position carries evidence: no position is thrown away. First occurrences use the same
draw as ``skip_repeated`` alone, so what a student learns from them (radioactivity) is unchanged.
Why: with h = 1 the repeated windows are the common tokens (" the", ",", " of") and the token
after them is often the most uncertain one, which is exactly where the evidence is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from distillguard.engines.base import LogitsProcessor
from distillguard.watermark.hashing import KeyedHash

SchemeName = Literal["kgw", "gumbel"]


@dataclass(frozen=True)
class SchemeParams:
    """What a watermark is; detection must use the same values generation used."""

    scheme: SchemeName = "kgw"
    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 1
    self_seeding: bool = False
    entropy_threshold: float = 0.0  # nats; 0 = bias every position
    skip_repeated: bool = False  # watermark only the first occurrence of each window in an answer
    reseed_repeated: bool = False  # ...and its later occurrences with a draw seeded by (window, k)

    def __post_init__(self) -> None:
        if self.scheme not in ("kgw", "gumbel"):
            raise ValueError(f"unknown watermark scheme {self.scheme!r}: use 'kgw' or 'gumbel'")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.context_width < 1:
            raise ValueError(f"context_width must be >= 1, got {self.context_width}")
        if self.scheme == "gumbel" and self.self_seeding:
            raise ValueError("self_seeding is only defined for the 'kgw' scheme")
        if self.skip_repeated and self.self_seeding:
            raise ValueError("skip_repeated needs plain window seeding (self_seeding=False)")
        if self.reseed_repeated and not self.skip_repeated:
            raise ValueError("reseed_repeated needs skip_repeated=True (it reseeds the windows skip_repeated skips)")

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"scheme": self.scheme, "context_width": self.context_width,
                                "skip_repeated": self.skip_repeated}
        if self.reseed_repeated:
            d["reseed_repeated"] = True
        if self.scheme == "kgw":
            d.update(gamma=self.gamma, delta=self.delta, self_seeding=self.self_seeding,
                     entropy_threshold=self.entropy_threshold)
        return d


class Watermark:
    """One scheme under one key: per-token uniforms, generation processors, per-token scores."""

    def __init__(self, params: SchemeParams, secret: bytes, cache_size: int = 4096):
        self.params = params
        self.hash = KeyedHash(secret, cache_size=cache_size)

    # -- the keyed draw ----------------------------------------------------------------
    def window(self, ids: Sequence[int], pos: int) -> tuple[int, ...]:
        """The h ids before position ``pos`` (the tuple that seeds its green list)."""
        return tuple(int(x) for x in ids[pos - self.params.context_width : pos])

    def seed_contexts(self, ids: Sequence[int], start: int = 0) -> list[tuple[int, ...] | None]:
        """Per position of ``ids``: the seed context generation drew that token's uniforms from.

        ``None`` where generation left the position alone (a window repeated under
        ``skip_repeated``) or where no full window precedes it. ``ids[:start]`` is the end of the
        prompt (pass its last h tokens to score the answer's first positions; with start = 0 the
        text is read alone, as model-free detection must). The rule is the processors' own
        (``SeedTracker``), so detection and generation cannot disagree.
        """
        arr = np.asarray([int(x) for x in ids], dtype=np.int64)
        tracker = SeedTracker(self.params)
        tracker.begin(start)
        out: list[tuple[int, ...] | None] = [None] * min(start, len(arr))
        for i in range(start, len(arr)):
            out.append(tracker.context(arr[:i]))
        return out

    def uniform(self, window: Sequence[int], token: int) -> float:
        if self.params.self_seeding:
            return self.hash.self_seeded_uniform(window, token)
        return self.hash.uniform(window, token)

    def uniform_row(self, window: Sequence[int], vocab_size: int) -> np.ndarray:
        if self.params.self_seeding:
            return self.hash.self_seeded_row(window, vocab_size)
        return self.hash.uniform_row(window, vocab_size)

    # -- detection side: what one distinct (window, token) contributes -----------------
    def dedup_key(self, window: Sequence[int], token: int) -> tuple:
        """Identity of the random draw behind (window, token): equal keys mean the same number.

        Plain seeding hashes the exact window, so the key is the tuple itself. Self-seeding
        hashes only the minimum of the window's and candidate's id hashes: different windows
        with the same minimum (often the candidate itself) reuse one draw, and scoring them twice
        would count one coin flip as many (measured: 17 false positives in 115k texts at
        p < 1e-5 before this). So those are deduplicated on (anchor, token).
        """
        if not self.params.self_seeding:
            return (*window, token)
        return ("anchor", self.hash.self_seed_anchor(window, token), token)

    def token_score(self, window: Sequence[int], token: int) -> float:
        u = self.uniform(window, token)
        if self.params.scheme == "kgw":
            return 1.0 if u < self.params.gamma else 0.0
        return float(-np.log1p(-u))

    # -- generation side ---------------------------------------------------------------
    def processor(self, temperature: float = 1.0, top_p: float = 1.0) -> LogitsProcessor:
        """A per-request logits processor (numpy signature from engines/base.py).

        Temperature and top-p are needed by the Gumbel scheme (it samples itself) and by the
        entropy gate; the KGW bias is otherwise applied before the engine's own sampling.
        """
        if self.params.scheme == "gumbel":
            return _GumbelProcessor(self, temperature, top_p)
        return _GreenListProcessor(self, temperature)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / max(temperature, 1e-6)
    z -= np.max(z)
    p = np.exp(z)
    return p / p.sum()


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p."""
    # the nucleus almost always sits in the top few hundred ids: sort those, not 49k
    k = min(512, probs.shape[0])
    cand = np.argpartition(-probs, k - 1)[:k] if k < probs.shape[0] else np.arange(k)
    order = cand[np.argsort(-probs[cand], kind="stable")]
    if probs[order].sum() < top_p:
        order = np.argsort(-probs, kind="stable")
    keep = np.cumsum(probs[order]) - probs[order] < top_p
    out = np.zeros_like(probs)
    out[order[keep]] = probs[order[keep]]
    return out


class SeedTracker:
    """The seed context of each position of one answer, read from input_ids alone.

    A processor sees prompt + answer so far. Its first call marks where the answer starts; a call
    whose input is not exactly one token longer than the last one starts a new sequence (engines
    may reuse a request's processors for its n choices). Returns the window itself, except under
    ``skip_repeated``: a window's repeats give ``None`` (leave the scores alone), or with
    ``reseed_repeated`` the context ``(*window, -1 - k)`` for its k-th repeat (the negative id
    keeps it apart from every real window). Windows that reach into the prompt are never counted:
    detection without the prompt could not count them either.
    """

    def __init__(self, params: SchemeParams):
        self.h = params.context_width
        self.skip = params.skip_repeated
        self.reseed = params.reseed_repeated
        self.start = 0
        self.last_n = -1
        self.count: dict[tuple[int, ...], int] = {}

    def begin(self, start: int) -> None:
        """Start a new answer whose first token is at index ``start`` of input_ids."""
        self.start, self.last_n, self.count = start, start - 1, {}

    def context(self, input_ids: np.ndarray) -> tuple[int, ...] | None:
        n = len(input_ids)
        if n != self.last_n + 1:
            self.begin(n)
        self.last_n = n
        if n < self.h:
            return None
        w = tuple(int(x) for x in input_ids[n - self.h : n])
        if not self.skip or n - self.h < self.start:
            return w
        k = self.count.get(w, 0)
        self.count[w] = k + 1
        if k == 0:
            return w
        return (*w, -1 - k) if self.reseed else None


class _GreenListProcessor:
    def __init__(self, wm: Watermark, temperature: float):
        self.wm = wm
        self.tracker = SeedTracker(wm.params)
        self.temperature = temperature if temperature > 0 else 1.0
        # Engines divide by the temperature *after* processors run; scaling the bias by T makes
        # delta the logit bias of the distribution actually sampled from (as in the KGW paper
        # and transformers' WatermarkLogitsProcessor), whatever temperature a request uses.
        self.bias = wm.params.delta * self.temperature

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        p = self.wm.params
        ctx = self.tracker.context(input_ids)
        if ctx is None:
            return logits  # no full window yet, or a repeated window under skip_repeated
        if p.entropy_threshold > 0:
            probs = _softmax(logits, self.temperature)
            nz = probs[probs > 0]
            if float(-(nz * np.log(nz)).sum()) < p.entropy_threshold:
                return logits
        row = self.wm.uniform_row(ctx, logits.shape[-1])
        return np.where(row < p.gamma, logits + np.float32(self.bias), logits).astype(logits.dtype, copy=False)


class _GumbelProcessor:
    def __init__(self, wm: Watermark, temperature: float, top_p: float):
        self.wm = wm
        self.temperature = temperature
        self.top_p = top_p
        self.tracker = SeedTracker(wm.params)

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        ctx = None if self.temperature <= 0 else self.tracker.context(input_ids)
        if self.temperature <= 0:
            choice = int(np.argmax(logits))  # greedy decoding leaves no randomness to key
        elif ctx is None:
            return logits  # no full window yet, or a window repeated under skip_repeated: the engine samples
        else:
            probs = _softmax(logits, self.temperature)
            if self.top_p < 1.0:
                probs = _top_p(probs, self.top_p)
            u = self.wm.uniform_row(ctx, logits.shape[-1])
            with np.errstate(divide="ignore"):
                # argmax u^(1/p) == argmax log(u)/p; p = 0 gives -inf, never chosen
                choice = int(np.argmax(np.where(probs > 0, np.log(u) / probs, -np.inf)))
        out = np.full_like(logits, -np.inf)
        out[choice] = 0.0
        return out
