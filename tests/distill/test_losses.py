import math

import pytest
import torch
import torch.nn.functional as F

from distillguard.distill.losses import divergence, kd_loss, tail_bucket, topk_kd_loss


def _logits(seed: int, n: int = 5, v: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2


def test_forward_kl_zero_when_equal_and_positive_otherwise():
    a = _logits(0)
    assert kd_loss(a, a.clone(), "forward_kl").item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(a, _logits(1), "forward_kl").item() > 1e-3


def test_forward_kl_matches_definition():
    s, t = _logits(0), _logits(1)
    pt = F.softmax(t, -1)
    want = (pt * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()
    assert kd_loss(s, t, "forward_kl").item() == pytest.approx(want.item(), rel=1e-5)
    # reverse KL swaps the roles
    assert kd_loss(s, t, "reverse_kl").item() == pytest.approx(kd_loss(t, s, "forward_kl").item(), rel=1e-5)


def test_jsd_symmetric_at_half_and_bounded():
    s, t = _logits(2), _logits(3)
    a = kd_loss(s, t, "jsd", beta=0.5).item()
    b = kd_loss(t, s, "jsd", beta=0.5).item()
    assert a == pytest.approx(b, rel=1e-5)
    assert 0 < a <= math.log(2) + 1e-6
    assert kd_loss(s, t, "jsd", beta=0.1).item() != pytest.approx(kd_loss(t, s, "jsd", beta=0.1).item(), rel=1e-3)
    assert kd_loss(s, s.clone(), "jsd").item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_scales_and_softens():
    s, t = _logits(4), _logits(5)
    hot = kd_loss(s, t, "forward_kl", temperature=4.0)
    # T^2 scaling keeps the loss on the scale of the T=1 loss rather than shrinking ~1/T^2
    assert hot.item() > 0.1 * kd_loss(s, t, "forward_kl").item()


def test_tail_bucket_sums_to_one():
    full = F.log_softmax(_logits(6), -1)
    top = full.topk(3, dim=-1).values
    b = tail_bucket(top)
    assert b.shape == (5, 4)
    assert torch.allclose(b.exp().sum(-1), torch.ones(5), atol=1e-5)
    # padded (invalid) entries carry no mass and the rest still sums to one
    valid = torch.tensor([[True, True, False]] * 5)
    b2 = tail_bucket(top, valid)
    assert torch.allclose(b2.exp().sum(-1), torch.ones(5), atol=1e-5)
    assert torch.all(b2[:, 2].exp() == 0)


def test_topk_loss_zero_when_student_equals_teacher():
    logits = _logits(7)
    full = F.log_softmax(logits, -1)
    top = full.topk(3, dim=-1)
    valid = torch.ones(5, 3, dtype=torch.bool)
    assert topk_kd_loss(logits, top.indices, top.values, valid).item() == pytest.approx(0.0, abs=1e-5)
    assert topk_kd_loss(_logits(8), top.indices, top.values, valid).item() > 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match="same vocabulary"):
        kd_loss(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="beta"):
        divergence(torch.zeros(1, 2), torch.zeros(1, 2), "jsd", beta=1.0)


def test_alignment_pairs_only_after_dropped_layers():
    from distillguard.distill.losses import alignment_pairs

    # the bench student: 0..11 then 27..29 -> only the stream handed to teacher layer 27
    assert alignment_pairs([*range(12), 27, 28, 29], 30) == [(12, 27)]
    # every other layer: every kept layer after the first follows a dropped one
    assert alignment_pairs([0, 2, 4, 6], 8) == [(1, 2), (2, 4), (3, 6)]
    # a dropped first layer: the embeddings feed teacher layer 1
    assert alignment_pairs([1, 2, 5], 6) == [(0, 1), (2, 5)]
    assert alignment_pairs([0, 1, 2], 3) == []
    with pytest.raises(ValueError, match="not increasing"):
        alignment_pairs([3, 1], 4)
    with pytest.raises(ValueError, match="not increasing"):
        alignment_pairs([0, 9], 4)


def test_hidden_alignment_loss_is_cosine_over_real_tokens():
    from distillguard.distill.losses import hidden_alignment_loss

    torch.manual_seed(0)
    t = tuple(torch.randn(2, 5, 8) for _ in range(4))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    s = list(t)
    s[1] = t[3].clone()  # the student's layer-1 input is what the teacher feeds its layer 3
    assert float(hidden_alignment_loss(tuple(s), t, [(1, 3)], mask)) == pytest.approx(0.0, abs=1e-6)
    # scale does not matter (cosine), padding does not count
    s[1] = 7.0 * t[3].clone()
    s[1][0, 3:] = -t[3][0, 3:]
    assert float(hidden_alignment_loss(tuple(s), t, [(1, 3)], mask)) == pytest.approx(0.0, abs=1e-5)
    s[1] = -t[3]
    assert float(hidden_alignment_loss(tuple(s), t, [(1, 3)], mask)) == pytest.approx(2.0, abs=1e-5)
    # the mean over pairs
    s[2] = t[2]
    assert float(hidden_alignment_loss(tuple(s), t, [(1, 3), (2, 2)], mask)) == pytest.approx(1.0, abs=1e-5)
