"""Schemes and detection on synthetic token ids: no model needed, runs in seconds."""

import numpy as np
import pytest
from scipy import stats

from distillguard.watermark.detect import (
    DetectionInputError,
    Detector,
    p_value,
    prefix_p_values,
    score_tuples,
    z_score_p_value,
)
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.schemes import SchemeParams, Watermark

V = 49152
KEY = b"test-key-0123456789abcdef"
OTHER = b"other-key-0123456789abcdef"
ALL_SCHEMES = [
    SchemeParams(),
    SchemeParams(context_width=3, self_seeding=True),
    SchemeParams(scheme="gumbel"),
    SchemeParams(scheme="gumbel", context_width=2),
]


@pytest.mark.parametrize("params", ALL_SCHEMES, ids=lambda p: f"{p.scheme}-h{p.context_width}-ss{p.self_seeding}")
def test_row_and_scalar_agree(params):
    # generation uses whole rows, detection single entries: they must be the same numbers
    wm = Watermark(params, KEY)
    ctx = [17, 4242, 9][: params.context_width]
    row = wm.uniform_row(ctx, V)
    for t in [0, 1, 5000, 40000, V - 1]:
        assert row[t] == pytest.approx(wm.uniform(ctx, t), abs=0)


@pytest.mark.parametrize("params", ALL_SCHEMES[:3], ids=["kgw", "kgw-self", "gumbel"])
def test_two_instances_make_identical_choices(params):
    rng = np.random.default_rng(0)
    a, b = Watermark(params, KEY).processor(0.7, 0.95), Watermark(params, KEY).processor(0.7, 0.95)
    c = Watermark(params, OTHER).processor(0.7, 0.95)
    differs = 0
    for _ in range(20):
        ids = rng.integers(0, V, size=12)
        logits = rng.normal(size=V).astype(np.float32)
        out_a, out_b, out_c = a(ids, logits.copy()), b(ids, logits.copy()), c(ids, logits.copy())
        np.testing.assert_array_equal(out_a, out_b)
        differs += not np.array_equal(out_a, out_c)
    assert differs >= 18  # another key gives other green lists / other draws


def test_green_lists_depend_on_key_and_context():
    a, b = Watermark(SchemeParams(), KEY), Watermark(SchemeParams(), OTHER)
    ga, gb = a.uniform_row([5], V) < 0.25, b.uniform_row([5], V) < 0.25
    ga2 = a.uniform_row([6], V) < 0.25
    assert abs(ga.mean() - 0.25) < 0.01
    # independent lists overlap at gamma^2
    assert abs((ga & gb).mean() - 0.0625) < 0.006
    assert abs((ga & ga2).mean() - 0.0625) < 0.006


def test_green_fraction_is_gamma_on_random_tokens():
    rng = np.random.default_rng(1)
    wm = Watermark(SchemeParams(gamma=0.25), KEY)
    ids = rng.integers(0, V, size=6000)
    scored, contrib = score_tuples(wm, ids)
    n, g = scored.sum(), contrib.sum()
    assert abs(g / n - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n)


def test_kgw_bias_shifts_green_mass():
    wm = Watermark(SchemeParams(gamma=0.25, delta=2.0), KEY)
    logits = np.zeros(V, dtype=np.float32)
    out = wm.processor()(np.array([1, 2, 3]), logits)
    green = wm.uniform_row([3], V) < 0.25
    assert np.all(out[green] == 2.0) and np.all(out[~green] == 0.0)


def test_gumbel_is_distortion_free_over_keys():
    # over random keys the chosen token follows softmax(logits / T): the scheme does not bias
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], dtype=np.float32)
    temp = 0.7
    p = np.exp(logits.astype(np.float64) / temp)
    p /= p.sum()
    counts = np.zeros(5)
    for k in range(3000):
        proc = Watermark(SchemeParams(scheme="gumbel"), f"key-{k:06d}-padding-xx".encode()).processor(temp)
        out = proc(np.array([7]), logits)
        assert np.isfinite(out).sum() == 1
        counts[int(np.argmax(out))] += 1
    assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-4


def test_gumbel_honours_top_p():
    logits = np.array([5.0, 4.0, 0.0, -1.0, -2.0], dtype=np.float32)
    for k in range(300):
        proc = Watermark(SchemeParams(scheme="gumbel"), f"key-{k:06d}-padding-xx".encode()).processor(1.0, 0.5)
        assert int(np.argmax(proc(np.array([3]), logits))) == 0  # the top token alone has mass >= 0.5


def test_exact_p_value_differs_from_normal_approximation_in_the_tail():
    params = SchemeParams(gamma=0.25)
    n, g = 20, 14
    exact = p_value(params, n, g)
    manual = sum(stats.binom.pmf(k, n, 0.25) for k in range(g, n + 1))
    assert exact == pytest.approx(manual, rel=1e-12)
    approx = z_score_p_value(params, n, g)
    # the z-score claims far more significance than the exact tail on a short text
    assert approx < exact / 10
    gum = SchemeParams(scheme="gumbel")
    assert p_value(gum, 10, 25.0) == pytest.approx(stats.gamma.sf(25.0, 10))


def test_repeated_tuples_are_scored_once():
    wm = Watermark(SchemeParams(), KEY)
    ids = [5, 6] * 50  # only the tuples (5,6) and (6,5) exist
    scored, _ = score_tuples(wm, ids)
    assert scored.sum() == 2
    det = Detector(SchemeParams(), KeyRing.from_secret(KEY))
    assert det.detect_ids([ids]).tokens_scored == 2
    # pooled over texts, a tuple seen in one text is not scored again in another
    assert det.detect_ids([ids, ids, [5, 6, 7]]).tokens_scored == 3


def _watermarked_ids(params, secret, n, rng, vocab=2000):
    """Sample from a flat-ish random model through the processor (strong, fast, synthetic)."""
    proc = Watermark(params, secret).processor(1.0)
    ids = list(rng.integers(0, vocab, size=params.context_width))
    for _ in range(n):
        logits = rng.normal(size=vocab).astype(np.float32) * 2
        out = proc(np.array(ids), logits).astype(np.float64)
        p = np.exp(out - out.max())
        p /= p.sum()
        ids.append(int(rng.choice(vocab, p=p)))
    return ids


@pytest.mark.parametrize("params", [SchemeParams(delta=3.0), SchemeParams(scheme="gumbel")], ids=["kgw", "gumbel"])
def test_watermarked_detected_unwatermarked_and_wrong_key_not(params):
    rng = np.random.default_rng(2)
    ids = _watermarked_ids(params, KEY, 100, rng)
    assert Detector(params, KeyRing.from_secret(KEY)).detect_ids([ids]).p_value < 1e-6
    assert Detector(params, KeyRing.from_secret(OTHER)).detect_ids([ids]).p_value > 1e-3
    plain = list(rng.integers(0, 2000, size=100))
    assert Detector(params, KeyRing.from_secret(KEY)).detect_ids([plain]).p_value > 1e-3


def test_prefix_p_values_decrease_on_watermarked_text():
    params = SchemeParams(delta=4.0)
    ids = _watermarked_ids(params, KEY, 80, np.random.default_rng(3))
    pp = prefix_p_values(Watermark(params, KEY), ids)
    assert pp[-1] < 1e-8 and pp[5] > pp[-1]


SKIP = SchemeParams(scheme="gumbel", skip_repeated=True)


def test_skip_repeated_leaves_repeated_windows_alone():
    """Only the first use of a window inside the answer is watermarked; the prompt's windows don't count."""
    proc = Watermark(SKIP, KEY).processor(1.0)
    logits = np.random.default_rng(5).normal(size=V).astype(np.float32)
    prompt = [7, 8, 9]
    forced = proc(np.array(prompt), logits)  # window (9,) reaches into the prompt: watermarked
    assert np.isfinite(forced).sum() == 1
    # answer so far 3, 9: window (9,) at answer position 2 is the answer's first own use -> marked
    assert np.isfinite(proc(np.array(prompt + [3]), logits)).sum() == 1
    assert np.isfinite(proc(np.array(prompt + [3, 9]), logits)).sum() == 1
    # answer 3, 9, 4, 9: window (9,) comes back -> scores untouched, the engine samples
    assert np.isfinite(proc(np.array(prompt + [3, 9, 4]), logits)).sum() == 1
    assert np.array_equal(proc(np.array(prompt + [3, 9, 4, 9]), logits), logits)
    # a new sequence (engines reuse a request's processors for n choices) starts afresh
    assert np.isfinite(proc(np.array(prompt), logits)).sum() == 1
    # without the option every position is watermarked
    plain = Watermark(SchemeParams(scheme="gumbel"), KEY).processor(1.0)
    for n in range(4):
        plain(np.array(prompt + [3, 9, 4][:n]), logits)
    assert np.isfinite(plain(np.array(prompt + [3, 9, 4, 9]), logits)).sum() == 1


def test_skip_repeated_detection_scores_first_occurrence_of_each_window():
    wm = Watermark(SKIP, KEY)
    ids = [5, 6, 5, 7, 5, 6, 8]
    scored, _ = score_tuples(wm, ids)
    # windows at positions 1..6: 5, 6, 5(again), 7, 5(again), 6(again) -> positions 1, 2, 4 scored
    assert np.flatnonzero(scored).tolist() == [1, 2, 4]
    # plain dedup scores every distinct (window, token): (5,6) (6,5) (5,7) (7,5) (6,8)
    assert score_tuples(Watermark(SchemeParams(scheme="gumbel"), KEY), ids)[0].sum() == 5
    with pytest.raises(ValueError, match="skip_repeated"):
        SchemeParams(skip_repeated=True, self_seeding=True, context_width=2)


def test_skip_repeated_generation_is_detected_and_does_not_loop():
    """A peaked model that invites loops: plain Gumbel h=1 locks into one, skip_repeated does not."""
    rng = np.random.default_rng(6)
    vocab = 50
    table = rng.normal(size=(vocab, vocab)).astype(np.float32) * 4  # next-token logits given the last token

    def generate(params, seed):
        proc = Watermark(params, KEY).processor(1.0)
        r = np.random.default_rng(seed)
        ids = [0]
        for _ in range(200):
            out = proc(np.array(ids), table[ids[-1]]).astype(np.float64)
            p = np.exp(out - out.max())
            ids.append(int(r.choice(vocab, p=p / p.sum())))
        return ids

    looped = generate(SchemeParams(scheme="gumbel"), 1)
    varied = generate(SKIP, 1)
    # a deterministic successor per token: the plain answer ends in a short cycle
    assert len(set(zip(looped[100:], looped[101:]))) < 10
    assert len(set(zip(varied[100:], varied[101:]))) > 30
    assert Detector(SKIP, KeyRing.from_secret(KEY)).detect_ids([varied]).p_value < 1e-4
    assert Detector(SKIP, KeyRing.from_secret(OTHER)).detect_ids([varied]).p_value > 1e-3


@pytest.mark.parametrize(
    "params",
    [SchemeParams(), SchemeParams(context_width=3, self_seeding=True), SchemeParams(scheme="gumbel"), SKIP],
    ids=["kgw", "kgw-selfseed", "gumbel", "gumbel-skip"],
)
def test_p_values_are_uniform_under_h0(params):
    # Zipf-like token frequencies, as in real text: frequent tokens repeat across windows.
    # The guarantee is over text and key, so each text gets its own key here; the false-positive
    # rate of one fixed key over a large corpus is measured in bench/watermark_fpr.py.
    rng = np.random.default_rng(4)
    ps = np.array([
        Detector(params, KeyRing.from_secret(f"h0-key-{i:05d}-0123456789")).detect_ids(
            [np.minimum(rng.zipf(1.3, size=80), 49151)]
        ).p_value
        for i in range(400)
    ])
    if params.scheme == "gumbel":
        assert stats.kstest(ps, "uniform").pvalue > 1e-3
    # discrete tests are conservative: P(p <= a) <= a (plus sampling slack)
    for a in (0.01, 0.05, 0.2):
        assert (ps <= a).mean() <= a + 3 * np.sqrt(a / 400) + 0.005
    assert (ps <= 0.5).mean() > 0.3  # and not degenerate (all ones)


def test_key_rotation_detects_old_keys_with_bonferroni():
    params = SchemeParams(delta=3.0)
    ids = _watermarked_ids(params, KEY, 80, np.random.default_rng(5))
    ring = KeyRing.parse(f"new:{OTHER.decode()}\nold:{KEY.decode()}\n", "test")
    assert ring.current.key_id == "new"
    r = Detector(params, ring).detect_ids([ids])
    single = Detector(params, KeyRing.from_secret(KEY)).detect_ids([ids])
    assert r.key_id == "old" and r.keys_tried == 2
    assert r.p_value == pytest.approx(min(1.0, 2 * single.p_value))


def test_bad_input_messages():
    det = Detector(SchemeParams(context_width=4), KeyRing.from_secret(KEY))
    with pytest.raises(DetectionInputError, match="too short.*context width is 4"):
        det.detect_ids([[1, 2, 3]])
    with pytest.raises(DetectionInputError, match="no tokenizer"):
        det.detect_text("hello")
    with pytest.raises(ValueError, match="gamma"):
        SchemeParams(gamma=1.5)
    with pytest.raises(ValueError, match="unknown watermark scheme"):
        SchemeParams(scheme="nope")  # type: ignore[arg-type]


def test_keyed_draws_are_pinned_across_machines():
    # Served text must stay detectable on any machine and after any upgrade: these numbers come
    # from BLAKE2b + SplitMix64 only (no platform RNG). If this fails, old watermarks are lost.
    from distillguard.watermark.hashing import KeyedHash

    k = KeyedHash(b"golden-key-0123456789")
    assert k.uniform([1, 2, 3], 42) == 0.3898137294982752
    assert k.uniform([49151], 0) == 0.10184799373825282
    assert k.self_seeded_uniform([5, 6, 7], 8) == 0.6601630080258093
