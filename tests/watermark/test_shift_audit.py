"""The shift audit: a valid p-value under H0, and more power than top-1 reading on a learned tilt."""

import numpy as np
import pytest
import torch

from distillguard.watermark.audit import ShiftSet, TupleSet, chernoff_p_value, shift_tuples
from distillguard.watermark.schemes import SchemeParams

from .bigram import sample

KEY = b"test-key-0123456789abcdef"
RESEED = SchemeParams(scheme="gumbel", skip_repeated=True, reseed_repeated=True)
V = 200
T = 0.7


def _softmax(z, t=1.0):
    z = np.asarray(z, dtype=np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("params", [RESEED, SchemeParams(scheme="kgw", gamma=0.25)], ids=["gumbel", "kgw"])
def test_chernoff_p_value_is_valid_under_h0(params):
    rng = np.random.default_rng(0)
    sset = ShiftSet(1)
    for w in range(40):  # fixed weights, as a suspect and a reference would give; the key varies
        sset.add((w,), np.arange(30), rng.normal(size=30) * rng.random())
    ps = np.array([sset.score(params, f"h0-{i:05d}-0123456789abcdef".encode()).p_value for i in range(1500)])
    for a in (0.01, 0.05, 0.2):
        assert np.mean(ps <= a) <= a + 3 * np.sqrt(a * (1 - a) / len(ps)), (a, np.mean(ps <= a))
    assert np.mean(ps <= 0.2) > 0.02  # conservative (a Chernoff bound), not useless


def test_chernoff_bound_closed_cases():
    gum = SchemeParams(scheme="gumbel")
    assert chernoff_p_value(gum, np.array([1.0, 2.0]), -0.5) == 1.0
    # one Exp(1) term: P(E - 1 >= s) = e^-(s+1) exactly; the bound is (s+1) e^-s, never below it
    for s in (2.0, 5.0, 10.0):
        b = chernoff_p_value(gum, np.array([1.0]), s)
        assert np.exp(-(s + 1)) <= b <= (s + 1) * np.exp(-s) * 1.0001


def _train_bigram(table, texts, lam=0.3):
    """A 'student': the teacher's bigram mixed with the empirical bigram of its training texts."""
    counts = np.full((V, V), 1e-3)
    for ids in texts:
        for a, b in zip(ids[:-1], ids[1:]):
            counts[a, b] += 1
    emp = counts / counts.sum(1, keepdims=True)
    return (1 - lam) * _softmax(table) + lam * emp


def _gen(table, params, n, seed):
    r = np.random.default_rng(seed)
    first = int(r.integers(V))
    return [first] + sample(table, params, KEY, [first], n, r, T)


def _audits(student, table, contexts):
    """(shift p, top-1 reading p) of a bigram student against the teacher, reading ``contexts``."""
    sset, tset = ShiftSet(1), TupleSet(1)
    p_r = _softmax(table)
    for ids in contexts:
        ps = torch.tensor(np.stack([np.zeros(V)] + [student[a] for a in ids[:-1]]), dtype=torch.float32)
        pr = torch.tensor(np.stack([np.zeros(V)] + [p_r[a] for a in ids[:-1]]), dtype=torch.float32)
        shift_tuples(ps, pr, ids, 1, sset, top_k=16)
        for i in range(1, len(ids)):
            tset.add((ids[i - 1], int(student[ids[i - 1]].argmax())))
    return sset.score(RESEED, KEY).p_value, tset.score(RESEED, KEY).p_value


def test_shift_audit_finds_a_weakly_tilted_student_and_not_a_control():
    """A light fine-tune tilts the distribution a little and rarely flips a top-1 prediction: there
    the shift audit sees what top-1 reading misses (here 3% of the student is the training data's
    empirical bigram; at 30% both detect it overwhelmingly)."""
    rng = np.random.default_rng(1)
    table = (rng.normal(size=(V, V)) * 1.5).astype(np.float32)
    wm_texts = [_gen(table, RESEED, 60, s) for s in range(150)]
    plain_texts = [_gen(table, None, 60, 1000 + s) for s in range(150)]
    contexts = [_gen(table, None, 60, 5000 + s) for s in range(60)]  # written without the key
    p_shift, p_top1 = _audits(_train_bigram(table, wm_texts, 0.03), table, contexts)
    assert p_shift < 1e-20 and p_top1 > 1e-4, (p_shift, p_top1)
    c_shift, _ = _audits(_train_bigram(table, plain_texts, 0.03), table, contexts)
    assert c_shift > 1e-3, c_shift
