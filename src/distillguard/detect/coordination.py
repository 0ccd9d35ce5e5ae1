"""Coordination: link accounts that one operator runs together, and cluster them.

A "hydra" spreads one campaign over many accounts so that each stays below per-account limits and
thresholds. The accounts still give themselves away by what they share:

* infrastructure: the same IP address; an uncommon user agent adds weight to a pair but is no
  evidence family of its own (public SDKs and benchmark harnesses share user agents);
* the pipeline: the same prompt template (MinHash LSH over established templates) or the same
  system prompt;
* the data: near-identical prompt-embedding centroids (centred on the benign reference so that
  two generalists do not look alike), drawn from one source without overlap (split source);
* the clock: activity in the same 10-minute buckets (lock-step);
* birth: new accounts that start one pipeline (template, client, sampling parameters) within
  minutes of each other, a *sybil cohort* (``CohortTracker``), are linked at the event at which
  the cohort reaches ``min_accounts``, long before each has the requests the other evidence
  needs; accounts born beside a running cohort that share an address with it too.

Each shared thing adds weight to the pair; a pair is linked when the weight reaches
``link_min_weight`` and the evidence comes from at least two of infrastructure, content and timing
(no single kind of evidence is enough on its own). Attributes shared by more
than ``link_max_shared`` accounts are common (a cloud NAT, the default SDK user agent) and link
nobody. Clusters are the connected components of the linked graph (union-find).
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np

from distillguard.detect.features import request_params
from distillguard.detect.templates import skeleton_tokens

WEIGHTS = {
    "ip": 1.0,
    "user_agent": 0.4,
    "system_prompt": 1.0,
    "template": 1.0,
    "centroid": 0.8,
    "lockstep": 0.8,
    "split_source": 0.3,
    #: born together: a sybil cohort's new accounts (``CohortTracker``)
    "cohort": 0.8,
}
#: independent kinds of evidence; a link needs two of them (two companies that run the same
#: open-source prompt share content but not infrastructure or clock). A user agent adds weight but
#: is no family of its own: independent researchers who run one public benchmark through the same
#: SDK share template, topic *and* user agent, and are still strangers
FAMILY = {"ip": "infrastructure", "user_agent": "client", "system_prompt": "content", "template": "content",
          "centroid": "content", "split_source": "content", "lockstep": "timing", "cohort": "timing"}
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


def cohort_pairs(c: "Cohort") -> list[tuple[str, str]]:
    """Star pairs linking an established cohort's members (union-find needs no more)."""
    ms = list(c.members)
    return [(ms[0], b) for b in ms[1:]]


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
                  counts: dict[str, int], links: dict[str, LinkState],
                  cohorts: CohortTracker | None = None) -> dict[str, list[str]]:
        """Rebuild pair weights and clusters from the current state (called every N events).
        ``cohorts``: the sybil cohorts (``CohortTracker``): members of an established cohort are
        linked, and accounts born together with one (``CohortTracker.born_together``) get timing
        evidence for the pairs that already share something else."""
        w: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

        def add(a: str, b: str, kind: str, weight: float) -> None:
            if a == b:
                return
            pair = (a, b) if a < b else (b, a)
            w[pair][kind] = max(w[pair].get(kind, 0.0), weight)

        if cohorts is not None:
            for c in cohorts.established():
                for a, b in cohort_pairs(c):
                    add(a, b, "template", WEIGHTS["template"])
                    add(a, b, "cohort", WEIGHTS["cohort"])

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

        # born together with a cohort (the operator's other new accounts: another template, the
        # same client and parameters, started in the cohort's hours), only for pairs that already
        # share something (an address of its proxy pool)
        if cohorts is not None and cohorts.cohorts:
            in_cohort = {a for c in cohorts.established() for a in c.members}
            for (a, b), kinds in list(w.items()):
                if ((a in in_cohort or b in in_cohort) and "cohort" not in kinds
                        and cohorts.born_together(a, b)):
                    add(a, b, "cohort", WEIGHTS["cohort"])

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
            # one request is too little to link on, unless the accounts were born together (cohort)
            if "cohort" not in kinds and (counts.get(a, 0) < 2 or counts.get(b, 0) < 2):
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


# ---------------------------------------------------------------------- sybil cohorts
#: skeleton tokens at each edge of a prompt that name its template (see ``template_edges``)
EDGE_TOKENS = 8
#: characters read at each edge of a long prompt
EDGE_CHARS = 100


def template_edges(text: str, k: int = EDGE_TOKENS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The first and the last ``k`` skeleton tokens of a prompt (numbers, quoted spans and long
    words masked). A template fixes one edge ("Solve step by step: {q}", "{q} Let's think step by
    step."), so two prompts of one template share their head or their tail exactly, whatever the
    slot holds; MinHash over shingles is diluted by the slot's own lines (a code block), the edges
    are not."""
    if len(text) <= 2 * EDGE_CHARS:
        toks = skeleton_tokens(text)
        return tuple(toks[:k]), tuple(toks[-k:])
    # only the edges are read (bounded cost on the policy's request path for long prompts)
    return tuple(skeleton_tokens(text[:EDGE_CHARS])[:k]), tuple(skeleton_tokens(text[-EDGE_CHARS:])[-k:])


@dataclass
class Cohort:
    """New accounts that started sending one prompt template, with identical request parameters
    and client, while the others were active (see ``CohortTracker``)."""

    cid: int
    key: tuple
    edges: tuple[tuple[str, ...], tuple[str, ...]]
    example: str
    first_ts: float
    #: last request of a member through the template / last time an account joined
    last_ts: float
    last_join_ts: float
    #: member -> its requests through the cohort's template
    members: dict[str, int] = field(default_factory=dict)
    #: set once the cohort reached ``min_accounts`` (its members are linked from then on)
    established: bool = False

    def matches(self, edges: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
        return edges[0] == self.edges[0] or edges[1] == self.edges[1]

    def live(self, ts: float, gap_s: float) -> bool:
        """Can a new account join at ``ts``? Before it is established, only while accounts keep
        being born into it (each within ``gap_s`` of the previous one: a burst of births, not
        customers who sign up days apart and happen to run the same app); once established,
        while its members are active (the operator adds accounts to a running campaign)."""
        return (self.last_ts if self.established else self.last_join_ts) >= ts - gap_s


class CohortTracker:
    """Sybil cohorts: a hydra opens many accounts at once and drives them in lock-step through
    one pipeline, so its *new* accounts arrive together. Each of them is too small to score, and
    the periodic relink needs several requests per account (established templates, lock-step
    over 3+ time buckets), so they would be linked only after 7-9 requests each.

    An account is *young* for its first ``young_requests`` requests and its first ``gap_s``
    seconds (after that it never joins a cohort). A young account whose prompt
    shares a template edge (``template_edges``) with a live cohort of the same request
    fingerprint (endpoint, model, user agent, sampling parameters, logprobs) joins it; a cohort is
    live while accounts keep being born into it, each within ``gap_s`` of the previous one, and,
    once established, while some member sent through its template within ``gap_s``. Otherwise
    the young account starts a cohort of its own. A cohort with ``min_accounts`` members is
    *established*: two evidence families at once (content: one template; timing: born and active
    together), so its members are linked as one actor at once, not at the next periodic relink.
    Benign
    accounts that happen to start together differ in parameters, client or template; a public
    benchmark through one SDK is run by people who do not start within minutes of each other.

    Every account is new to a detector that has just started (a first deployment, a replay's
    first hours): until the detector has seen ``warmup_s`` of traffic, nobody joins a cohort, so
    customers that merely appear together at the start (five shops running one open-source RAG
    app with the same client) are not mistaken for one operator's new accounts.

    State is bounded: live cohorts only (a cohort that is not established is dropped once it is
    no longer live), at most ``max_cohorts`` of them, and a cohort takes at most ``max_members``
    members (beyond that the template is common)."""

    def __init__(self, young_requests: int = 4, gap_s: float = 900.0, min_accounts: int = 4,
                 max_cohorts: int = 20_000, max_members: int = 60, warmup_s: float = 6 * 3600.0) -> None:
        self.young_requests = young_requests
        self.warmup_s = warmup_s
        #: arrival time of the first event this tracker saw (the start of its warm-up)
        self.start_ts: float | None = None
        self.gap_s = gap_s
        self.min_accounts = min_accounts
        self.max_cohorts = max_cohorts
        self.max_members = max_members
        self.cohorts: dict[int, Cohort] = {}
        #: (fingerprint, "h" | "t", edge tokens) -> the newest cohort with that edge
        self.index: dict[tuple, int] = {}
        self.account_cohort: dict[str, int] = {}
        #: account -> (first request, request fingerprint) for accounts first seen after the
        #: warm-up (bounded: oldest dropped first)
        self.births: OrderedDict[str, tuple[float, tuple]] = OrderedDict()
        self.max_births = 200_000
        #: fingerprint -> established cohorts with it
        self.established_by_key: dict[tuple, list[int]] = defaultdict(list)
        self._next = 0
        #: cohorts that gained a member or became established since ``take_dirty``
        self._dirty: set[int] = set()

    @staticmethod
    def fingerprint(request: dict, endpoint: str | None, user_agent: str | None) -> tuple:
        """What a pipeline sends with every request: endpoint, model, client, sampling parameters."""
        return (endpoint, request.get("model"), user_agent, *request_params(request))

    def observe(self, account: str, n_requests: int, ts: float, text: str, key: tuple,
                born_ts: float | None = None) -> int | None:
        """One event (after the account's counters were updated: ``n_requests`` includes it;
        ``born_ts``: the account's first request, default ``ts``). Returns the id of the cohort
        the account belongs to, or None."""
        if self.start_ts is None:
            self.start_ts = ts
        cid = self.account_cohort.get(account)
        if cid is not None:
            c = self.cohorts.get(cid)
            if c is not None and c.key == key and c.matches(template_edges(text)):
                c.members[account] += 1
                c.last_ts = max(c.last_ts, ts)
            return cid
        # an account joins at its birth or never: within its first requests and first ``gap_s``
        if (n_requests > self.young_requests or ts < self.start_ts + self.warmup_s
                or (born_ts is not None and ts - born_ts > self.gap_s)):
            return None
        if account not in self.births:
            self.births[account] = (ts if born_ts is None else born_ts, key)
            if len(self.births) > self.max_births:
                self.births.popitem(last=False)
        # a young account beside a running established cohort of the same client: relink now
        # (``link_cohorts``), at each of its first requests (each may bring a new address)
        for k in self.established_by_key.get(key, ()):
            c = self.cohorts.get(k)
            if c is not None and c.last_ts >= ts - self.gap_s:
                self._dirty.add(k)
        edges = template_edges(text)
        best: Cohort | None = None
        for side, edge in (("h", edges[0]), ("t", edges[1])):
            k = self.index.get((key, side, edge))
            c = self.cohorts.get(k) if k is not None else None
            if c is None:
                continue
            if not c.live(ts, self.gap_s):
                if not c.established:
                    self._drop(c)
                continue
            if len(c.members) < self.max_members:
                best = c
                break
        if best is None:
            if len(self.cohorts) >= self.max_cohorts:
                self._evict()
            best = Cohort(self._next, key, edges, text[:160], ts, ts, ts)
            self._next += 1
            self.cohorts[best.cid] = best
            self.index[(key, "h", edges[0])] = best.cid
            self.index[(key, "t", edges[1])] = best.cid
        best.members[account] = 1
        best.last_ts = max(best.last_ts, ts)
        best.last_join_ts = max(best.last_join_ts, ts)
        self.account_cohort[account] = best.cid
        if len(best.members) >= self.min_accounts:
            if not best.established:
                best.established = True
                self.established_by_key[key].append(best.cid)
            self._dirty.add(best.cid)
        return best.cid

    def born_together(self, a: str, b: str) -> bool:
        """Whether one of the two is a member of an established cohort and the other was born
        (first request) with the same request fingerprint while that cohort was taking members
        or running (from ``gap_s`` before its first member to ``gap_s`` after its last request)."""
        for x, y in ((a, b), (b, a)):
            c = self.of(x)
            if c is None:
                continue
            by = self.births.get(y)
            if by is not None and by[1] == c.key and c.first_ts - self.gap_s <= by[0] <= c.last_ts + self.gap_s:
                return True
        return False

    def _drop(self, c: Cohort) -> None:
        self.cohorts.pop(c.cid, None)
        for side, edge in (("h", c.edges[0]), ("t", c.edges[1])):
            if self.index.get((c.key, side, edge)) == c.cid:
                del self.index[(c.key, side, edge)]
        for a in c.members:
            if self.account_cohort.get(a) == c.cid:
                del self.account_cohort[a]

    def _evict(self) -> None:
        """Make room: drop a quarter of the cohorts that are not established, stalest first (the
        stalest established ones only when there are no others)."""
        pool = [c for c in self.cohorts.values() if not c.established] or list(self.cohorts.values())
        for c in sorted(pool, key=lambda c: c.last_ts)[: max(1, len(pool) // 4)]:
            self._drop(c)
            if c.established and c.cid in self.established_by_key.get(c.key, ()):
                self.established_by_key[c.key].remove(c.cid)

    def established(self) -> list[Cohort]:
        return [c for c in self.cohorts.values() if c.established]

    def touch(self, account: str) -> None:
        """Something that can link to ``account``'s established cohort changed (a new address of
        a member): relink at this event (``OnlineDetector.link_cohorts``)."""
        c = self.of(account)
        if c is not None:
            self._dirty.add(c.cid)

    def take_dirty(self) -> list[Cohort]:
        out = [self.cohorts[k] for k in sorted(self._dirty) if k in self.cohorts]
        self._dirty = set()
        return out

    def of(self, account: str) -> Cohort | None:
        cid = self.account_cohort.get(account)
        c = self.cohorts.get(cid) if cid is not None else None
        return c if c is not None and c.established else None
