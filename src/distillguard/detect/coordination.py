"""Coordination: link accounts that one operator runs together, and cluster them.

A "hydra" spreads one campaign over many accounts so that each stays below per-account limits and
thresholds. The accounts still give themselves away by what they share:

* infrastructure: the same IP address; an uncommon user agent adds weight to a pair but is no
  evidence family of its own (public SDKs and benchmark harnesses share user agents);
* the pipeline: the same prompt template (MinHash LSH over established templates) or the same
  system prompt;
* the data: near-identical prompt-embedding centroids (centred on the benign reference so that
  two generalists do not look alike), drawn from one source without overlap (split source);
* the clock: activity in the same 10-minute buckets (lock-step).

Each shared thing adds weight to the pair; a pair is linked when the weight reaches
``link_min_weight`` and the evidence comes from at least two of infrastructure, content and timing
(no single kind of evidence is enough on its own). Attributes shared by more
than ``link_max_shared`` accounts are common (a cloud NAT, the default SDK user agent) and link
nobody. Clusters are the connected components of the linked graph (union-find).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

WEIGHTS = {
    "ip": 1.0,
    "user_agent": 0.4,
    "system_prompt": 1.0,
    "template": 1.0,
    "centroid": 0.8,
    "lockstep": 0.8,
    "split_source": 0.3,
}
#: independent kinds of evidence; a link needs two of them (two companies that run the same
#: open-source prompt share content but not infrastructure or clock). A user agent adds weight but
#: is no family of its own: independent researchers who run one public benchmark through the same
#: SDK share template, topic *and* user agent, and are still strangers
FAMILY = {"ip": "infrastructure", "user_agent": "client", "system_prompt": "content", "template": "content",
          "centroid": "content", "split_source": "content", "lockstep": "timing"}
#: families that can make up the two a link needs
LINK_FAMILIES = frozenset({"infrastructure", "content", "timing"})
CENTROID_COS = 0.8
LOCKSTEP_JACCARD = 0.3
BOTTOM_K = 64


@dataclass
class LinkState:
    """Per-account bounded link attributes."""

    ips: Counter = field(default_factory=Counter)
    uas: Counter = field(default_factory=Counter)
    buckets: set[int] = field(default_factory=set)
    bucket_cap: int = 512
    #: bottom-k sketch of prompt hashes: estimates prompt overlap between accounts
    prompt_sketch: list[int] = field(default_factory=list)

    def add_bucket(self, b: int) -> None:
        self.buckets.add(b)
        if len(self.buckets) > self.bucket_cap:
            self.buckets.discard(min(self.buckets))

    def add_prompt_hash(self, h: int) -> None:
        ps = self.prompt_sketch
        if h in ps:
            return
        if len(ps) < BOTTOM_K:
            ps.append(h)
            ps.sort()
        elif h < ps[-1]:
            ps[-1] = h
            ps.sort()


def prompt_overlap(a: list[int], b: list[int]) -> float:
    """Jaccard estimate of two accounts' prompt sets from bottom-k sketches."""
    if not a or not b:
        return 0.0
    sa, sb = set(a), set(b)
    common = sa & sb
    if not common:  # the usual case for two accounts that merely look alike: no need to merge
        return 0.0
    union = sorted(sa | sb)[:BOTTOM_K]
    return sum(1 for h in union if h in common) / len(union)


def _uf_find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def cluster_id(members: list[str]) -> str:
    return "c" + hashlib.blake2b(min(members).encode(), digest_size=4).hexdigest()


class Linker:
    def __init__(self, max_shared: int = 60, min_weight: float = 1.6, min_requests: int = 8) -> None:
        self.max_shared = max_shared
        self.min_weight = min_weight
        self.min_requests = min_requests
        self.attr_accounts: dict[tuple[str, str], set[str]] = {}
        self.common: set[tuple[str, str]] = set()
        self.template_pairs: Counter = Counter()
        self.template_example: dict[tuple[str, str], str] = {}
        self.clusters: dict[str, list[str]] = {}
        self.account_cluster: dict[str, str] = {}
        self.pair_evidence: dict[tuple[str, str], dict[str, float]] = {}

    # ---- incremental observations ----
    def observe(self, account: str, kind: str, value: str) -> None:
        key = (kind, value)
        if key in self.common:
            return
        s = self.attr_accounts.setdefault(key, set())
        s.add(account)
        if len(s) > self.max_shared:
            self.common.add(key)
            del self.attr_accounts[key]

    def observe_template(self, account: str, others: list[str], example: str) -> None:
        if len(others) > self.max_shared:
            return
        for o in others:
            pair = (account, o) if account < o else (o, account)
            self.template_pairs[pair] += 1
            self.template_example.setdefault(pair, example)

    # ---- periodic clustering ----
    def recompute(self, accounts: dict[str, object], centroids: dict[str, np.ndarray],
                  counts: dict[str, int], links: dict[str, LinkState]) -> dict[str, list[str]]:
        """Rebuild pair weights and clusters from the current state (called every N events)."""
        w: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

        def add(a: str, b: str, kind: str, weight: float) -> None:
            if a == b:
                return
            pair = (a, b) if a < b else (b, a)
            w[pair][kind] = max(w[pair].get(kind, 0.0), weight)

        for (kind, _value), members in self.attr_accounts.items():
            if len(members) < 2:
                continue
            ms = sorted(members)
            for i, a in enumerate(ms):
                for b in ms[i + 1:]:
                    add(a, b, kind, WEIGHTS[kind])
        for (a, b) in self.template_pairs:
            add(a, b, "template", WEIGHTS["template"])

        # embedding centroids, centred on the reference so only shared *specific* focus counts
        names = [a for a, c in centroids.items() if counts.get(a, 0) >= self.min_requests]
        if len(names) >= 2:
            m = np.stack([centroids[a] for a in names])
            m = m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-9)
            sims = m @ m.T
            ii, jj = np.nonzero(np.triu(sims >= CENTROID_COS, k=1))
            for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
                a, b = names[i], names[j]
                add(a, b, "centroid", WEIGHTS["centroid"] * float(sims[i, j]))
                if prompt_overlap(links[a].prompt_sketch, links[b].prompt_sketch) == 0.0:
                    add(a, b, "split_source", WEIGHTS["split_source"])

        # lock-step timing, only for pairs that already share something (keeps this O(pairs))
        for (a, b) in list(w):
            ba, bb = links[a].buckets, links[b].buckets
            if len(ba) >= 3 and len(bb) >= 3:
                jac = len(ba & bb) / len(ba | bb)
                if jac >= LOCKSTEP_JACCARD:
                    add(a, b, "lockstep", WEIGHTS["lockstep"] * min(1.0, jac / 0.6))

        parent: dict[str, str] = {}
        self.pair_evidence = {}
        for (a, b), kinds in w.items():
            if sum(kinds.values()) < self.min_weight or len({FAMILY[k] for k in kinds} & LINK_FAMILIES) < 2:
                continue
            if counts.get(a, 0) < 2 or counts.get(b, 0) < 2:
                continue
            self.pair_evidence[(a, b)] = kinds
            parent.setdefault(a, a)
            parent.setdefault(b, b)
            ra, rb = _uf_find(parent, a), _uf_find(parent, b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        comps: dict[str, list[str]] = defaultdict(list)
        for x in parent:
            comps[_uf_find(parent, x)].append(x)
        self.clusters = {}
        self.account_cluster = {}
        for members in comps.values():
            members.sort()
            cid = cluster_id(members)
            self.clusters[cid] = members
            for a in members:
                self.account_cluster[a] = cid
        return self.clusters

    def strength(self, cid: str) -> float:
        size = len(self.clusters.get(cid, []))
        return min(1.0, (size - 1) / 9) if size > 1 else 0.0

    def describe(self, cid: str) -> tuple[float, str]:
        """Coordination strength in [0, 1] and a sentence naming what the members share."""
        members = self.clusters.get(cid, [])
        kinds: Counter = Counter()
        for (a, b), ks in self.pair_evidence.items():
            if self.account_cluster.get(a) == cid:
                kinds.update(ks.keys())
        size = len(members)
        value = self.strength(cid)
        shared = ", ".join(f"{k.replace('_', ' ')} ({n} pairs)" for k, n in kinds.most_common())
        shown = ", ".join(members[:5]) + (" ..." if size > 5 else "")
        return value, f"one of {size} linked accounts [{shown}]; pairs share {shared}"
