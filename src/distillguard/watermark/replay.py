"""Replay detection for Gumbel-max: redo the keyed choice with the model and count the matches.

The served Gumbel-max watermark picks ``argmax_i log(u_i) / q_i`` at each position, with u the
keyed uniforms of the window and q the request's sampling distribution. A key holder who has the
model can redo that choice at every position of a text and see whether the text's token is the
one the key would have picked. This uses the information in the text far better than the
classic score (``-log(1 - u)`` of the chosen token, ``detect.py``):

* Under H0 (text written without the key) the uniforms of a window are independent of the
  text, so by the Gumbel-max trick the replayed choice equals the text's token with probability
  exactly q_t(x_t), the detector's own probability of that token. Distinct windows have
  independent uniforms, so the matches are independent Bernoulli(q_t(x_t)). Each position is
  replayed with the draw generation used there (``Watermark.seed_contexts``: under
  ``skip_repeated`` only first occurrences, with ``reseed_repeated`` every occurrence), and each
  draw is scored once. Given the prompt's last h tokens, the answer's first h positions (whose
  windows reach into the prompt) are scored too.
* Under H1 a position matches whenever the detector's q is close enough to the generator's that
  the argmax does not move: nearly always with the same model, prompt and temperature.

The statistic is the log-likelihood ratio of "H1: each position matches with probability 1 - eps"
against H0, rounded to a grid of ``resolution`` nats: a match adds log((1 - eps) / q_t(x_t)) (a
match on a token the model found unlikely is strong evidence, one on a near-certain token is
none), a mismatch adds log(eps / (1 - q_t(x_t))) (negative: watermarked text rarely mismatches).
eps (``mismatch_rate``) allows for a detector whose q differs a little from the generator's
(other numerics, no prompt, edits). The exact null distribution of this sum of independent
two-valued terms comes from a dynamic program over the integer weights, so the p-value is exact,
not an approximation, whatever model, prompt, temperature or eps the detector uses: those change
the power, never the false-positive rate. When every position matches, p = prod q_t(x_t).
An information bound (bench/watermark_entropy_bound.py) says no distortion-free detector can do
better than the answer's entropy allows; this one spends -log q_t nats per matched token, which
is what the entropy is made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.watermark.schemes import Watermark, _softmax, _top_p

#: nats per unit of integer weight in the statistic (finer = closer to the likelihood ratio)
RESOLUTION = 0.05
#: a match on a token of probability below e^-30 counts as 30 nats (keeps the DP array small)
MAX_WEIGHT_NATS = 30.0
#: default eps: the share of positions of watermarked text that H1 expects not to replay
#: (chosen on the tuning split of bench/watermark_replay_power.py)
MISMATCH_RATE = 0.05


class ReplayError(ValueError):
    """Replay detection cannot run on this input; the message says what to fix."""


@dataclass
class ReplayResult:
    positions: int  # positions scored (first occurrence of a window, 0 < q_t(x_t) < 1)
    matches: int  # of those, where the replayed keyed choice is the text's token
    score: float  # the log-likelihood ratio statistic, in nats (grid-rounded)
    p_value: float  # exact under H0
    prefix_p_values: np.ndarray  # p after each answer position (for "tokens needed")

    @property
    def match_rate(self) -> float:
        return self.matches / self.positions if self.positions else 0.0


def _check(wm: Watermark, temperature: float, mismatch_rate: float) -> None:
    if wm.params.scheme != "gumbel":
        raise ReplayError(f"replay detection is for the 'gumbel' scheme; this watermark is {wm.params.scheme!r}")
    if not 0.0 < mismatch_rate < 1.0:
        raise ReplayError(f"mismatch_rate must be in (0, 1), got {mismatch_rate}")
    if temperature <= 0:
        raise ReplayError("replay needs the sampling temperature (> 0): greedy answers carry no watermark")


@dataclass
class _Term:
    pos: int  # answer position
    step: int  # match value minus mismatch value, grid units (> 0)
    miss: int  # mismatch value, grid units
    q: float  # the detector's probability of the text's token: P(match) under H0
    matched: bool


def _terms(
    wm: Watermark, logits: np.ndarray, ids: list[int], temperature: float, top_p: float,
    eligible: Sequence[bool] | None, resolution: float, mismatch_rate: float, seen: set[tuple[int, ...]],
    prompt_ids: Sequence[int] | None = None,
) -> list[_Term]:
    """The scored positions of one text; ``seen`` holds draws already used (shared when pooling)."""
    if logits.shape[0] != len(ids):
        raise ReplayError(f"{logits.shape[0]} logit rows for {len(ids)} answer tokens")
    h = wm.params.context_width
    tail = [int(x) for x in prompt_ids[-h:]] if prompt_ids else []
    contexts = wm.seed_contexts(tail + ids, start=len(tail))[len(tail):]
    vocab = logits.shape[-1]
    out: list[_Term] = []
    for t, ctx in enumerate(contexts):
        if ctx is None or ctx in seen:
            continue
        seen.add(ctx)
        if eligible is not None and not eligible[t]:
            continue
        q = _softmax(logits[t], temperature)
        if top_p < 1.0:
            q = _top_p(q, top_p)
        qx = float(q[ids[t]])
        if not 0.0 < qx < 1.0:
            continue  # impossible or certain under the detector's q: no information either way
        u = wm.uniform_row(ctx, vocab)
        with np.errstate(divide="ignore"):
            choice = int(np.argmax(np.where(q > 0, np.log(u) / q, -np.inf)))
        lq = min(-np.log(qx), MAX_WEIGHT_NATS)
        hit = int(round((lq + np.log1p(-mismatch_rate)) / resolution))
        miss = int(round((np.log(mismatch_rate) - np.log1p(-qx)) / resolution))
        if hit <= miss:
            continue  # a match would not count as more evidence than a mismatch: uninformative
        out.append(_Term(t, hit - miss, miss, qx, choice == ids[t]))
    return out


def _tails(terms: list[_Term]) -> list[float]:
    """Exact P(S >= observed) under H0 after each term, by dynamic programming.

    Each term is miss + step * match, so S - sum(miss) is a sum of nonnegative integer steps,
    each taken with probability q: dist[s] = P(shifted S = s).
    """
    dist = np.zeros(sum(t.step for t in terms) + 1)
    dist[0] = 1.0
    top = s_obs = 0
    out = []
    for term in terms:
        new = np.zeros(top + term.step + 1)
        new[: top + 1] += (1.0 - term.q) * dist[: top + 1]
        new[term.step :] += term.q * dist[: top + 1]
        top += term.step
        dist[: top + 1] = new
        s_obs += term.step if term.matched else 0
        out.append(float(min(1.0, dist[s_obs : top + 1].sum())))
    return out


def _result(terms: list[_Term], tails: list[float], n_tokens: int, resolution: float) -> ReplayResult:
    prefix = np.ones(n_tokens)
    p = 1.0
    j = 0
    for t in range(n_tokens):
        while j < len(terms) and terms[j].pos == t:
            p = tails[j]
            j += 1
        prefix[t] = p
    score = sum(t.miss + (t.step if t.matched else 0) for t in terms) * resolution
    return ReplayResult(len(terms), sum(t.matched for t in terms), score, tails[-1] if tails else 1.0, prefix)


def replay(
    wm: Watermark,
    logits: np.ndarray,
    answer_ids: Sequence[int],
    temperature: float,
    top_p: float = 1.0,
    eligible: Sequence[bool] | None = None,
    resolution: float = RESOLUTION,
    mismatch_rate: float = MISMATCH_RATE,
    prompt_ids: Sequence[int] | None = None,
) -> ReplayResult:
    """Replay test of one answer.

    ``logits``: [len(answer_ids), V], row t the detector's logits for answer position t (from
    the prompt and answer[:t]; ``entropy.ScoringModel.answer_logits``). ``prompt_ids``: the
    prompt as the model saw it (chat template applied); without it the positions before the first
    full window inside the answer are not scored. ``eligible`` optionally restricts the
    positions further (any rule that does not look at the key keeps the test exact).
    """
    _check(wm, temperature, mismatch_rate)
    ids = [int(x) for x in answer_ids]
    terms = _terms(wm, logits, ids, temperature, top_p, eligible, resolution, mismatch_rate, set(), prompt_ids)
    return _result(terms, _tails(terms), len(ids), resolution)


def replay_pooled(
    wm: Watermark,
    texts: Sequence[tuple[np.ndarray, Sequence[int], float] | tuple[np.ndarray, Sequence[int], float, Sequence[int] | None]],
    top_p: float = 1.0,
    resolution: float = RESOLUTION,
    mismatch_rate: float = MISMATCH_RATE,
) -> ReplayResult:
    """One exact test over many texts, each ``(logits, answer ids, temperature[, prompt ids])``.

    A draw is scored once across all texts (a window's uniforms are the same number wherever it
    occurs). ``prefix_p_values`` of the result runs over the texts' positions end to end.
    """
    if not texts:
        raise ReplayError("no texts to test")
    seen: set[tuple[int, ...]] = set()
    terms: list[_Term] = []
    offset = 0
    for logits, answer_ids, temperature, *rest in texts:
        _check(wm, temperature, mismatch_rate)
        ids = [int(x) for x in answer_ids]
        prompt_ids = rest[0] if rest else None
        for term in _terms(wm, logits, ids, temperature, top_p, None, resolution, mismatch_rate, seen, prompt_ids):
            term.pos += offset
            terms.append(term)
        offset += len(ids)
    return _result(terms, _tails(terms), offset, resolution)


# -- what the CLI and the admin endpoint report ------------------------------------------------

#: one text to replay: (prompt messages or text or None, answer token ids, temperature)
ReplayItem = tuple[Any, list[int], float]


def replay_inputs(model: Any, items: Sequence[ReplayItem]) -> list[tuple[int, tuple[np.ndarray, list[int], float, list[int] | None]]]:
    """(index, (logits, answer ids, temperature, prompt ids)) for each item longer than nothing.

    ``model`` is an ``entropy.ScoringModel`` (the served model); the prompt goes through its chat
    template, so the answer's first position is keyed and scored as it was generated.
    """
    out = []
    for i, (prompt, answer_ids, temperature) in enumerate(items):
        if answer_ids:
            pids = model.prompt_ids(prompt)
            out.append((i, (model.answer_logits(pids, answer_ids), answer_ids, temperature, pids or None)))
    return out


def replay_verdict(marks: Sequence[tuple[str, Watermark]], group: Sequence[tuple], fpr: float) -> dict[str, Any]:
    """Pooled replay test of ``group`` (``replay_pooled`` items) under every key; Bonferroni over keys."""
    if not group:
        raise ReplayError("no texts to test")
    best: tuple[str, ReplayResult] | None = None
    for key_id, wm in marks:
        r = replay_pooled(wm, group)
        if best is None or r.p_value < best[1].p_value:
            best = (key_id, r)
    assert best is not None
    key_id, r = best
    p = min(1.0, r.p_value * len(marks))
    return {"detector": "replay", "tokens": sum(len(x[1]) for x in group), "tokens_scored": r.positions,
            "matches": r.matches, "match_rate": r.match_rate, "score": r.score, "p_value": p,
            "p_value_uncorrected": r.p_value, "fpr": fpr, "verdict": "watermarked" if p <= fpr else "not_detected",
            "key_id": key_id if r.positions else None, "keys_tried": len(marks),
            "scheme": marks[0][1].params.describe(), "texts": len(group), "temperature": sorted({x[2] for x in group})}
