"""NumPy next-token helpers shared by the local engines: processors, logprobs, sampling.

Reported logprobs are ``log_softmax`` of the scores *after* the request's logits processors
and *before* temperature / top-p: the distribution the processed model defines, the same on
every engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from distillguard.engines.base import (
    EngineError,
    LogitsProcessor,
    SamplingParams,
    TokenLogprob,
)


def validate(params: SamplingParams) -> None:
    """Reject parameters no engine can honour, with a message that says what to fix."""
    if params.max_tokens < 1:
        raise EngineError(f"max_tokens must be at least 1 (got {params.max_tokens})")
    if params.temperature < 0:
        raise EngineError(f"temperature must be >= 0 (got {params.temperature})")
    if not 0 < params.top_p <= 1:
        raise EngineError(f"top_p must be in (0, 1] (got {params.top_p})")
    if params.n < 1:
        raise EngineError(f"n must be at least 1 (got {params.n})")
    if params.top_logprobs < 0 or params.top_logprobs > 20:
        raise EngineError(f"top_logprobs must be between 0 and 20 (got {params.top_logprobs})")


def apply_processors(
    processors: Sequence[LogitsProcessor], input_ids: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Run the request's processors in order. A broken processor is a server bug, not a bad
    request, so its errors (and wrong return values) surface as ordinary exceptions."""
    shape = scores.shape
    for proc in processors:
        out = proc(input_ids, scores)
        if out is None:
            raise TypeError(f"logits processor {proc!r} returned None; it must return the scores")
        scores = np.asarray(out, dtype=np.float32)
        if scores.shape != shape:
            raise ValueError(f"logits processor {proc!r} returned shape {scores.shape}, expected {shape}")
    return scores


def log_softmax(scores: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64, copy=False)
    m = np.max(s)
    if not np.isfinite(m):
        raise EngineError("every token has a score of -inf after the logits processors")
    z = s - m
    return (z - np.log(np.sum(np.exp(z)))).astype(np.float32)


def token_logprob(
    logp: np.ndarray, token_id: int, top_n: int, token_text: Callable[[int], str]
) -> TokenLogprob:
    top: list[tuple[str, float]] = []
    if top_n > 0:
        idx = np.argpartition(-logp, top_n - 1)[:top_n]
        idx = idx[np.argsort(-logp[idx], kind="stable")]
        top = [(token_text(int(i)), float(logp[i])) for i in idx]
    return TokenLogprob(token=token_text(token_id), logprob=float(logp[token_id]), top=top)


def sample(scores: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Pick the next token: greedy at temperature 0, else nucleus sampling from softmax(scores/T)."""
    if temperature == 0:
        return int(np.argmax(scores))
    z = scores.astype(np.float64) / temperature
    z -= np.max(z)
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        q = p[keep] / p[keep].sum()
        return int(keep[rng.choice(len(keep), p=q)])
    return int(rng.choice(len(p), p=p))
