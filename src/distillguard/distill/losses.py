"""Knowledge-distillation losses, over the next-token distributions of answer tokens.

All take log-probabilities over the last dimension and return the mean over tokens.

- forward KL  KL(teacher || student): mode-covering; the classic Hinton / DistilBERT objective.
- reverse KL  KL(student || teacher): mode-seeking (MiniLLM).
- generalised JSD with mixing weight beta (GKD, Agarwal et al. 2024; TRL's ``generalized_jsd_loss``):
  M = beta * P_teacher + (1 - beta) * P_student,
  JSD_beta = beta * KL(P_teacher || M) + (1 - beta) * KL(P_student || M);
  symmetric at beta = 0.5, and it tends to forward / reverse KL (up to scale) at the ends.
- top-k KD: when an API returns only the top-k logprobs, compare the k named tokens plus one
  "tail" bucket holding the rest of the probability mass, for teacher and student alike.
- hidden-state alignment (DistilBERT's cosine loss, TinyBERT's hidden-state loss): for a student
  made of a subset of the teacher's layers, the residual stream entering a kept layer that follows
  dropped ones should look like the stream the teacher feeds that layer. Over every real token,
  prompt included (the hidden states cost nothing extra; only the LM head is per answer token).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["forward_kl", "reverse_kl", "jsd"]


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row; 0 * log 0 counts as 0."""
    p = p_logp.exp()
    return torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p)).sum(-1)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, kind: LossKind, beta: float = 0.5) -> torch.Tensor:
    """Mean divergence between rows of teacher and student log-distributions."""
    if kind == "forward_kl":
        d = kl(teacher_logp, student_logp)
    elif kind == "reverse_kl":
        d = kl(student_logp, teacher_logp)
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1 (got {beta}); use forward_kl or reverse_kl for the ends")
        mix = torch.logsumexp(
            torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0
        )
        d = beta * kl(teacher_logp, mix) + (1.0 - beta) * kl(student_logp, mix)
    else:
        raise ValueError(f"unknown KD loss {kind!r}; use forward_kl, reverse_kl or jsd")
    return d.mean()


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: LossKind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Token-level KD on full logits ([N, V] each, one row per answer token).

    Both distributions are softened by ``temperature``; the loss is scaled by T^2 so its
    gradients keep the same size as T changes (Hinton et al. 2015).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} differ; "
            "teacher and student need the same vocabulary (else use sequence-level KD)"
        )
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return divergence(t, s, kind, beta) * temperature**2


def tail_bucket(top_logp: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[N, k] log-probs of k named tokens -> [N, k+1] log-distribution with the rest as a last bucket.

    ``valid`` marks real entries (rows may have fewer than k); invalid ones get probability 0.
    """
    if valid is not None:
        top_logp = top_logp.masked_fill(~valid, float("-inf"))
    mass = top_logp.exp().sum(-1, keepdim=True).clamp(max=1.0)
    # Rounding in the API's numbers can make the named mass exceed 1 by a hair: keep the tail > 0.
    tail = torch.log1p(-mass.clamp(max=1.0 - 1e-6))
    return torch.cat([top_logp, tail], dim=-1)


def topk_kd_loss(
    student_logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logp: torch.Tensor,
    valid: torch.Tensor,
    kind: LossKind = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """KD from an API's top-k logprobs ([N, k] ids and logprobs; ``valid`` masks padding).

    The student's full distribution is folded the same way: its probabilities of the same k
    tokens, plus everything else in the tail bucket. No temperature: the API's numbers are at T=1.
    """
    s_all = F.log_softmax(student_logits.float(), dim=-1)
    s_top = s_all.gather(-1, top_ids)
    return divergence(tail_bucket(top_logp.float(), valid), tail_bucket(s_top, valid), kind, beta)


def alignment_pairs(kept_layers: list[int], n_teacher: int) -> list[tuple[int, int]]:
    """(student, teacher) indices into transformers' ``hidden_states`` tuples to align.

    Student layer j is teacher layer ``kept_layers[j]``; where layers were dropped just before
    it, its input ``hidden_states[j]`` should match the teacher's ``hidden_states[kept[j]]``.
    Runs of consecutive kept layers need no target inside them: the first layers of
    [0..11, 27, 28, 29] must *change* to do the work of the dropped 12..26, and only the stream
    they hand to layer 27 has a teacher counterpart.
    """
    if not kept_layers:
        raise ValueError("hidden-state alignment needs the student's kept teacher layers")
    if any(not 0 <= k < n_teacher for k in kept_layers) or sorted(set(kept_layers)) != list(kept_layers):
        raise ValueError(f"kept layers {kept_layers} are not increasing indices into the teacher's {n_teacher} layers")
    prev = [-1, *kept_layers[:-1]]  # a dropped first layer: the embeddings feed layer kept[0]
    return [(j, k) for j, (k, p) in enumerate(zip(kept_layers, prev)) if k != p + 1]


def hidden_alignment_loss(student_hidden: tuple, teacher_hidden: tuple, pairs: list[tuple[int, int]],
                          attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student stream, teacher stream) over the pairs and the real tokens.

    Cosine, not MSE: the residual stream's norm grows with depth and a few tokens (the first
    one) carry very large activations that would dominate a squared error.
    """
    if not pairs:
        return student_hidden[0].new_zeros(())
    real = attention_mask.bool()
    losses = [1.0 - F.cosine_similarity(student_hidden[j][real].float(), teacher_hidden[k][real].float(), dim=-1).mean()
              for j, k in pairs]
    return torch.stack(losses).mean()
