"""Watermark detection with exact p-values.

For each position past the first h tokens we form the tuple (window, token). A tuple seen before
(in this text, or in any text of a pooled test) is skipped: repeated phrases are not independent
evidence, and counting them is what makes common word pairs look watermarked. The distinct
tuples give n and a score:

* green list: score = green count, p = P[Binomial(n, gamma) >= score]  (scipy binom.sf)
* Gumbel-max: score = sum of -log(1 - u), p = P[Gamma(n, 1) >= score]   (scipy gamma.sf)

Both are exact under H0 (text written without the key), unlike the z-score's normal
approximation, which is badly anti-conservative in the tail for short texts. Entropy-aware
detection (``entropy.py``) passes an ``eligible`` mask per text: only the positions where the
model had a real choice are scored, which needs far fewer tokens and keeps the test exact
because the mask never looks at the key. With several keys
in the ring we test each and multiply the smallest p-value by the number of keys (Bonferroni).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from distillguard.watermark.keys import KeyRing
from distillguard.watermark.schemes import SchemeParams, Watermark
from distillguard.watermark.tokenizer import Tokenizer


class DetectionInputError(ValueError):
    """The text cannot be scored (too short, wrong tokenizer); the message says what to fix."""


@dataclass
class DetectionResult:
    tokens: int  # tokens read
    tokens_scored: int  # distinct (window, token) tuples scored
    score: float  # green count, or the Gumbel score sum
    p_value: float  # corrected for the number of keys tried
    p_value_uncorrected: float
    fpr: float
    verdict: str  # "watermarked" | "not_detected"
    key_id: str | None  # the key with the smallest p-value (None when nothing could be scored)
    keys_tried: int
    scheme: dict[str, object]
    texts: int = 1

    @property
    def detected(self) -> bool:
        return self.verdict == "watermarked"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def p_value(params: SchemeParams, n: int, score: float) -> float:
    """Exact tail probability of ``score`` or more from n distinct tuples under H0."""
    if n <= 0:
        return 1.0
    if params.scheme == "kgw":
        return float(stats.binom.sf(score - 1, n, params.gamma))
    return float(stats.gamma.sf(score, n))


def z_score_p_value(params: SchemeParams, n: int, greens: float) -> float:
    """The usual normal approximation, kept only to show (in tests) how wrong it is in the tail."""
    g = params.gamma
    z = (greens - g * n) / np.sqrt(n * g * (1 - g))
    return float(stats.norm.sf(z))


def score_tuples(
    wm: Watermark, ids: Sequence[int], seen: set[tuple] | None = None,
    eligible: Sequence[bool] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-position (scored?, contribution) for one token sequence; updates ``seen`` in place.

    With ``skip_repeated`` only the first occurrence of each window in this sequence can be
    scored (later ones were generated without the watermark), unless ``reseed_repeated`` gave each
    repeat its own draw (``Watermark.seed_contexts`` says which draw each position used).
    ``eligible`` (one bool per position, from ``entropy.EntropyGate``) restricts scoring to the
    positions it marks; it must be computed from the text alone (never from the key), which keeps
    the p-values exact.
    """
    if eligible is not None and len(eligible) != len(ids):
        raise DetectionInputError(f"eligible mask has {len(eligible)} entries for {len(ids)} tokens")
    seen = set() if seen is None else seen
    n = len(ids)
    scored = np.zeros(n, dtype=bool)
    contrib = np.zeros(n, dtype=np.float64)
    for i, ctx in enumerate(wm.seed_contexts(ids)):
        if ctx is None or (eligible is not None and not eligible[i]):
            continue
        token = int(ids[i])
        key = wm.dedup_key(ctx, token)
        if key in seen:
            continue
        seen.add(key)
        scored[i] = True
        contrib[i] = wm.token_score(ctx, token)
    return scored, contrib


def prefix_p_values(wm: Watermark, ids: Sequence[int], eligible: Sequence[bool] | None = None) -> np.ndarray:
    """p-value after each prefix of ``ids`` (what "tokens needed to reach p < x" is read from)."""
    scored, contrib = score_tuples(wm, ids, eligible=eligible)
    n = np.cumsum(scored)
    s = np.cumsum(contrib)
    if wm.params.scheme == "kgw":
        p = stats.binom.sf(s - 1, n, wm.params.gamma)
    else:
        p = stats.gamma.sf(s, np.maximum(n, 1))
    return np.where(n > 0, p, 1.0)


class Detector:
    """Detects one scheme's watermark under every key of a ring."""

    def __init__(self, params: SchemeParams, keys: KeyRing, tokenizer: Tokenizer | None = None):
        self.params = params
        self.keys = keys
        self.tokenizer = tokenizer
        self.marks = [(k.key_id, Watermark(params, k.secret, cache_size=16)) for k in keys.keys]

    # -- inputs ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise DetectionInputError("this detector has no tokenizer: pass token ids, or build it with one")
        if not isinstance(text, str):
            raise DetectionInputError(f"expected text (a string), got {type(text).__name__}")
        return self.tokenizer.encode(text)

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(x) for x in ids]
        vocab = self.tokenizer.vocab_size if self.tokenizer is not None else None
        if out and (min(out) < 0 or (vocab is not None and max(out) >= vocab)):
            raise DetectionInputError(
                f"token id {max(out) if vocab and max(out) >= vocab else min(out)} is outside this "
                f"tokenizer's vocabulary (0..{(vocab or 0) - 1}): the ids come from another tokenizer; "
                "send the raw text instead"
            )
        return out

    # -- detection ------------------------------------------------------------------
    def detect_ids(
        self, texts: Iterable[Sequence[int]], fpr: float = 1e-5,
        eligible: Sequence[Sequence[bool] | np.ndarray] | None = None,
    ) -> DetectionResult:
        """Pooled test over one or more token sequences; tuples are deduplicated across all.

        ``eligible``: one mask per sequence (entropy-aware detection, see ``entropy.py``).
        """
        seqs = [self.check_ids(t) for t in texts]
        if eligible is not None and len(eligible) != len(seqs):
            raise DetectionInputError(f"{len(eligible)} eligibility masks for {len(seqs)} texts")
        h = self.params.context_width
        total = sum(len(s) for s in seqs)
        if not seqs or all(len(s) <= h for s in seqs):
            raise DetectionInputError(
                f"text too short: {total} token(s), but the watermark's context width is {h}, "
                f"so at least {h + 1} tokens are needed to score anything (a few dozen for a verdict)"
            )
        best: tuple[float, str, int, float] | None = None
        for key_id, wm in self.marks:
            seen: set[tuple] = set()
            n, score = 0, 0.0
            for j, s in enumerate(seqs):
                scored, contrib = score_tuples(wm, s, seen, None if eligible is None else eligible[j])
                n += int(scored.sum())
                score += float(contrib.sum())
            p = p_value(self.params, n, score)
            if best is None or p < best[0]:
                best = (p, key_id, n, score)
        assert best is not None
        p_raw, key_id, n, score = best
        p_corr = min(1.0, p_raw * len(self.marks))
        return DetectionResult(
            tokens=total, tokens_scored=n, score=score, p_value=p_corr, p_value_uncorrected=p_raw,
            fpr=fpr, verdict="watermarked" if p_corr <= fpr else "not_detected",
            key_id=key_id if n > 0 else None, keys_tried=len(self.marks),
            scheme=self.params.describe(), texts=len(seqs),
        )

    def detect_text(self, text: str, fpr: float = 1e-5) -> DetectionResult:
        return self.detect_ids([self.encode(text)], fpr)

    def detect_texts(self, texts: Iterable[str], fpr: float = 1e-5) -> DetectionResult:
        return self.detect_ids([self.encode(t) for t in texts], fpr)
