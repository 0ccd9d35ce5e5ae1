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
