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

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"scheme": self.scheme, "context_width": self.context_width,
                                "skip_repeated": self.skip_repeated}
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


class _WindowMemory:
    """Which windows this answer has already used (for ``skip_repeated``), from input_ids alone.

    A processor sees prompt + answer so far. Its first call marks where the answer starts; a call
    whose input is not exactly one token longer than the last one starts a new sequence (engines
    may reuse a request's processors for its n choices). Windows that reach into the prompt are
    never remembered: detection cannot see the prompt, so it could not skip them either.
    """

    def __init__(self, h: int):
        self.h = h
        self.start = 0
        self.last_n = -1
        self.seen: set[tuple[int, ...]] = set()

    def repeated(self, input_ids: np.ndarray) -> bool:
        n = len(input_ids)
        if n != self.last_n + 1:
            self.start, self.seen = n, set()
        self.last_n = n
        if n - self.h < self.start:
            return False
        w = tuple(int(x) for x in input_ids[n - self.h : n])
        if w in self.seen:
            return True
        self.seen.add(w)
        return False


class _GreenListProcessor:
    def __init__(self, wm: Watermark, temperature: float):
        self.wm = wm
        self.memory = _WindowMemory(wm.params.context_width) if wm.params.skip_repeated else None
        self.temperature = temperature if temperature > 0 else 1.0
        # Engines divide by the temperature *after* processors run; scaling the bias by T makes
        # delta the logit bias of the distribution actually sampled from (as in the KGW paper
        # and transformers' WatermarkLogitsProcessor), whatever temperature a request uses.
        self.bias = wm.params.delta * self.temperature

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        p = self.wm.params
        if len(input_ids) < p.context_width:
            return logits
        if self.memory is not None and self.memory.repeated(input_ids):
            return logits
        if p.entropy_threshold > 0:
            probs = _softmax(logits, self.temperature)
            nz = probs[probs > 0]
            if float(-(nz * np.log(nz)).sum()) < p.entropy_threshold:
                return logits
        row = self.wm.uniform_row(input_ids[-p.context_width :], logits.shape[-1])
        return np.where(row < p.gamma, logits + np.float32(self.bias), logits).astype(logits.dtype, copy=False)


class _GumbelProcessor:
    def __init__(self, wm: Watermark, temperature: float, top_p: float):
        self.wm = wm
        self.temperature = temperature
        self.top_p = top_p
        self.memory = _WindowMemory(wm.params.context_width) if wm.params.skip_repeated else None

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        h = self.wm.params.context_width
        if self.temperature <= 0:
            choice = int(np.argmax(logits))  # greedy decoding leaves no randomness to key
        elif len(input_ids) < h:
            return logits
        elif self.memory is not None and self.memory.repeated(input_ids):
            return logits  # a window seen before in this answer: the engine samples as usual
        else:
            probs = _softmax(logits, self.temperature)
            if self.top_p < 1.0:
                probs = _top_p(probs, self.top_p)
            u = self.wm.uniform_row(input_ids[-h:], logits.shape[-1])
            with np.errstate(divide="ignore"):
                # argmax u^(1/p) == argmax log(u)/p; p = 0 gives -inf, never chosen
                choice = int(np.argmax(np.where(probs > 0, np.log(u) / probs, -np.inf)))
        out = np.full_like(logits, -np.inf)
        out[choice] = 0.0
        return out
