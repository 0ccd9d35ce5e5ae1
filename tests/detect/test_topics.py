import numpy as np

from distillguard.detect.topics import ReferenceModel, TopicState, topic_signals

D = 32


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _feed(ref: ReferenceModel, xs: np.ndarray) -> TopicState:
    st = TopicState()
    for x, phi in zip(xs, ref.features(xs), strict=True):
        st.add(x, phi)
    return st


def test_reference_like_account_is_close_and_focused_account_is_far():
    rng = np.random.default_rng(0)
    ref = ReferenceModel(_unit(rng.standard_normal((400, D))), n_features=512, bandwidth=0.8, seed=1)
    same = _feed(ref, _unit(rng.standard_normal((80, D))))
    centre = rng.standard_normal(D) * 3
    focused = _feed(ref, _unit(centre + rng.standard_normal((80, D))))
    s_same, s_focus = topic_signals(same, ref), topic_signals(focused, ref)
    assert s_same.mmd == 0.0 and abs(s_same.mmd_z) < 4
    assert s_focus.mmd > 0.5 and s_focus.mmd_z > 10
    assert s_focus.concentration > 0.3 > s_same.concentration


def test_sweep_needs_new_prompts_not_repeats():
    rng = np.random.default_rng(1)
    ref = ReferenceModel(_unit(rng.standard_normal((300, D))), seed=1)
    centre = rng.standard_normal(D)  # one area, prompts within it still distinct (cosine ~0.5)
    sweep = _feed(ref, _unit(centre + rng.standard_normal((120, D))))
    few = _unit(centre + rng.standard_normal((3, D)))
    repeats = _feed(ref, few[rng.integers(0, 3, 120)])
    assert topic_signals(sweep, ref).sweep > 0.3
    assert topic_signals(repeats, ref).sweep < 0.05


def test_state_is_bounded_and_merges():
    rng = np.random.default_rng(2)
    ref = ReferenceModel(_unit(rng.standard_normal((100, D))), seed=1)
    a = _feed(ref, _unit(rng.standard_normal((500, D))))
    assert a.recent_n == a.recent_max and len(a.recent) == a.recent_max
    b = _feed(ref, _unit(rng.standard_normal((50, D))))
    m = a.merged(b)
    assert m.m == 550 and np.allclose(m.sum_unit, a.sum_unit + b.sum_unit)
