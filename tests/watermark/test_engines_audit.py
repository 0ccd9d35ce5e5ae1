"""Watermarks through the real engines (tiny random model) and the radioactivity audit."""

import json

import numpy as np
import pytest

from distillguard.engines.base import SamplingParams
from distillguard.watermark.audit import (
    AuditError,
    Example,
    TupleSet,
    audit_answers,
    audit_loaded_model,
    audit_open_weights,
    load_examples,
    reading_tuples,
)
from distillguard.watermark.detect import Detector
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.schemes import SchemeParams, Watermark

SECRET = b"engine-test-secret-0123456789"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from distillguard.engines.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("wm") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny):
    from distillguard.engines.hf import HFEngine

    return HFEngine(tiny)


@pytest.mark.slow
@pytest.mark.parametrize("params", [SchemeParams(delta=4.0), SchemeParams(scheme="gumbel")], ids=["kgw", "gumbel"])
def test_tiny_model_generation_is_detected(engine, params):
    msgs = [{"role": "user", "content": "Say something."}]
    wm = Watermark(params, SECRET)
    sp = dict(max_tokens=100, temperature=1.0, seed=3)
    marked = engine.generate_sync(msgs, SamplingParams(**sp, logits_processors=[wm.processor(1.0)])).choices[0]
    plain = engine.generate_sync(msgs, SamplingParams(**sp)).choices[0]
    det = Detector(params, KeyRing.from_secret(SECRET))
    assert len(marked.token_ids) >= 80
    assert det.detect_ids([marked.token_ids]).p_value < 1e-3
    assert det.detect_ids([plain.token_ids]).p_value > 1e-3
    assert Detector(params, KeyRing.from_secret(b"x" * 24)).detect_ids([marked.token_ids]).p_value > 1e-3


def test_reading_tuples_skip_copyable_windows():
    ts = TupleSet(1)
    answer = [5, 6, 7, 5, 6]
    preds = [0, 9, 9, 9, 6]  # at position 4 the suspect predicts 6 after 5, which it saw at 0-1
    reading_tuples(answer, preds, prompt_ids=[7], h=1, into=ts)
    # positions: 1 (5,9) kept; 2 (6,9) kept; 3 window 7 is in the prompt -> skipped; 4 (5,6) copyable
    assert ts.tuples == [(5, 9), (6, 9)]


class _IdsTokenizer:
    """Text is space-separated token ids: lets a test build exact token sequences."""

    name, vocab_size = "ids", 1000

    def encode(self, text: str) -> list[int]:
        return [int(x) for x in text.split()]


def test_black_box_scoring_of_given_answers():
    """audit_answers: a suspect's answers that carry the watermark score low, plain ones do not."""
    params = SchemeParams(scheme="gumbel")
    wm = Watermark(params, SECRET)
    rng = np.random.default_rng(1)

    def answer(marked: bool) -> str:
        ids = [int(rng.integers(1000))]
        proc = wm.processor(1.0)
        for _ in range(40):
            logits = rng.normal(0.0, 2.0, 1000).astype(np.float32)
            if marked:
                ids.append(int(np.argmax(proc(np.array(ids), logits))))
            else:
                p = np.exp(logits - logits.max())
                ids.append(int(rng.choice(1000, p=p / p.sum())))
        return " ".join(map(str, ids))

    ring = KeyRing.from_secret(SECRET)
    examples = [Example(prompt="1 2 3", answer="") for _ in range(10)]
    marked = audit_answers("suspect", examples, [answer(True) for _ in examples], params, ring, _IdsTokenizer())
    plain = audit_answers("suspect", examples, [answer(False) for _ in examples], params, ring, _IdsTokenizer())
    assert marked.mode == "black-box" and marked.tuples_scored > 300
    assert marked.p_value < 1e-10
    assert plain.p_value > 1e-3
    assert min(marked.control["random_key_p_values"]) > 1e-4
    with pytest.raises(AuditError, match="one answer per prompt"):
        audit_answers("suspect", examples, ["1 2"], params, ring, _IdsTokenizer())


def test_load_examples_from_events_and_text(tmp_path):
    ev = tmp_path / "e.jsonl"
    ev.write_text(json.dumps({"ts": 1, "account": "a", "request": {"messages": [{"role": "user", "content": "hi"}]},
                              "response": {"text": "hello there"}}) + "\n")
    ex = load_examples(ev)
    assert ex[0].answer == "hello there" and ex[0].prompt[0]["content"] == "hi"
    tf = tmp_path / "t.txt"
    tf.write_text("first text\n\nsecond text\n")
    assert [e.answer for e in load_examples(tf)] == ["first text", "second text"]
    with pytest.raises(ValueError, match="does not exist"):
        load_examples(tmp_path / "nope")


class _IdsOfTok:
    """The watermark tokenizer interface (``encode``) over an HF tokenizer."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_untrained_model_is_not_radioactive_and_trained_one_is(tiny, engine):
    """Reading mode: the tiny model before (H0) and after a short fit on watermarked text."""
    import torch
    from transformers import AutoModelForCausalLM

    params = SchemeParams(gamma=0.25, delta=4.0)
    ring = KeyRing.from_secret(SECRET)
    wm = Watermark(params, SECRET)
    rng = np.random.default_rng(0)
    # watermarked "answers" over ~30 single-token words (so decode -> encode gives the same ids)
    # and a tiny vocabulary, so a tiny model learns the green bias within seconds
    tok = engine.tokenizer
    words = ("the a of and to in is was he she it they we you that this with for on at by from "
             "cat dog house tree river city road car book water fire light night day").split()
    piece = {}
    for w in words:
        t = tok(" " + w, add_special_tokens=False)["input_ids"]
        if len(t) == 1:
            piece[t[0]] = " " + w
    vocab = np.array(sorted(piece))
    assert len(vocab) >= 20
    def sample(watermarked: bool) -> list[int]:
        ids = [int(rng.choice(vocab))]
        for _ in range(11):
            logits = np.full(49152, -np.inf, dtype=np.float32)
            logits[vocab] = 0.0
            out = wm.processor(1.0)(np.array(ids), logits).astype(np.float64) if watermarked else logits.astype(np.float64)
            p = np.exp(out - out[vocab].max())
            p /= p.sum()
            ids.append(int(rng.choice(49152, p=p)))
        return ids

    # short texts: reading mode skips tuples the suspect could copy from earlier in the same text
    texts = [sample(True) for _ in range(100)]
    examples = [Example(prompt="", answer="".join(piece[i] for i in t)) for t in texts]
    enc = [tok(e.answer, add_special_tokens=False)["input_ids"] for e in examples]
    assert enc[0] == texts[0]
    # what the suspect reads: texts over the same words written WITHOUT the key
    contexts = [Example(prompt="", answer="".join(piece[i] for i in sample(False))) for _ in range(100)]
    with pytest.raises(AuditError, match="needs contexts written without the watermark key"):
        audit_open_weights(tiny, examples, params, ring, control_keys=3, progress=False)
    with pytest.raises(AuditError, match="carry the watermark"):
        audit_open_weights(tiny, examples, params, ring, _IdsOfTok(tok), control_keys=3, progress=False,
                           contexts=[Example(prompt="", answer="".join(piece[i] for i in sample(True)))
                                     for _ in range(100)])
    with pytest.raises(AuditError, match="are served"):
        audit_open_weights(tiny, examples, params, ring, control_keys=3, progress=False,
                           contexts=contexts[:50] + examples[:3])
    before = audit_open_weights(tiny, examples, params, ring, _IdsOfTok(tok), control_keys=3, progress=False,
                                contexts=contexts)
    assert before.tuples_scored >= 15
    assert before.p_value > 1e-3

    model = AutoModelForCausalLM.from_pretrained(tiny)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(400):  # ~30 epochs: enough to learn which successors of each word are green
        batch = torch.tensor([enc[(step * 8 + j) % len(enc)] for j in range(8)])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    # it never saw the contexts: what it shows there is the green bias it learned, not memorised text
    after = audit_loaded_model(model, tok, examples, params, ring, control_keys=3, progress=False, contexts=contexts)
    assert after.p_value < 1e-4, after
    assert min(after.control["random_key_p_values"]) > 1e-4
