"""reseed_repeated: every repeat of a window gets its own keyed draw; generation and detection agree."""

import numpy as np
import pytest

from distillguard.watermark.detect import Detector, prefix_p_values, score_tuples
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.replay import replay
from distillguard.watermark.schemes import SchemeParams, Watermark

from .bigram import sample

KEY = b"test-key-0123456789abcdef"
SKIP = SchemeParams(scheme="gumbel", skip_repeated=True)
RESEED = SchemeParams(scheme="gumbel", skip_repeated=True, reseed_repeated=True)
VOCAB = 60
T = 0.8


def _table(seed=0):
    # few tokens: windows repeat often, which is the case reseeding is for
    return (np.random.default_rng(seed).normal(size=(VOCAB, VOCAB)) * 1.2).astype(np.float32)


def _generate(params, table, prompt, n, seed):
    """Answer ids after ``prompt``, watermarked with ``params`` (None: plain sampling)."""
    return sample(table, params, KEY, prompt, n, seed, T)


def _logits(table, prompt, ans):
    return np.stack([table[t] for t in [prompt[-1], *ans[:-1]]])


def test_seed_contexts_follow_occurrence_counts():
    ids = [5, 6, 5, 7, 5, 6]
    assert Watermark(SKIP, KEY).seed_contexts(ids) == [None, (5,), (6,), None, (7,), None]
    assert Watermark(RESEED, KEY).seed_contexts(ids) == [None, (5,), (6,), (5, -2), (7,), (5, -3)]
    # the prompt's last token keys the first answer position and is never counted as a repeat
    assert Watermark(RESEED, KEY).seed_contexts([5] + ids, start=1) == [None, (5,), (5,), (6,), (5, -2), (7,), (5, -3)]
    with pytest.raises(ValueError, match="reseed_repeated needs skip_repeated"):
        SchemeParams(scheme="gumbel", reseed_repeated=True)


def test_generation_uses_the_draw_detection_replays():
    """Every answer token is the keyed Gumbel-max choice under the context seed_contexts names."""
    table = _table()
    prompt = [3, 4]
    ans = _generate(RESEED, table, prompt, 120, seed=1)
    wm = Watermark(RESEED, KEY)
    ctxs = wm.seed_contexts(prompt[-1:] + ans, start=1)[1:]
    assert sum(len(c) == 2 for c in ctxs) > 40  # most positions are repeats of some window
    for t, ctx in enumerate(ctxs):
        z = table[([prompt[-1]] + ans)[t]].astype(np.float64) / T
        q = np.exp(z - z.max())
        q /= q.sum()
        assert ans[t] == int(np.argmax(np.log(wm.uniform_row(ctx, VOCAB)) / q))


def test_reseeding_gives_more_evidence_and_the_same_first_draws():
    table = _table(1)
    gains, skip_scored, reseed_scored = [], 0, 0
    for seed in range(20):
        ans = _generate(RESEED, table, [1], 60, seed)
        p_reseed = prefix_p_values(Watermark(RESEED, KEY), ans)[-1]
        p_skip = prefix_p_values(Watermark(SKIP, KEY), ans)[-1]
        gains.append(np.log10(p_skip) - np.log10(p_reseed))
        skip_scored += score_tuples(Watermark(SKIP, KEY), ans)[0].sum()
        reseed_scored += score_tuples(Watermark(RESEED, KEY), ans)[0].sum()
    assert reseed_scored > 1.5 * skip_scored
    assert np.median(gains) > 2  # orders of magnitude smaller p-values from the same text
    # first occurrences are keyed exactly as under skip_repeated: skip detection still works
    ans = _generate(RESEED, table, [1], 200, 99)
    assert Detector(SKIP, KeyRing.from_secret(KEY)).detect_ids([ans]).p_value < 1e-3


def test_exact_under_h0_classic_and_replay():
    table = _table(2)
    ps, rs = [], []
    for seed in range(600):
        ans = _generate(None, table, [2], 30, seed)
        ring = KeyRing.from_secret(f"h0-key-{seed:05d}-0123456789")
        ps.append(Detector(RESEED, ring).detect_ids([ans]).p_value)
        rs.append(replay(Watermark(RESEED, ring.current.secret), _logits(table, [2], ans), ans, T, prompt_ids=[2]).p_value)
    for vals in (np.array(ps), np.array(rs)):
        for a in (0.01, 0.05, 0.2):
            assert np.mean(vals <= a) <= a + 3 * np.sqrt(a * (1 - a) / len(vals)), (a, np.mean(vals <= a))
        assert np.mean(vals <= 0.2) > 0.1  # not trivially conservative


def test_replay_with_the_prompt_scores_the_first_position():
    table = _table(3)
    prompt = [8]
    ans = _generate(RESEED, table, prompt, 12, seed=5)
    wm = Watermark(RESEED, KEY)
    with_prompt = replay(wm, _logits(table, prompt, ans), ans, T, prompt_ids=prompt)
    alone = replay(wm, _logits(table, prompt, ans), ans, T)
    assert with_prompt.positions == alone.positions + 1
    assert with_prompt.matches == with_prompt.positions
    assert with_prompt.p_value < alone.p_value
