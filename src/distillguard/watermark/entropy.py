"""Entropy-aware detection: score only the positions where the model had a real choice.

A distortion-free watermark can only hide evidence where the model was uncertain. At a position
where the model puts 0.99 on one token, the Gumbel draw of the chosen token is almost exactly
Uniform(0, 1) even in watermarked text, so its score adds an Exp(1) of pure noise to the sum.
Chat answers from a small model at temperature 0.7 are full of such positions (the second half
of a word, "of the", punctuation), and they are what makes a plain detector need many tokens.

The key holder usually has the model (or any model with the same tokenizer), so detection can
ask it, for every position of the text, how uncertain the next-token distribution was, and score
only the uncertain positions (SWEET, Lee et al. 2023, does this with an entropy threshold for
green lists). For Gumbel-max the likelihood ratio says which positions matter: a token chosen
with probability p carries E[log LR] = p - 1 - log p nats of evidence, so the default gate keeps
the positions whose actual token had probability <= 0.5 at the served temperature (an entropy
threshold is available too; on the tuning split it helped less). The p-value stays exact: under H0 the text was written without the key, so the keyed
draws of distinct (window, token) tuples are i.i.d. uniform *whatever* rule picks the positions,
as long as the rule looks at the text and the model only, never at the key. Which model, which
temperature, with or without the prompt: these change the power, never the false-positive rate.

    gate = EntropyGate(ScoringModel.load("path/to/model"), temperature=0.7)  # max_token_prob=0.5
    mask = gate.eligible(prompt_ids, answer_ids)   # bool per answer position
    Detector(...).detect_ids([answer_ids], eligible=[mask])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


#: default gate, chosen on the tuning split of bench/watermark_power.py (24 answers, prompts idx < 40;
#: median tokens to p < 1e-5: 54 ungated, 41-44 with an entropy gate of 0.3-1.0 nats, 33 with
#: max_token_prob 0.5); reported on the held-out split in bench/results/watermark_power_gate.json
DEFAULT_MIN_ENTROPY = 0.0
DEFAULT_MAX_TOKEN_PROB: float | None = 0.5


def next_token_stats(logits: Any, next_ids: Any, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(entropy in nats, probability of the next token, largest probability) per row at ``temperature``.

    ``logits``: a torch tensor [..., L, V] whose row i predicts ``next_ids[..., i]`` (shape [..., L]).
    """
    import torch

    logp = torch.log_softmax(logits.double() / temperature, -1)
    nxt = torch.as_tensor(next_ids, device=logp.device)
    ent = -(logp.exp() * logp).sum(-1)
    prob = logp.gather(-1, nxt[..., None])[..., 0].exp()
    top = logp.max(-1).values.exp()
    return ent.cpu().numpy(), prob.cpu().numpy(), top.cpu().numpy()


class ScoringModelError(ValueError):
    """The scoring model cannot be used (missing, other tokenizer); the message says what to fix."""


class ScoringModel:
    """A local causal LM (transformers, float32, CPU) read for its next-token entropies."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "model", max_len: int = 2048):
        self.model, self.tokenizer, self.name, self.max_len = model, tokenizer, name, max_len

    @classmethod
    def load(cls, path: Path | str) -> ScoringModel:
        """From an HF model folder or a .gguf file (the served SmolLM2 GGUF works)."""
        from distillguard.watermark.audit import AuditError, load_suspect

        try:
            model, tok = load_suspect(path)
        except AuditError as exc:
            raise ScoringModelError(str(exc).replace("suspect model", "scoring model")) from None
        return cls(model, tok, name=str(path))

    def check_tokenizer(self, reference: Any | None) -> None:
        """Raise unless this model tokenises like the watermark's tokenizer (``encode(str)``)."""
        if reference is None:
            return
        probe = "Entropy probe: the quick brown fox, 1234 — naïve café."
        if list(self.tokenizer(probe, add_special_tokens=False)["input_ids"]) != list(reference.encode(probe)):
            raise ScoringModelError(
                f"the scoring model {self.name} tokenises differently from the watermarked model: "
                "entropy-aware detection needs a model with the same tokenizer (e.g. the served model)"
            )

    def prompt_ids(self, messages: list[dict[str, Any]] | str | None) -> list[int]:
        """Token ids of the context before the answer: chat template with the assistant header."""
        if not messages:
            return []
        if isinstance(messages, list) and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        elif isinstance(messages, list):
            text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        else:
            text = messages
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def entropies(self, prompt_ids: Sequence[int], answer_ids: Sequence[int], temperature: float = 1.0) -> np.ndarray:
        """Entropy (nats) of the distribution that produced each answer token, at ``temperature``."""
        return self.position_stats(prompt_ids, answer_ids, temperature)[0]

    def _windows(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> Iterator[tuple[np.ndarray, Any, list[int]]]:
        """(answer positions, their logits rows, the tokens those rows predict), window by window.

        Row i predicts answer[i] from prompt + answer[:i]. Texts longer than ``max_len`` are read
        in windows that overlap by half, so every position keeps at least max_len/2 tokens of
        context; a later window only fills the positions past the previous one's end. Without a
        prompt, position 0 has no context and is never yielded.
        """
        import torch

        prompt, answer = [int(x) for x in prompt_ids], [int(x) for x in answer_ids]
        ids = prompt + answer
        start = len(prompt)  # index in ids of the first answer token
        step = max(1, self.max_len // 2)
        lo = 0
        with torch.inference_mode():
            while True:
                hi = min(len(ids), lo + self.max_len)
                if hi - lo >= 2:
                    logits = self.model(input_ids=torch.tensor([ids[lo:hi]], device=self.model.device)).logits[0, :-1]
                    js = [j for j in range(hi - lo - 1)
                          if lo + j + 1 - start >= 0 and (lo == 0 or j >= self.max_len - step - 1)]
                    if js:
                        pos = np.array([lo + j + 1 - start for j in js])
                        yield pos, logits[js], [ids[lo + j + 1] for j in js]
                if hi >= len(ids):
                    break
                lo += step

    def answer_logits(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> np.ndarray:
        """[len(answer), V] float32 logits; row i predicts answer[i] from prompt + answer[:i].

        For replay detection (``replay.py``). Without a prompt, row 0 has no context and is zeros.
        """
        out: np.ndarray | None = None
        for pos, logits, _ in self._windows(prompt_ids, answer_ids):
            rows = logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(answer_ids), rows.shape[-1]), dtype=np.float32)
            out[pos] = rows
        if out is None:
            raise ScoringModelError("the text is too short to read (fewer than 2 tokens with the prompt)")
        return out

    def position_stats(
        self, prompt_ids: Sequence[int], answer_ids: Sequence[int], temperature: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(entropy in nats, probability of the actual token, largest probability) for each answer
        position, at ``temperature``.

        Position i is predicted from prompt + answer[:i]. Without a prompt, position 0 has no
        context and gets entropy 0 and probabilities 1 (never eligible). Long texts are read in
        overlapping windows (``_windows``).
        """
        if temperature <= 0:
            raise ScoringModelError(f"temperature must be > 0, got {temperature}")
        n = len(answer_ids)
        ent, prob, top = np.zeros(n), np.ones(n), np.ones(n)
        for pos, logits, nxt in self._windows(prompt_ids, answer_ids):
            ent[pos], prob[pos], top[pos] = next_token_stats(logits, nxt, temperature)
        return ent, prob, top


@dataclass
class EntropyGate:
    """Which positions detection scores.

    A position is eligible when the model's entropy at ``temperature`` is >= ``min_entropy`` nats
    and, if ``max_token_prob`` is set, the actual token had probability <= it. The second rule
    follows the likelihood ratio of Gumbel-max: a token chosen with probability p carries
    E[log LR] = p - 1 - log p of evidence (0.19 nats at p = 0.5, 0.005 at p = 0.9), so tokens the
    model was nearly sure of add noise and almost no signal.
    """

    model: ScoringModel
    min_entropy: float = DEFAULT_MIN_ENTROPY
    temperature: float = 1.0
    max_token_prob: float | None = DEFAULT_MAX_TOKEN_PROB

    def __post_init__(self) -> None:
        if self.min_entropy < 0:
            raise ScoringModelError(f"min_entropy must be >= 0 nats, got {self.min_entropy}")
        if self.temperature <= 0:
            raise ScoringModelError(f"temperature must be > 0, got {self.temperature}")
        if self.max_token_prob is not None and not 0 < self.max_token_prob <= 1:
            raise ScoringModelError(f"max_token_prob must be in (0, 1], got {self.max_token_prob}")

    def eligible(self, prompt_ids: Sequence[int], answer_ids: Sequence[int],
                 temperature: float | None = None) -> np.ndarray:
        """One bool per answer position; ``temperature`` overrides the gate's (e.g. a request's own)."""
        ent, prob, _ = self.model.position_stats(prompt_ids, answer_ids, temperature or self.temperature)
        ok = ent >= self.min_entropy
        if self.max_token_prob is not None:
            ok &= prob <= self.max_token_prob
        return ok

    def describe(self) -> dict[str, object]:
        return {"scoring_model": self.model.name, "min_entropy_nats": self.min_entropy,
                "max_token_prob": self.max_token_prob, "temperature": self.temperature}


@dataclass
class ReadingGate:
    """Radioactivity reading mode: which context positions to score.

    A suspect's top-1 prediction can only show a learned watermark bias where the watermarking
    model had no dominant token: where it did, a student trained on watermarked text predicts that
    token like any other model, and its keyed draw is noise. Positions where the scoring model (the
    watermarking model) gives its top token more than ``max_top_prob`` at ``temperature`` are
    skipped. The rule looks at the context and the scoring model only, never at the key or the
    suspect, so the audit's p-value stays exact. Fixed a priori at 0.5 (the detection gate's
    value), not tuned on any audit.
    """

    model: ScoringModel
    max_top_prob: float = 0.5
    temperature: float = 0.7

    def __post_init__(self) -> None:
        if not 0 < self.max_top_prob <= 1:
            raise ScoringModelError(f"max_top_prob must be in (0, 1], got {self.max_top_prob}")
        if self.temperature <= 0:
            raise ScoringModelError(f"temperature must be > 0, got {self.temperature}")

    def eligible(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> np.ndarray:
        return self.model.position_stats(prompt_ids, answer_ids, self.temperature)[2] <= self.max_top_prob

    def describe(self) -> dict[str, object]:
        return {"scoring_model": self.model.name, "max_top_prob": self.max_top_prob, "temperature": self.temperature}
