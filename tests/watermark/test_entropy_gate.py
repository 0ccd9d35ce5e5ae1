"""Entropy-aware detection: more power where the model had choices, p-values still exact under H0."""

import json
import numpy as np
import pytest
from scipy import stats

from distillguard.watermark.detect import DetectionInputError, Detector, prefix_p_values, score_tuples
from distillguard.watermark.entropy import EntropyGate, ScoringModel, ScoringModelError
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.schemes import SchemeParams, Watermark

KEY = b"test-key-0123456789abcdef"
SKIP = SchemeParams(scheme="gumbel", skip_repeated=True)
VOCAB = 400


def _mixed_model(rng):
    """Next-token logits given the last token: 70% of tokens have a near-certain successor."""
    table = rng.normal(size=(VOCAB, VOCAB)) * 0.5
    peaked = rng.random(VOCAB) < 0.7
    for t in np.flatnonzero(peaked):
        table[t, rng.integers(VOCAB)] += 12.0  # one successor takes ~all the mass
    logp = table - np.logaddexp.reduce(table, axis=1, keepdims=True)
    ent = -(np.exp(logp) * logp).sum(1)
    return table.astype(np.float32), ent, np.exp(logp)


def _generate(table, params, key, n, seed):
    proc = Watermark(params, key).processor(1.0) if params else None
    r = np.random.default_rng(seed)
    ids = [int(r.integers(VOCAB))]
    for _ in range(n):
        logits = table[ids[-1]]
        out = (proc(np.array(ids), logits) if proc else logits).astype(np.float64)
        p = np.exp(out - out.max())
        ids.append(int(r.choice(VOCAB, p=p / p.sum())))
    return ids


def _mask(ids, ent, threshold):
    # position i was produced from the distribution after ids[i-1]; position 0 has no context
    return np.array([False] + [ent[t] >= threshold for t in ids[:-1]])


def _prob_mask(ids, probs, max_prob):
    # the probability the model gave the token actually written (it depends on the token itself)
    return np.array([False] + [probs[a, b] <= max_prob for a, b in zip(ids[:-1], ids[1:])])


def test_gate_gives_more_power_on_watermarked_text():
    rng = np.random.default_rng(0)
    table, ent, probs = _mixed_model(rng)
    wm = Watermark(SKIP, KEY)
    gains, prob_gains = [], []
    for seed in range(10):
        ids = _generate(table, SKIP, KEY, 120, seed)
        plain = prefix_p_values(wm, ids)[-1]
        gains.append(np.log10(plain) - np.log10(prefix_p_values(wm, ids, _mask(ids, ent, 1.0))[-1]))
        prob_gains.append(np.log10(plain) - np.log10(prefix_p_values(wm, ids, _prob_mask(ids, probs, 0.5))[-1]))
    # dropping the near-certain positions removes noise: the gated p-value is much smaller
    assert np.median(gains) > 1.0 and np.median(prob_gains) > 1.0


@pytest.mark.parametrize("kind", ["entropy", "prob"])
def test_gated_p_values_are_uniform_under_h0(kind):
    """The mask depends on the text only, so unwatermarked text still gives uniform p-values."""
    rng = np.random.default_rng(1)
    table, ent, probs = _mixed_model(rng)
    ps, shares = [], []
    for i in range(300):
        ids = _generate(table, None, KEY, 80, 1000 + i)
        det = Detector(SKIP, KeyRing.from_secret(f"h0-key-{i:05d}-0123456789"))
        mask = _mask(ids, ent, 1.0) if kind == "entropy" else _prob_mask(ids, probs, 0.5)
        shares.append(mask.mean())
        ps.append(det.detect_ids([ids], eligible=[mask]).p_value)
    ps = np.array(ps)
    assert 0.05 < np.mean(shares) < 0.95  # the gate really removes some positions and keeps others
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    assert (ps <= 0.05).mean() <= 0.05 + 3 * np.sqrt(0.05 / 300)


def test_mask_only_removes_positions_and_keeps_skip_repeated_windows():
    wm = Watermark(SKIP, KEY)
    ids = [5, 6, 5, 7, 5, 6, 8]
    all_on = np.ones(len(ids), dtype=bool)
    assert np.array_equal(score_tuples(wm, ids, eligible=all_on)[0], score_tuples(wm, ids)[0])
    # position 2 (window 6) masked out: position 4's window (5,) was still used at position 1
    mask = all_on.copy()
    mask[2] = False
    assert np.flatnonzero(score_tuples(wm, ids, eligible=mask)[0]).tolist() == [1, 4]
    with pytest.raises(DetectionInputError, match="eligible mask has 3 entries for 7 tokens"):
        score_tuples(wm, ids, eligible=[True] * 3)
    det = Detector(SKIP, KeyRing.from_secret(KEY))
    with pytest.raises(DetectionInputError, match="1 eligibility masks for 2 texts"):
        det.detect_ids([ids, ids], eligible=[mask])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from distillguard.engines.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def test_scoring_model_entropies_and_windows(tiny):
    model = ScoringModel.load(tiny)
    tok = model.tokenizer
    answer = tok("The quick brown fox jumps over the lazy dog, again and again and again.",
                 add_special_tokens=False)["input_ids"]
    prompt = model.prompt_ids([{"role": "user", "content": "Say something."}])
    assert len(prompt) > 3
    ent = model.entropies(prompt, answer, temperature=1.0)
    assert ent.shape == (len(answer),)
    # random weights: close to uniform over the 49,152-token vocabulary (ln V = 10.8 nats)
    assert np.all(ent > 8.0) and np.all(ent <= np.log(49152) + 1e-6)
    # a lower temperature sharpens every distribution
    assert np.all(model.entropies(prompt, answer, temperature=0.05) < ent)
    # without a prompt the first token has no context: entropy 0, never eligible
    no_prompt = model.entropies([], answer)
    assert no_prompt[0] == 0.0 and np.all(no_prompt[1:] > 8.0)
    # texts longer than the window are read in overlapping windows; every position gets a value,
    # and the first window's positions match a whole read
    model.max_len = 8
    windowed = model.entropies([], answer)
    assert np.all(windowed[1:] > 8.0)
    assert np.allclose(windowed[:8], no_prompt[:8], atol=1e-6)
    model.max_len = 2048
    gate = EntropyGate(model, min_entropy=float(np.median(no_prompt[1:])))
    mask = gate.eligible([], answer)
    assert np.array_equal(mask, no_prompt >= gate.min_entropy) and 0 < mask.sum() < len(answer)
    # the probability of the actual token: near 1/V for random weights, 1 for the context-less first
    _, prob, top = model.position_stats([], answer)
    assert prob[0] == 1.0 and np.all(prob[1:] < 1e-3) and np.all(top >= prob)
    assert not EntropyGate(model, min_entropy=0, max_token_prob=1e-6).eligible([], answer).any()
    assert EntropyGate(model, min_entropy=0, max_token_prob=1.0).eligible([], answer)[1:].all()
    with pytest.raises(ScoringModelError, match="max_token_prob"):
        EntropyGate(model, max_token_prob=0)
    with pytest.raises(ScoringModelError, match="min_entropy"):
        EntropyGate(model, min_entropy=-1)
    with pytest.raises(ScoringModelError, match="does not exist"):
        ScoringModel.load(tiny.parent / "missing")


def _cli(args, stdin=None, tmp_path=None):
    from typer.testing import CliRunner

    from distillguard.cli import app

    keyf = tmp_path / "key"
    keyf.write_text("cli-test-key-0123456789abcdef")
    return CliRunner().invoke(app, ["watermark", "detect", *args, "--key-file", str(keyf)], input=stdin)


def test_cli_detect_with_scoring_model(tiny, tmp_path):
    text = "A plain sentence that was never watermarked, written by a person for this test."
    r = _cli(["-", "--scoring-model", str(tiny), "--min-entropy", "9", "--json"], text, tmp_path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["entropy_gate"]["min_entropy_nats"] == 9.0
    plain = json.loads(_cli(["-", "--json"], text, tmp_path).stdout)
    assert 0 < out["tokens_scored"] <= plain["tokens_scored"]
    # an impossible gate scores nothing: p = 1, not an error
    r = _cli(["-", "--scoring-model", str(tiny), "--min-entropy", "50", "--json"], text, tmp_path)
    assert r.exit_code == 0 and json.loads(r.stdout)["tokens_scored"] == 0
    # events: each response is read after its own prompt, at its own temperature
    ev = tmp_path / "events.jsonl"
    ev.write_text("\n".join(json.dumps({
        "ts": 1.0 + i, "account": "a", "response": {"text": text},
        "request": {"messages": [{"role": "user", "content": f"question {i}"}], "temperature": t}})
        for i, t in enumerate([0.05, 1.0])) + "\n")
    r = _cli([str(ev), "--events", "--scoring-model", str(tiny), "--min-entropy", "9", "--json"], None, tmp_path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    cold, warm = (t["tokens_scored"] for t in out["texts"])
    assert cold == 0 < warm  # at temperature 0.05 nothing has 9 nats of entropy
    # bad input: a one-line message and a non-zero exit
    r = _cli(["-", "--scoring-model", str(tmp_path / "nope")], text, tmp_path)
    assert r.exit_code != 0 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli(["-", "--min-entropy", "1.0"], text, tmp_path)
    assert r.exit_code != 0 and "only apply with --scoring-model" in r.stderr


def _audit_files(tmp_path):
    """A key file, two 'served' texts and two unwatermarked contexts for CLI audits."""
    keyf = tmp_path / "key"
    keyf.write_text("cli-test-key-0123456789abcdef")
    served = tmp_path / "served.txt"
    served.write_text("The river runs by the old city at night.\n\nA dog and a cat sat by the door.\n")
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("The city is old and the river is long.\n\nThe cat sat on the table by the window.\n")
    return keyf, served, ctx


def test_cli_audit_with_reading_gate(tiny, tmp_path):
    """Open-weight audit through the CLI: unwatermarked contexts, the reading gate, and its errors."""
    from typer.testing import CliRunner

    from distillguard.cli import app

    keyf, served, ctx = _audit_files(tmp_path)
    base = ["watermark", "audit", "--suspect", str(tiny), "--texts", str(served), "--contexts", str(ctx),
            "--key-file", str(keyf), "--json"]
    plain = CliRunner().invoke(app, base)
    assert plain.exit_code == 0, plain.output
    r = CliRunner().invoke(app, [*base, "--scoring-model", str(tiny), "--max-top-prob", "0.5"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["control"]["reading_gate"]["max_top_prob"] == 0.5
    # a random model never has a dominant token: the gate keeps every position
    assert out["tuples_scored"] == json.loads(plain.stdout)["tuples_scored"] > 0
    r = CliRunner().invoke(app, [*base, "--scoring-model", str(tiny), "--max-top-prob", "0"])
    assert r.exit_code != 0 and "max_top_prob must be in (0, 1]" in r.stderr


def test_cli_audit_shift(tiny, tmp_path):
    """`watermark audit --shift`: suspect vs reference distributions; a model compared with itself has
    no shift (p = 1); another random model is not radioactive; --shift needs --scoring-model."""
    from typer.testing import CliRunner

    from distillguard.cli import app
    from distillguard.engines.tiny import make_tiny_model

    keyf, served, ctx = _audit_files(tmp_path)
    base = ["watermark", "audit", "--texts", str(served), "--contexts", str(ctx), "--key-file", str(keyf), "--json"]
    same = CliRunner().invoke(app, [*base, "--suspect", str(tiny), "--shift", "--scoring-model", str(tiny)])
    assert same.exit_code == 0, same.output
    out = json.loads(same.stdout)
    assert out["mode"] == "open-weights-shift" and out["p_value"] == 1.0 and out["tuples_scored"] > 100
    other = make_tiny_model(tmp_path / "other", seed=7)
    r = CliRunner().invoke(app, [*base, "--suspect", str(other), "--shift", "--scoring-model", str(tiny)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["p_value"] > 1e-3 and out["verdict"] == "not_detected", out
    r = CliRunner().invoke(app, [*base, "--suspect", str(tiny), "--shift"])
    assert r.exit_code != 0 and "--shift needs --scoring-model" in r.stderr


def test_cli_detect_replay(tiny, tmp_path):
    """`watermark detect --replay`: text the tiny model wrote under the key is found from a few tokens;
    the same text under another key is not; bad combinations fail with one line."""
    import torch

    from distillguard.watermark.config import WatermarkConfig
    from distillguard.watermark.keys import load_key_ring

    keyf = tmp_path / "key"
    keyf.write_text("cli-test-key-0123456789abcdef")
    wm = Watermark(WatermarkConfig().scheme_params(), load_key_ring(keyf, None).keys[0].secret)
    model = ScoringModel.load(tiny)
    proc = wm.processor(0.8)
    ids = model.tokenizer("Once upon a time", add_special_tokens=False)["input_ids"][:2]
    with torch.inference_mode():
        for _ in range(12):
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
            ids.append(int(np.argmax(proc(np.array(ids), logits))))
    r = _cli(["-", "--ids", "--scoring-model", str(tiny), "--temperature", "0.8", "--replay", "--json"],
             json.dumps(ids), tmp_path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    # random weights spread each choice over ~49k tokens: every match is ~10 nats of evidence. The
    # second seed token was not generated under the key: 12 of the 13 scored positions match
    assert out["detector"] == "replay" and out["matches"] == 12 == out["tokens_scored"] - 1, out
    assert out["p_value"] < 1e-20, out
    (tmp_path / "other").write_text("another-key-9876543210fedcba")
    from typer.testing import CliRunner

    from distillguard.cli import app

    r = CliRunner().invoke(app, ["watermark", "detect", "-", "--ids", "--scoring-model", str(tiny), "--temperature",
                                 "0.8", "--replay", "--json", "--key-file", str(tmp_path / "other")], input=json.dumps(ids))
    assert r.exit_code == 0 and json.loads(r.stdout)["p_value"] > 1e-3
    r = _cli(["-", "--replay"], "some text here", tmp_path)
    assert r.exit_code != 0 and "--replay needs --scoring-model" in r.stderr


def test_answer_logits_agree_with_position_stats(tiny):
    """Replay reads the same rows the gate reads, windows included."""
    import torch

    from distillguard.watermark.entropy import next_token_stats

    model = ScoringModel.load(tiny)
    prompt = model.tokenizer("Question: what is the river by the city?", add_special_tokens=False)["input_ids"]
    answer = model.tokenizer(" The old river runs by the city at night and the dog sleeps.", add_special_tokens=False)["input_ids"]
    for max_len in (2048, 8):  # one pass, and overlapping windows
        model.max_len = max_len
        rows = model.answer_logits(prompt, answer)
        ent, prob, top = model.position_stats(prompt, answer, 0.7)
        e2, p2, t2 = next_token_stats(torch.from_numpy(rows), answer, 0.7)
        assert rows.shape[0] == len(answer)
        assert np.allclose(ent, e2, atol=1e-4) and np.allclose(prob, p2, atol=1e-6) and np.allclose(top, t2, atol=1e-6)
    with torch.inference_mode():
        full = model.model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].numpy()
    model.max_len = 2048
    assert np.allclose(model.answer_logits(prompt, answer), full, atol=1e-4)
