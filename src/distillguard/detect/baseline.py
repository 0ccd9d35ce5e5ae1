"""The comparison detector: a plain windowed MMD test per account, nothing else.

For each account, the embeddings of its most recent ``window`` prompts (sampled on the same
schedule as the online detector) are compared with the benign reference sample by the unbiased
Gaussian-kernel MMD^2 estimate; the account's score is the largest value seen once the window holds
``min_samples`` prompts. This is the topic-distance idea on its own (as in arXiv 2606.05725),
without behaviour, intent, templates or coordination; the benchmark runs it on the same traffic
and calibrates it the same way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from distillguard.detect.embed import Embedder
from distillguard.detect.online import iter_batches
from distillguard.detect.templates import user_text
from distillguard.events import ExchangeEvent


def _gauss(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    # unit vectors: |a-b|^2 = 2 - 2 a.b
    return np.exp(-(2.0 - 2.0 * (a @ b.T)) / (2.0 * bandwidth**2))


@dataclass
class _Acct:
    window: deque = field(default_factory=deque)
    kref: deque = field(default_factory=deque)  # mean kernel to the reference, per window item
    n: int = 0
    score: float = 0.0
    flagged_at: float | None = None
    requests_before_flag: int | None = None


class WindowedMMD:
    def __init__(self, embedder: Embedder, reference_prompts: list[str], *, window: int = 64, min_samples: int = 16,
                 bandwidth: float = 0.8, threshold: float = float("inf"), embed_full_first: int = 48,
                 embed_every: int = 8) -> None:
        self.embedder = embedder
        self.ref = embedder.embed(list(reference_prompts))
        r = len(self.ref)
        kyy = _gauss(self.ref, self.ref, bandwidth)
        self.kyy = float((kyy.sum() - np.trace(kyy)) / (r * (r - 1)))
        self.window, self.min_samples, self.bandwidth = window, min_samples, bandwidth
        self.threshold = threshold
        self.full_first, self.every = embed_full_first, embed_every
        self.accounts: dict[str, _Acct] = {}

    def process_batch(self, events: list[ExchangeEvent]) -> None:
        texts = [user_text(e.request) for e in events]
        pick, seen = [], {}
        for i, ev in enumerate(events):
            st = self.accounts.get(ev.account)
            k = (st.n if st else 0) + seen.get(ev.account, 0)
            seen[ev.account] = seen.get(ev.account, 0) + 1
            if texts[i].strip() and (k < self.full_first or k % self.every == 0):
                pick.append(i)
        emb = {i: v for i, v in zip(pick, self.embedder.embed([texts[i] for i in pick]), strict=True)} if pick else {}
        for i, ev in enumerate(events):
            st = self.accounts.setdefault(ev.account, _Acct())
            st.n += 1
            if i in emb:
                x = emb[i]
                st.window.append(x)
                st.kref.append(float(_gauss(x[None, :], self.ref, self.bandwidth).mean()))
                if len(st.window) > self.window:
                    st.window.popleft()
                    st.kref.popleft()
                m = len(st.window)
                if m >= self.min_samples:
                    w = np.stack(st.window)
                    kxx = _gauss(w, w, self.bandwidth)
                    mmd2 = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + self.kyy - 2.0 * float(np.mean(st.kref))
                    st.score = max(st.score, float(mmd2))
            if st.flagged_at is None and st.score >= self.threshold:
                st.flagged_at, st.requests_before_flag = ev.ts, st.n

    def run(self, events: list[ExchangeEvent], batch: int = 256) -> None:
        for b in iter_batches(events, batch):
            self.process_batch(b)

    def scores(self) -> dict[str, float]:
        return {a: s.score for a, s in self.accounts.items()}
