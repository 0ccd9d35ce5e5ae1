"""Template reuse: near-duplicate prompt skeletons and fixed system prompts.

A distillation pipeline pours a data set through one or a few prompt templates ("Solve step by
step: {question}"). The slot contents differ on every request, so exact hashing misses it; we
reduce each prompt to a *skeleton* (numbers, quoted spans and long content words masked), take
shingles from its head, its tail and its line starts (where template text lives), and compare
MinHash signatures. Per account we keep a handful of template slots (a space-saving sketch), so
state stays bounded however long the account runs. Templates that become established in an
account go into a global MinHash LSH index (datasketch) so the coordination stage can find other
accounts pouring prompts through the same template.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

_QUOTED = re.compile(r"\"[^\"\n]{1,400}\"|'[^'\n]{3,400}'|`[^`]{1,400}`|“[^”]{1,400}”")
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
_TOKEN = re.compile(r"[a-z_]+|<[a-z]>|[^\sa-z_]")

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)

#: tokens of this length or more are content words (slot fillers), masked in the skeleton
LONG_WORD = 8
HEAD = 12
TAIL = 12
MAX_LINES = 24


def skeleton_tokens(text: str) -> list[str]:
    """The prompt with its slot contents masked: the part a template author wrote."""
    s = _QUOTED.sub(" <q> ", text.lower())
    s = _NUM.sub(" <n> ", s)
    toks = _TOKEN.findall(s)
    return ["<w>" if len(t) >= LONG_WORD and not t.startswith("<") else t for t in toks]


def skeleton(text: str) -> str:
    return " ".join(skeleton_tokens(text))


EDGE = 500


@lru_cache(maxsize=65_536)
def _line_start(line: str) -> str | None:
    """The shingle of a line's first two skeleton tokens (lines repeat across a template's
    prompts, so this is memoised)."""
    lt = skeleton_tokens(line)[:2]
    return "l:" + " ".join(lt) if lt else None


def shingles(text: str) -> tuple[set[str], set[str]]:
    """Shingles from where templates live: (head + line starts, tail + line starts). A template
    fixes its head ("Solve step by step: {q}") or its tail ("{q} Let's think step by step"), so
    the two sides are compared separately."""
    if len(text) > 2 * EDGE:  # template text sits at the edges; bounds the cost of long prompts
        text = text[:EDGE] + "\n" + text[-EDGE:]
    toks = skeleton_tokens(text)
    lines: set[str] = set()
    for line in text.lower().splitlines()[:MAX_LINES]:
        start = _line_start(line)
        if start is not None:
            lines.add(start)
    sides = []
    for tag, part in (("h", toks[:HEAD]), ("t", toks[-TAIL:])):
        out = set(lines)
        if len(part) < 3:
            out.update(f"{tag}1:{t}" for t in part)
        for i in range(len(part) - 2):
            out.add(f"{tag}:{part[i]} {part[i + 1]} {part[i + 2]}")
        sides.append(out)
    return sides[0], sides[1]


class MinHasher:
    """Vectorised MinHash (same universal hashing family as datasketch) over string shingles.
    ``signature`` of a (head, tail) pair is the two halves concatenated."""

    def __init__(self, num_perm: int = 32, seed: int = 1, cache_size: int = 20_000) -> None:
        rng = np.random.RandomState(seed)
        self.num_perm = num_perm
        self.a = rng.randint(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def text_signature(self, text: str) -> np.ndarray:
        """``signature(shingles(text))``, memoised in a bounded LRU: popular prompts and
        re-sent app prompts are shingled once. The returned array must not be modified."""
        sig = self._cache.get(text)
        if sig is not None:
            self._cache.move_to_end(text)
            return sig
        sig = self.signature(shingles(text))
        sig.flags.writeable = False
        self._cache[text] = sig
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return sig

    def signature(self, items: set[str] | tuple[set[str], set[str]]) -> np.ndarray:
        if isinstance(items, tuple):
            head, tail = items
            if not head or not tail:
                return np.concatenate([self._sig(side) for side in items])
            # both sides in one vectorised pass: the same values as two ``_sig`` calls
            ph = self._permuted([*head, *tail])
            return np.concatenate([ph[: len(head)].min(axis=0), ph[len(head):].min(axis=0)])
        return self._sig(items)

    def _permuted(self, items: list[str] | set[str]) -> np.ndarray:
        hv = np.fromiter(
            (zlib.crc32(s.encode()) for s in items),  # stable across processes, unlike hash()
            dtype=np.uint64, count=len(items),
        )
        # (a*h + b) mod p, wrapping at 2^64: datasketch's "legacy" scheme, so the LSH index takes these values
        return (np.outer(hv, self.a) + self.b) % _MERSENNE & _MAX32

    def _sig(self, items: set[str]) -> np.ndarray:
        if not items:
            return np.full(self.num_perm, _MAX32, dtype=np.uint64)
        return self._permuted(items).min(axis=0)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Template similarity of two (head, tail) signatures: the better-matching side."""
    eq = sig_a == sig_b
    h = len(eq) // 2
    return float(max(eq[:h].mean(), eq[h:].mean()))


def system_prompt(request: dict) -> str | None:
    msgs = request.get("messages")
    if not isinstance(msgs, list):
        return None
    parts = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    parts = [p for p in parts if isinstance(p, str) and p.strip()]
    return "\n".join(parts) if parts else None


def user_text(request: dict) -> str:
    """The last user turn (chat) or the prompt (completions): where a template's slots are."""
    msgs = request.get("messages")
    if isinstance(msgs, list):
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, str):
                    return c
                if isinstance(c, list):
                    return "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
        return ""
    p = request.get("prompt")
    if isinstance(p, list):
        return "\n".join(x for x in p if isinstance(x, str))
    return p if isinstance(p, str) else ""


def short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass
class TemplateSlot:
    sig: np.ndarray
    count: int
    example: str
    global_key: str | None = None


@dataclass
class TemplateTracker:
    """Bounded per-account template sketch.

    ``matched`` counts requests whose skeleton matched a template the account had already used;
    ``matched / requests`` is the reuse rate.
    """

    slots: int = 16
    threshold: float = 0.55
    requests: int = 0
    matched: int = 0
    table: list[TemplateSlot] = field(default_factory=list)
    _sigs: np.ndarray | None = None

    def add(self, sig: np.ndarray, text: str) -> TemplateSlot:
        self.requests += 1
        if self.table:
            n = len(self.table)
            h = len(sig) // 2
            # matching hash values per (slot, side); a slot's similarity is its better side
            same = (self._sigs[:n] == sig).reshape(n, 2, h).sum(axis=2).max(axis=1)
            best = int(np.argmax(same))
            if same[best] / h >= self.threshold:
                slot = self.table[best]
                slot.count += 1
                self.matched += 1
                return slot
        if self._sigs is None:
            self._sigs = np.zeros((self.slots, len(sig)), dtype=sig.dtype)
        slot = TemplateSlot(sig=sig, count=1, example=text[:160])
        if len(self.table) < self.slots:
            i = len(self.table)
            self.table.append(slot)
        else:
            # space-saving: the new template replaces the rarest one and inherits its count, so a
            # template that keeps coming back climbs past the one-off prompts
            i = min(range(len(self.table)), key=lambda j: self.table[j].count)
            slot.count = self.table[i].count + 1
            self.table[i] = slot
        self._sigs[i] = sig
        return slot

    def reuse_rate(self) -> float:
        return self.matched / self.requests if self.requests else 0.0

    def top(self) -> TemplateSlot | None:
        return max(self.table, key=lambda s: s.count) if self.table else None


class TemplateIndex:
    """Global LSH indexes (datasketch), one per side, of templates established in some account."""

    def __init__(self, num_perm: int = 32, threshold: float = 0.55) -> None:
        from datasketch import MinHashLSH

        self.num_perm = num_perm
        self.sides = [MinHashLSH(threshold=threshold, num_perm=num_perm) for _ in range(2)]
        self._n = 0
        # the index only compares hash values; fixed dummy permutations spare datasketch from
        # drawing num_perm random ones for every sketch it wraps
        self._perms = (np.ones(num_perm, dtype=np.uint64), np.zeros(num_perm, dtype=np.uint64))

    def add_and_query(self, account: str, sig: np.ndarray) -> tuple[str, list[str]]:
        """Insert an account's template; return its key and the other accounts that use it."""
        from datasketch import LeanMinHash, MinHash

        key = f"{account}\x00{self._n}"
        self._n += 1
        others: set[str] = set()
        for i, lsh in enumerate(self.sides):
            part = sig[i * self.num_perm:(i + 1) * self.num_perm].astype(np.uint64)
            mh = LeanMinHash(MinHash(num_perm=self.num_perm, hashvalues=part, permutations=self._perms,
                                     scheme="legacy"))
            others |= {k.split("\x00", 1)[0] for k in lsh.query(mh)}
            lsh.insert(key, mh)
        others.discard(account)
        return key, sorted(others)
