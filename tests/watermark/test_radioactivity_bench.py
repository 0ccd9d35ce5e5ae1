"""bench/watermark_radioactivity.py: one training pass with in-place snapshots at N examples.

The bench trains ONE student over the first max(N) answers and audits it after exactly N
examples; that is only honest if the N snapshot is the student a separate run on the first N
answers would give. Checked here on the tiny random model.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from distillguard.engines.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("radio") / "tiny")


def _pairs(n):
    return [(f"Question number {i}: what is {i} plus {i}?", [100 + i, 200 + 2 * i, 300 + (i * 7) % 50], i % 2 == 0)
            for i in range(n)]


@pytest.mark.slow
def test_snapshot_equals_separate_run_on_first_n(tiny):
    import torch
    from watermark_radioactivity import sft

    torch.manual_seed(0)
    snaps, stats = {}, {}

    def keep(model, tok, n, st):
        assert not model.training
        snaps[n] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stats[n] = st

    pairs = _pairs(12)
    full, _, final = sft(tiny, pairs, 1, 1e-3, 2, "cpu", shuffle=False, checkpoints=[4, 12], on_checkpoint=keep)
    assert sorted(snaps) == [4, 12]
    assert stats[4]["examples_seen"] == 4 and stats[4]["steps"] == 2
    assert final["examples_seen"] == 12 and final["steps"] == 6
    # training time excludes the audit callback and accumulates over segments
    assert stats[12]["wall_s"] >= stats[4]["wall_s"]

    separate, _, _ = sft(tiny, pairs[:4], 1, 1e-3, 2, "cpu", shuffle=False)
    sep = separate.state_dict()
    assert all(torch.allclose(snaps[4][k], sep[k], atol=1e-6) for k in sep)
    # and the snapshot after 4 differs from the end of the run (it really is an earlier state)
    assert any(not torch.allclose(snaps[4][k], snaps[12][k]) for k in sep)
    end = full.state_dict()
    assert all(torch.equal(snaps[12][k], end[k]) for k in end)


@pytest.mark.slow
def test_checkpoint_must_be_a_multiple_of_the_batch(tiny):
    from watermark_radioactivity import sft

    with pytest.raises(SystemExit, match="multiple of the batch"):
        sft(tiny, _pairs(6), 1, 1e-3, 4, "cpu", shuffle=False, checkpoints=[6], on_checkpoint=lambda *a: None)


def test_radio_order_restricts_to_subsets():
    """A generation run cut short must leave exactly the first K prompts of the training order."""
    from watermark_common import radio_order

    full = radio_order(list(range(200)))
    assert sorted(full) == list(range(200)) and full != list(range(200))
    sub = [i for i in range(200) if i % 3]
    assert radio_order(sub) == [i for i in full if i % 3]
    assert radio_order(list(reversed(sub))) == radio_order(sub)


def test_kept_layers_drop_every_fifth_or_keep_every_other():
    from watermark_radioactivity import kept_layers

    keep = kept_layers(30, drop_every=5)
    assert len(keep) == 24
    assert sorted(set(range(30)) - set(keep)) == [4, 9, 14, 19, 24, 29]
    assert kept_layers(30) == list(range(0, 30, 2))  # the earlier runs' student: 15 of 30
    assert kept_layers(30, keep_every=3, drop_every=5) == keep  # drop_every wins
    with pytest.raises(SystemExit):
        kept_layers(30, drop_every=1)


@pytest.mark.slow
def test_layer_dropped_student_has_exactly_the_kept_layers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    from watermark_radioactivity import layer_dropped_student

    from distillguard.engines.tiny import make_tiny_model

    src = make_tiny_model(tmp_path / "tiny5", n_layers=5)
    full = AutoModelForCausalLM.from_pretrained(src)
    for kw, keep in (({"drop_every": 5}, [0, 1, 2, 3]), ({"keep_every": 2}, [0, 2, 4])):
        out = layer_dropped_student(src, tmp_path / f"student_{len(keep)}", **kw)
        student = AutoModelForCausalLM.from_pretrained(out)
        assert student.config.num_hidden_layers == len(keep) == len(student.model.layers)
        for new_i, old_i in enumerate(keep):
            a, b = student.model.layers[new_i].state_dict(), full.model.layers[old_i].state_dict()
            assert all(torch.equal(a[k], b[k]) for k in b)
        ids = torch.tensor([[1, 2, 3, 4]])
        assert torch.isfinite(student(input_ids=ids).logits).all()


@pytest.mark.slow
def test_answer_loss_is_the_training_loss_without_the_update(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from watermark_radioactivity import answer_loss, batch_tensors, sft_examples

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    pairs = _pairs(5)
    ids, labels, attn = batch_tensors(sft_examples(tok, pairs), tok.pad_token_id or 0)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attn, labels=labels).loss.item()
    got = answer_loss(model, tok, pairs, "cpu", batch=5)
    assert got["answer_tokens"] == int((labels != -100).sum()) == sum(len(a) + (s and 1) for _, a, s in pairs)
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    # batching does not change the per-token mean
    assert answer_loss(model, tok, pairs, "cpu", batch=2)["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_reading_audits_from_one_read_equal_the_library_audit(tiny):
    """The bench reads the texts once for the plain and the filter-seen audit: same numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from watermark_radioactivity import reading_audits

    import numpy as np

    from distillguard.watermark.audit import Example, _encode_example, audit_loaded_model
    from distillguard.watermark.keys import KeyRing
    from distillguard.watermark.schemes import SchemeParams

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    ring = KeyRing.from_secret(b"bench-test-secret-0123456789")
    contexts = [Example(prompt=[{"role": "user", "content": f"Tell me about topic {i}."}],
                        answer=f"Topic {i} is about the river, the city and the light of day number {i * 7}.")
                for i in range(6)]
    served = [Example(prompt=c.prompt, answer=f"The river of topic {i} runs by the city at night.")
              for i, c in enumerate(contexts)]
    class EveryOther:  # a gate: any object with eligible(prompt_ids, answer_ids) and describe()
        def eligible(self, prompt_ids, answer_ids):
            return np.arange(len(answer_ids)) % 2 == 0

        def describe(self):
            return {"rule": "even positions"}

    gate = EveryOther()
    masks = [gate.eligible(*_encode_example(tok, c)) for c in contexts]
    for params in (SchemeParams(scheme="gumbel", context_width=1, skip_repeated=True),
                   SchemeParams(gamma=0.25, delta=2.0, context_width=2)):
        res, filt, gated = reading_audits(model, tok, contexts, served, params, ring, "tiny", None, 2,
                                          filter_seen=True, masks=masks)
        for got, fs, g in ((res, False, None), (filt, True, None), (gated, False, gate)):
            want = audit_loaded_model(model, tok, served, params, ring, control_keys=2, progress=False,
                                      filter_seen=fs, contexts=contexts, gate=g)
            assert (got.tuples_scored, got.score, got.p_value) == (want.tuples_scored, want.score, want.p_value)
        # the filter keeps only windows of the served texts; the gate about half the positions
        assert res.tuples_scored >= 10 and 0 < filt.tuples_scored < res.tuples_scored
        assert 0 < gated.tuples_scored < res.tuples_scored
        assert reading_audits(model, tok, contexts, served, params, ring, "tiny", None, 2)[1:] == (None, None)
