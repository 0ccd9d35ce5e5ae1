"""What a "degrade" decision does to a request and its response: pure functions the gateway calls.

Request side (before the engine runs): ``cap_request`` caps ``top_logprobs`` and ``n`` (or refuses
logprobs with a clear message); ``cap_max_tokens`` caps the answer's length. The length cap is what
cuts a distiller's yield on any model: withholding reasoning only helps where the model puts it in
``<think>`` tags or a ``reasoning_content`` field (SmolLM2 does neither), while every answer of a
degraded account is at most ``max_tokens`` long (a person gets a short answer; a distiller gets
truncated training targets).

Response side: ``apply_to_response`` for a non-streaming OpenAI payload (chat or completions);
``StreamDegrader`` for streamed chunks, with a small state machine per choice that removes
``<think>…</think>`` even when a tag is split across chunks.

Reasoning (``<think>`` blocks in the text, ``reasoning_content`` fields) is withheld (replaced by
a short note) or summarised *extractively* (its first and last sentence, at most
``summary_words`` words; no model call). The final answer is untouched: a person still gets it,
a distiller loses the chain of thought it came for.

Logprob noise model (``logprobs = "noise"``). At each position the alternatives are first capped
to ``max_top_logprobs``; then every distinct token shown (the chosen one and its alternatives)
gets its own noise ``e ~ N(0, sigma^2)`` clipped to ``±bound = noise_bound_sigmas * sigma`` nats,
and the value becomes ``min(0, logprob + e)``. So every returned value is within ``bound`` nats of
the truth (with the defaults sigma = 0.7: a typical factor of about 1.6 on each probability, at
most e^1.75 ≈ 5.8), the shape of the answer is unchanged, and the tokens shown are the true ones.
The originally most likely alternative stays first with probability at least ``noise_keep_top1``
(if the noise reorders it, its value is swapped with the new leader's, which keeps both within
``bound``), so greedy-style use of the list still works for people while soft targets for logit
distillation become unreliable. The noise is keyed by ``seed`` (the gateway passes
``noise_seed(account, request)``), so asking the same prompt again returns the same noise and
averaging repeated queries does not remove it.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from distillguard.policy.config import DegradeConfig

OPEN = "<think>"
CLOSE = "</think>"
WITHHELD = "[reasoning withheld]"


class LogprobsRefused(ValueError):
    """The plan refuses logprobs; the message says why (the gateway answers 400)."""


@dataclass(frozen=True)
class DegradePlan:
    reasoning: str = "withhold"  # keep | withhold | summarise
    summary_words: int = 40
    logprobs: str = "noise"  # keep | cap | noise | drop | refuse
    max_top_logprobs: int = 2
    noise_sigma: float = 0.7
    noise_bound_sigmas: float = 2.5
    noise_keep_top1: float = 0.9
    max_n: int = 1
    #: cap on the answer's length (max_tokens / max_completion_tokens); None = the tier's cap
    max_tokens: int | None = None

    @classmethod
    def from_config(cls, c: DegradeConfig) -> DegradePlan:
        return cls(c.reasoning, c.summary_words, c.logprobs, c.max_top_logprobs, c.noise_sigma,
                   c.noise_bound_sigmas, c.noise_keep_top1, c.max_n, c.max_tokens)

    @property
    def noise_bound(self) -> float:
        return self.noise_sigma * self.noise_bound_sigmas

    def describe(self) -> str:
        parts = []
        if self.reasoning != "keep":
            parts.append(f"reasoning {self.reasoning}")
        if self.logprobs == "cap" or self.logprobs == "noise":
            parts.append(f"top_logprobs<= {self.max_top_logprobs}" + (f" + noise σ={self.noise_sigma}" if self.logprobs == "noise" else ""))
        elif self.logprobs != "keep":
            parts.append(f"logprobs {self.logprobs}")
        parts.append(f"n<= {self.max_n}")
        if self.max_tokens is not None:
            parts.append(f"max_tokens<= {self.max_tokens}")
        return ", ".join(parts)


# ---------------------------------------------------------------------- request side
def cap_request(plan: DegradePlan, want_logprobs: bool, top_logprobs: int, n: int) -> tuple[bool, int, int]:
    """(logprobs, top_logprobs, n) to run the engine with. Raises LogprobsRefused for "refuse"."""
    n = min(n, plan.max_n)
    if not want_logprobs or plan.logprobs == "keep":
        return want_logprobs, top_logprobs, n
    if plan.logprobs == "refuse":
        raise LogprobsRefused("logprobs are not available to this account at the moment; send the request "
                              "without logprobs/top_logprobs, or contact the API owner to verify your account.")
    if plan.logprobs == "drop":
        return False, 0, n
    return True, min(top_logprobs, plan.max_top_logprobs), n


def cap_max_tokens(plan: DegradePlan, max_tokens: int) -> int:
    """The answer length to run the engine with: the request's (or the tier's) cap, at most the
    plan's ``max_tokens``."""
    return max_tokens if plan.max_tokens is None else max(1, min(max_tokens, plan.max_tokens))


def noise_seed(account: str, request: dict[str, Any]) -> int:
    """Same account and prompt -> same noise (averaging repeats gains nothing)."""
    from distillguard.events import prompt_text

    h = hashlib.blake2b(digest_size=8)
    h.update(account.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update(prompt_text(request).encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


# ---------------------------------------------------------------------- reasoning
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def summarise(reasoning: str, words: int = 40) -> str:
    """Extractive: the first and the last sentence, cut to ``words`` words in all."""
    sents = [s.strip() for s in _SENT.split(reasoning) if s and s.strip()]
    if not sents:
        return ""
    picked = sents if len(sents) <= 2 else [sents[0], sents[-1]]
    toks = " … ".join(picked).split()
    text = " ".join(toks[:words]) + (" …" if len(toks) > words else "")
    return f"[summary of withheld reasoning] {text}"


def _replacement(plan: DegradePlan, reasoning: str) -> str:
    if plan.reasoning == "summarise":
        return summarise(reasoning, plan.summary_words) or WITHHELD
    return WITHHELD


def strip_reasoning(text: str, plan: DegradePlan) -> str:
    """Replace every ``<think>…</think>`` block (an unclosed one runs to the end)."""
    if plan.reasoning == "keep" or not text:
        return text
    f = ThinkFilter(plan)
    return f.feed(text) + f.flush()


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``tag``."""
    low = buf[-(len(tag) - 1):].lower() if len(tag) > 1 else ""
    for k in range(min(len(low), len(tag) - 1), 0, -1):
        if low.endswith(tag[:k]):
            return k
    return 0


class ThinkFilter:
    """Streams text through, replacing ``<think>…</think>`` blocks; tags may be split across
    feeds (a possible tag prefix at the end of a piece is held back until the next piece)."""

    def __init__(self, plan: DegradePlan) -> None:
        self.plan = plan
        self.inside = False
        self.pending = ""
        self.reasoning: list[str] = []

    def feed(self, text: str) -> str:
        if self.plan.reasoning == "keep":
            return text
        buf = self.pending + text
        self.pending = ""
        low = buf.lower()
        out: list[str] = []
        i = 0
        while True:
            if not self.inside:
                j = low.find(OPEN, i)
                if j < 0:
                    keep = _partial_suffix(buf[i:], OPEN)
                    out.append(buf[i:len(buf) - keep])
                    self.pending = buf[len(buf) - keep:]
                    break
                out.append(buf[i:j])
                self.inside, self.reasoning = True, []
                i = j + len(OPEN)
            else:
                j = low.find(CLOSE, i)
                if j < 0:
                    keep = _partial_suffix(buf[i:], CLOSE)
                    self.reasoning.append(buf[i:len(buf) - keep])
                    self.pending = buf[len(buf) - keep:]
                    break
                self.reasoning.append(buf[i:j])
                self.inside = False
                out.append(OPEN + _replacement(self.plan, "".join(self.reasoning)) + CLOSE)
                self.reasoning = []
                i = j + len(CLOSE)
        return "".join(out)

    def flush(self) -> str:
        """End of the text: an unclosed block is withheld; a held-back tag prefix is released."""
        if self.plan.reasoning == "keep":
            return ""
        if self.inside:
            self.reasoning.append(self.pending)
            self.pending = ""
            self.inside = False
            text = OPEN + _replacement(self.plan, "".join(self.reasoning)) + CLOSE
            self.reasoning = []
            return text
        rest, self.pending = self.pending, ""
        return rest


# ---------------------------------------------------------------------- logprobs
def _noisy_position(chosen: tuple[str, float] | None, top: list[tuple[str, float]], plan: DegradePlan,
                    rng: random.Random) -> tuple[float | None, list[tuple[str, float]]]:
    """Noise for one position: (noisy chosen logprob, noisy top list sorted high to low)."""
    top = sorted(top, key=lambda kv: -kv[1])[: plan.max_top_logprobs]
    if plan.logprobs != "noise" or plan.noise_sigma <= 0:
        return (chosen[1] if chosen else None), top
    bound = plan.noise_bound
    noisy: dict[str, float] = {}
    orig: dict[str, float] = {}
    for tok, lp in ([chosen] if chosen else []) + top:
        if tok in noisy or lp is None or not math.isfinite(lp):
            orig.setdefault(tok, lp)
            noisy.setdefault(tok, lp)
            continue
        e = max(-bound, min(bound, rng.gauss(0.0, plan.noise_sigma)))
        orig[tok] = lp
        noisy[tok] = min(0.0, lp + e)
    if len(top) >= 2 and rng.random() < plan.noise_keep_top1:
        first = top[0][0]
        lead = max((t for t, _ in top), key=lambda t: noisy[t])
        if lead != first:
            noisy[first], noisy[lead] = noisy[lead], noisy[first]
    new_top = sorted(((t, noisy[t]) for t, _ in top), key=lambda kv: -kv[1])
    return (noisy[chosen[0]] if chosen else None), new_top


def degrade_chat_logprobs(lp: dict[str, Any] | None, plan: DegradePlan, rng: random.Random) -> dict[str, Any] | None:
    """Chat shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], ...}."""
    if lp is None or plan.logprobs == "keep":
        return lp
    if plan.logprobs in ("drop", "refuse"):
        return None
    content = []
    for item in lp.get("content") or []:
        top = [(t["token"], t["logprob"]) for t in item.get("top_logprobs") or []]
        val, new_top = _noisy_position((item["token"], item["logprob"]), top, plan, rng)
        content.append({**item, "logprob": val,
                        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in new_top]})
    return {**lp, "content": content}


def degrade_completion_logprobs(lp: dict[str, Any] | None, plan: DegradePlan, rng: random.Random) -> dict[str, Any] | None:
    """Completions shape: {"tokens", "token_logprobs", "top_logprobs": [{tok: lp}], "text_offset"}."""
    if lp is None or plan.logprobs == "keep":
        return lp
    if plan.logprobs in ("drop", "refuse"):
        return None
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    new_vals, new_tops = [], []
    for tok, val, top in zip(tokens, values, tops, strict=False):
        v, nt = _noisy_position((tok, val), list((top or {}).items()), plan, rng)
        new_vals.append(v)
        new_tops.append(dict(nt) if top is not None else None)
    return {**lp, "token_logprobs": new_vals, "top_logprobs": new_tops}


# ---------------------------------------------------------------------- whole responses
def apply_to_response(payload: dict[str, Any], plan: DegradePlan, *, seed: int = 0) -> dict[str, Any]:
    """A degraded copy of a non-streaming chat.completion / text_completion payload."""
    rng = random.Random(seed)
    out = dict(payload)
    choices = []
    for c in (payload.get("choices") or [])[: plan.max_n]:
        c = dict(c)
        if "message" in c and isinstance(c["message"], dict):
            msg = dict(c["message"])
            if isinstance(msg.get("content"), str):
                msg["content"] = strip_reasoning(msg["content"], plan)
            if msg.get("reasoning_content") and plan.reasoning != "keep":
                msg["reasoning_content"] = _replacement(plan, msg["reasoning_content"])
            c["message"] = msg
            c["logprobs"] = degrade_chat_logprobs(c.get("logprobs"), plan, rng)
        else:
            if isinstance(c.get("text"), str):
                c["text"] = strip_reasoning(c["text"], plan)
            c["logprobs"] = degrade_completion_logprobs(c.get("logprobs"), plan, rng)
        choices.append(c)
    out["choices"] = choices
    return out


apply_to_chat_response = apply_to_response  # the name the integration notes use


class StreamDegrader:
    """Degrades streamed chunks (the dicts sent as ``data:`` lines), one state per choice index.

    ``process(chunk)`` returns the chunk to send, or None when nothing is left to send (text held
    back inside a ``<think>`` block). A choice's held-back text is released with its
    ``finish_reason`` chunk; call ``flush()`` if the stream ends without one."""

    def __init__(self, plan: DegradePlan, *, seed: int = 0) -> None:
        self.plan = plan
        self.rng = random.Random(seed)
        self.filters: dict[int, ThinkFilter] = {}
        self.reasoning: dict[int, list[str]] = {}
        self.reasoning_sent: set[int] = set()

    def _filter(self, i: int) -> ThinkFilter:
        f = self.filters.get(i)
        if f is None:
            f = self.filters[i] = ThinkFilter(self.plan)
        return f

    def process(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        choices = []
        for c in chunk.get("choices") or []:
            i = int(c.get("index", 0))
            if i >= self.plan.max_n:
                continue
            c = dict(c)
            done = c.get("finish_reason") is not None
            chat = "delta" in c
            if chat:
                delta = dict(c.get("delta") or {})
                rc = self._reasoning_delta(i, delta.pop("reasoning_content", None), done or bool(delta.get("content")))
                if rc is not None:
                    delta["reasoning_content"] = rc
                if "content" in delta and isinstance(delta["content"], str) and delta.get("role") is None:
                    delta["content"] = self._filter(i).feed(delta["content"]) + (self._filter(i).flush() if done else "")
                    if not delta["content"]:
                        del delta["content"]
                elif done:
                    rest = self._filter(i).flush()
                    if rest:
                        delta["content"] = rest
                c["delta"] = delta
                c["logprobs"] = degrade_chat_logprobs(c.get("logprobs"), self.plan, self.rng)
                empty = not delta and not done and not c["logprobs"]
            else:
                text = c.get("text") or ""
                c["text"] = self._filter(i).feed(text) + (self._filter(i).flush() if done else "")
                c["logprobs"] = degrade_completion_logprobs(c.get("logprobs"), self.plan, self.rng)
                empty = not c["text"] and not done and not c["logprobs"]
            if not empty:
                choices.append(c)
        if not choices and chunk.get("choices"):
            return None
        return {**chunk, "choices": choices}

    def _reasoning_delta(self, i: int, piece: str | None, closing: bool) -> str | None:
        """reasoning_content deltas: withheld (one note) or summarised when the answer starts."""
        if self.plan.reasoning == "keep":
            return piece
        if piece:
            self.reasoning.setdefault(i, []).append(piece)
        if i in self.reasoning_sent or i not in self.reasoning:
            return None
        if self.plan.reasoning == "withhold":
            self.reasoning_sent.add(i)
            return WITHHELD
        if closing:  # summarise: once the reasoning is complete
            self.reasoning_sent.add(i)
            return _replacement(self.plan, "".join(self.reasoning[i]))
        return None

    def flush(self, chat: bool = True) -> list[dict[str, Any]]:
        """Choices with held-back text, as chunk choice dicts (for a stream that ended without a
        finish_reason chunk for some choice)."""
        out: list[dict[str, Any]] = []
        for i, f in sorted(self.filters.items()):
            rest = f.flush()
            if rest:
                body: dict[str, Any] = {"delta": {"content": rest}} if chat else {"text": rest}
                out.append({"index": i, **body, "logprobs": None, "finish_reason": None})
        return out
