"""Replay detection (Gumbel-max): exact under H0, far more power than the classic score under H1."""

import numpy as np
import pytest

from distillguard.watermark.detect import prefix_p_values
from distillguard.watermark.replay import MISMATCH_RATE, ReplayError, replay
from distillguard.watermark.schemes import SchemeParams, Watermark

from .bigram import sample

KEY = b"test-key-0123456789abcdef"
OTHER = b"another-key-9876543210fedcba"
SKIP = SchemeParams(scheme="gumbel", skip_repeated=True)
VOCAB = 300
T = 0.7


def _bigram(seed=0):
    """Next-token logits given the last token; a mix of peaked and flat rows, like real text."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(VOCAB, VOCAB)) * 1.5
    for t in np.flatnonzero(rng.random(VOCAB) < 0.5):
        table[t, rng.integers(VOCAB)] += 6.0
    return table.astype(np.float32)


def _generate(table, key, n, seed):
    """Sample n tokens after one random token, watermarked under ``key`` (None: plain sampling)."""
    r = np.random.default_rng(seed)
    first = int(r.integers(VOCAB))
    return [first] + sample(table, SKIP if key else None, key, [first], n, r, T)


def _logits(table, ids):
    # row t predicts ids[t] from ids[t-1]; row 0 has no context
    return np.stack([np.zeros(VOCAB, np.float32)] + [table[a] for a in ids[:-1]])


def test_exact_under_h0():
    table = _bigram()
    wm = Watermark(SKIP, KEY)
    ps, expected, got = [], 0.0, 0
    for seed in range(1500):
        ids = _generate(table, None, 40, seed)
        r = replay(wm, _logits(table, ids), ids, T)
        ps.append(r.p_value)
        got += r.matches
    ps = np.array(ps)
    # a valid (discrete) p-value: P(p <= a) <= a, up to sampling noise (3 sigma)
    for a in (0.01, 0.05, 0.2, 0.5):
        assert np.mean(ps <= a) <= a + 3 * np.sqrt(a * (1 - a) / len(ps)), (a, np.mean(ps <= a))
    # and not trivially conservative: the 5% level is used
    assert np.mean(ps <= 0.05) > 0.02


def test_match_probability_is_the_token_probability_under_h0():
    table = _bigram(1)
    wm = Watermark(SKIP, KEY)
    got, want = 0, 0.0
    for seed in range(400):
        ids = _generate(table, None, 40, seed)
        logits = _logits(table, ids)
        r = replay(wm, logits, ids, T)
        got += r.matches
        seen = set()
        for t in range(1, len(ids)):
            if ids[t - 1] in seen:
                continue
            seen.add(ids[t - 1])
            z = logits[t].astype(np.float64) / T
            q = np.exp(z - z.max())
            q /= q.sum()
            if 0 < q[ids[t]] < 1 - MISMATCH_RATE:  # above it a match is no evidence: not scored
                want += q[ids[t]]
    assert abs(got - want) < 4 * np.sqrt(want), (got, want)


def test_far_more_power_than_the_classic_score():
    table = _bigram(2)
    wm = Watermark(SKIP, KEY)
    gains, rates = [], []
    for seed in range(20):
        ids = _generate(table, KEY, 60, seed)
        r = replay(wm, _logits(table, ids), ids, T)
        rates.append(r.match_rate)
        gains.append(np.log10(prefix_p_values(wm, ids)[-1]) - np.log10(max(r.p_value, 1e-300)))
    assert min(rates) == 1.0  # same model, same temperature: every scored position replays exactly
    assert np.median(gains) > 3, gains  # orders of magnitude smaller p-values


def test_wrong_key_is_not_significant():
    table = _bigram(3)
    ps = []
    for seed in range(200):
        ids = _generate(table, KEY, 50, seed)
        ps.append(replay(Watermark(SKIP, OTHER), _logits(table, ids), ids, T).p_value)
    assert np.mean(np.array(ps) <= 0.01) <= 0.01 + 3 * np.sqrt(0.01 * 0.99 / 200)


def test_prefix_p_values_end_at_the_p_value_and_only_fall_with_matches():
    table = _bigram(4)
    ids = _generate(table, KEY, 50, 0)
    r = replay(Watermark(SKIP, KEY), _logits(table, ids), ids, T)
    assert r.prefix_p_values[-1] == r.p_value
    assert np.all(np.diff(r.prefix_p_values) <= 1e-12)  # all positions match here, so p only falls
    # every scored position matched: p is exactly the product of the matched tokens' probabilities
    assert r.matches == r.positions > 0


def test_mismatches_cost_evidence_but_stay_exact():
    """A detector with the wrong temperature mismatches more: less power, never false alarms."""
    table = _bigram(5)
    wm = Watermark(SKIP, KEY)
    right, wrong = [], []
    for seed in range(10):
        ids = _generate(table, KEY, 60, seed)
        right.append(replay(wm, _logits(table, ids), ids, T).p_value)
        wrong.append(replay(wm, _logits(table, ids), ids, 1.3).p_value)
    assert np.median(np.log10(np.maximum(wrong, 1e-300))) > np.median(np.log10(np.maximum(right, 1e-300)))
    ps = [replay(wm, _logits(table, ids), ids, 1.3).p_value
          for ids in (_generate(table, None, 40, 1000 + s) for s in range(600))]
    assert np.mean(np.array(ps) <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 600)


def test_bad_input():
    table = _bigram()
    ids = _generate(table, KEY, 10, 0)
    with pytest.raises(ReplayError, match="gumbel"):
        replay(Watermark(SchemeParams(), KEY), _logits(table, ids), ids, T)
    with pytest.raises(ReplayError, match="temperature"):
        replay(Watermark(SKIP, KEY), _logits(table, ids), ids, 0.0)
    with pytest.raises(ReplayError, match="mismatch_rate"):
        replay(Watermark(SKIP, KEY), _logits(table, ids), ids, T, mismatch_rate=0.0)
    with pytest.raises(ReplayError, match="rows"):
        replay(Watermark(SKIP, KEY), _logits(table, ids)[:-1], ids, T)


def test_pooled_equals_single_for_one_text_and_dedupes_windows_across_texts():
    from distillguard.watermark.replay import replay_pooled

    table = _bigram(6)
    wm = Watermark(SKIP, KEY)
    ids = _generate(table, KEY, 40, 0)
    single = replay(wm, _logits(table, ids), ids, T)
    assert replay_pooled(wm, [(_logits(table, ids), ids, T)]).p_value == single.p_value
    # the same text twice: its windows are scored once, so the evidence does not double
    twice = replay_pooled(wm, [(_logits(table, ids), ids, T)] * 2)
    assert twice.positions == single.positions and twice.p_value == single.p_value
    # two different watermarked texts pool to more evidence than either
    other = _generate(table, KEY, 40, 1)
    pooled = replay_pooled(wm, [(_logits(table, ids), ids, T), (_logits(table, other), other, T)])
    assert pooled.p_value < single.p_value
    with pytest.raises(ReplayError, match="no texts"):
        replay_pooled(wm, [])
