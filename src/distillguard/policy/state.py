"""The risk board: everything the policy needs per account, in memory, read without I/O.

Writers (all off the request path):

* the detection worker's callback (``board.detector_callback()``): risk, evidence, cluster;
* review actions (admin API in this process: at once; the CLI in another process: through the
  store's account flags, which ``refresh_from_store`` reads every few seconds);
* ``refresh_from_store`` also takes risk/cluster/evidence from the flags the detection worker
  writes (``store_flags_callback``), for accounts this process has no live risk for (detection
  running in another process).

Readers (``RiskPolicy.decide``) only do dict lookups. Updates replace whole immutable records and
whole index dicts, so a reader never sees half an update and needs no lock.

Cluster inheritance: accounts the detector links into one cluster are treated as one actor. The
effective risk of a member is the maximum risk over its cluster, so an account that the detector
puts into a flagged cluster is restricted from its next request, before it has a record of its own.
"""

from __future__ import annotations

import heapq
import math
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("distillguard.policy")

#: account flags holding review state (values: {"at": ts, "by": who, "note": text})
REVIEW_FLAGS = ("banned", "exempt", "verified")


@dataclass(frozen=True)
class AccountRisk:
    risk: float
    cluster: str | None = None
    evidence: tuple[dict[str, Any], ...] = ()
    flagged: bool = False
    source: str = "detector"  # "detector" (live, this process) | "store" (flags written elsewhere)
    updated_at: float = 0.0


@dataclass(frozen=True)
class Review:
    state: str = "none"  # "none" | "exempt" | "verified" | "banned"
    by: str | None = None
    at: float | None = None
    note: str | None = None


NO_REVIEW = Review()
#: a template key too many accounts use to say anything (``RiskBoard.note_template``)
_COMMON: dict[str, float] = {}
NO_RISK = AccountRisk(risk=0.0, source="none")


def _put_bounded(table: OrderedDict[Any, Any], key: Any, value: Any, cap: int) -> None:
    """Insert a new key, dropping the oldest entry once ``table`` holds more than ``cap``
    (another request thread may have dropped it first: that is fine)."""
    table[key] = value
    if len(table) > cap:
        try:
            table.popitem(last=False)
        except KeyError:
            pass


@dataclass(frozen=True)
class Effective:
    """What the policy reads for one account: its own risk, its cluster's, and which won."""

    risk: float
    own: AccountRisk
    cluster: str | None
    cluster_risk: float
    cluster_flagged: bool
    #: the member whose risk the account inherits (None when its own risk is the highest)
    inherited_from: str | None


@dataclass
class _Cluster:
    members: frozenset[str]
    risk: float = 0.0
    top: str | None = None
    flagged: bool = False


def review_from_flags(flags: dict[str, Any]) -> Review:
    """Banned beats exempt beats verified (ban and exempt are kept exclusive by the writers)."""
    for state in REVIEW_FLAGS:
        v = flags.get(state)
        if v:
            d = v if isinstance(v, dict) else {}
            return Review(state=state, by=d.get("by"), at=d.get("at"), note=d.get("note"))
    return NO_REVIEW


class RiskBoard:
    def __init__(self, threshold: float, explain_accounts: int = 100_000) -> None:
        self.threshold = threshold
        self._risk: dict[str, AccountRisk] = {}
        self._review: dict[str, Review] = {}
        self._account_cluster: dict[str, str] = {}
        self._clusters: dict[str, _Cluster] = {}
        self._last: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._explain_cap = explain_accounts
        self._write = threading.Lock()  # writers only; readers never take it
        self._refresher: _Refresher | None = None
        self.last_refresh: float | None = None
        self.refresh_errors = 0
        #: budget key (account, or "cluster:<id>") -> arrival times of requests counted against
        #: its risk budget; only throttled accounts have one, so it stays small
        self._usage: OrderedDict[str, deque[float]] = OrderedDict()
        self._usage_cap = explain_accounts
        #: address -> {flagged account: last arrival time from it}
        self._hot: OrderedDict[str, dict[str, float]] = OrderedDict()
        #: template key (hash of a fingerprint and a template edge) -> {account: last use}
        self._hot_tpl: OrderedDict[int, dict[str, float]] = OrderedDict()
        #: account -> arrival time of the first request this process saw from it
        self._first_seen: OrderedDict[str, float] = OrderedDict()

    # ------------------------------------------------------------------ reads (request path)
    def review(self, account: str) -> Review:
        return self._review.get(account, NO_REVIEW)

    def risk(self, account: str) -> AccountRisk:
        return self._risk.get(account, NO_RISK)

    def effective(self, account: str) -> Effective:
        own = self._risk.get(account, NO_RISK)
        cid = self._account_cluster.get(account)
        c = self._clusters.get(cid) if cid is not None else None
        if c is None or c.risk <= own.risk:
            return Effective(own.risk, own, cid, c.risk if c else 0.0, bool(c and c.flagged), None)
        return Effective(c.risk, own, cid, c.risk, c.flagged, c.top)

    def banned_in_cluster(self, cluster: str | None) -> str | None:
        """A banned member of ``cluster`` (its linked accounts inherit a restriction), or None."""
        if cluster is None:
            return None
        c = self._clusters.get(cluster)
        if c is None:
            return None
        reviews = self._review
        for a in c.members:
            r = reviews.get(a)
            if r is not None and r.state == "banned":
                return a
        return None

    def cluster_members(self, cluster: str) -> frozenset[str]:
        c = self._clusters.get(cluster)
        return c.members if c else frozenset()

    # ------------------------------------------------------------------ writes
    def set_risk(self, account: str, risk: float, *, cluster: str | None = None,
                 evidence: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (), flagged: bool | None = None,
                 source: str = "detector") -> None:
        with self._write:
            self._set_risk_locked(account, risk, cluster, evidence, flagged, source)
            self._reindex_locked({account})

    def _set_risk_locked(self, account: str, risk: float, cluster: str | None, evidence: Any,
                         flagged: bool | None, source: str) -> None:
        risk = float(risk)
        self._risk[account] = AccountRisk(
            risk=risk, cluster=cluster, evidence=tuple(evidence or ()),
            flagged=bool(flagged) if flagged is not None else risk >= self.threshold,
            source=source, updated_at=time.time())

    def update_many(self, records: dict[str, dict[str, Any]], source: str = "detector") -> None:
        """``records``: account -> verdict-like dict (score, cluster, evidence, flagged)."""
        if not records:
            return
        with self._write:
            for account, v in records.items():
                self._set_risk_locked(account, v.get("score", 0.0), v.get("cluster"), v.get("evidence") or (),
                                      v.get("flagged"), source)
            self._reindex_locked(set(records))

    def _reindex_locked(self, changed: set[str]) -> None:
        """Recompute membership and cluster risk for clusters touched by ``changed`` accounts."""
        ac = dict(self._account_cluster)
        touched: set[str] = set()
        for a in changed:
            old = ac.get(a)
            r = self._risk.get(a)
            new = r.cluster if r is not None else None
            if old is not None:
                touched.add(old)
            if new is None:
                ac.pop(a, None)
            else:
                ac[a] = new
                touched.add(new)
        if not touched:
            self._account_cluster = ac
            return
        members: dict[str, set[str]] = {cid: set(self._clusters[cid].members) if cid in self._clusters else set()
                                        for cid in touched}
        for a in changed:
            for cid in touched:
                members[cid].discard(a)
            cid = ac.get(a)
            if cid is not None:
                members[cid].add(a)
        clusters = dict(self._clusters)
        for cid, m in members.items():
            m = {a for a in m if ac.get(a) == cid}
            if not m:
                clusters.pop(cid, None)
                continue
            top = max(m, key=lambda a: self._risk.get(a, NO_RISK).risk)
            risk = self._risk.get(top, NO_RISK).risk
            flagged = any(self._risk.get(a, NO_RISK).flagged for a in m) or risk >= self.threshold
            clusters[cid] = _Cluster(frozenset(m), risk, top, flagged)
        # publish: readers see either the old or the new index, never a mix within one dict
        self._account_cluster = ac
        self._clusters = clusters

    def set_review(self, account: str, review: Review) -> None:
        with self._write:
            rv = dict(self._review)
            if review.state == "none":
                rv.pop(account, None)
            else:
                rv[account] = review
            self._review = rv

    def set_threshold(self, threshold: float) -> None:
        with self._write:
            self.threshold = threshold
            self._reindex_locked(set(self._risk))

    # ------------------------------------------------------------------ detector and store
    def detector_callback(self):
        """A ``DetectionWorker`` ``on_update``: runs on the worker thread after each batch."""

        def on_update(detector: Any, changed: set[str]) -> None:
            self.update_many({a: self._verdict(detector, a) for a in changed if a in detector.accounts})

        return on_update

    def _verdict(self, detector: Any, account: str) -> dict[str, Any]:
        """The detector's verdict, full (with evidence) only where the policy could act on it:
        building evidence sentences for every quiet account after every batch would be waste."""
        st = detector.accounts[account]
        score = getattr(st, "score", None)
        linker = getattr(detector, "linker", None)
        if score is None or linker is None or score >= 0.5 * self.threshold:
            return detector.verdict(account)
        return {"score": score, "cluster": linker.account_cluster.get(account),
                "flagged": getattr(st, "flagged_at", None) is not None, "evidence": ()}

    def refresh_from_store(self, store: Any) -> int:
        """Read review flags (and risk written by a detector elsewhere) from the store's accounts.
        Returns how many accounts changed. One query; run it off the request path."""
        accounts = store.list_accounts()
        changed = 0
        reviews: dict[str, Review] = {}
        risks: dict[str, dict[str, Any]] = {}
        for acc in accounts:
            flags = acc.flags or {}
            r = review_from_flags(flags)
            if r.state != "none":
                reviews[acc.name] = r
            if "risk" in flags and self._risk.get(acc.name, NO_RISK).source != "detector":
                old = self._risk.get(acc.name)
                v = {"score": float(flags.get("risk") or 0.0), "cluster": flags.get("cluster"),
                     "evidence": flags.get("evidence") or (), "flagged": flags.get("risk_flagged")}
                if old is None or old.risk != v["score"] or old.cluster != v["cluster"]:
                    risks[acc.name] = v
        with self._write:
            if reviews != self._review:
                changed += len(set(reviews.items()) ^ set(self._review.items()))
                self._review = reviews
        if risks:
            self.update_many(risks, source="store")
            changed += len(risks)
        self.last_refresh = time.time()
        return changed

    def start_refresher(self, store: Any, interval_s: float = 2.0) -> None:
        """Refresh from the store every ``interval_s`` on a daemon thread (first refresh now)."""
        self.stop_refresher()
        self._refresher = _Refresher(self, store, interval_s)
        self._refresher.start()

    def stop_refresher(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None

    # ------------------------------------------------------------------ risk budget (request path)
    def take_budget(self, key: str, ts: float, limits: list[tuple[float, int]]) -> tuple[list[int], float | None]:
        """Count one request at arrival time ``ts`` against ``key``'s budgets, ``limits`` =
        [(window_s, requests allowed in it), ...]. Returns (requests already counted in each
        window, None) when the request fits every budget, or (those counts, seconds until it
        would fit them all) when it does not (then nothing is counted: a refused request does not
        use the budget).

        Called from the policy on the request path: one deque per key and window, amortised O(1).
        Arrival times are the gateway's (the simulated clock in the arena), so the windows are in
        the same time as detection sees."""
        queues = []
        for window_s, _ in limits:
            qk = f"{key}|{window_s:g}"
            q = self._usage.get(qk)
            if q is None:
                q = self._usage[qk] = deque()
                if len(self._usage) > self._usage_cap:
                    try:
                        self._usage.popitem(last=False)
                    except KeyError:
                        pass
            cutoff = ts - window_s
            while q and q[0] <= cutoff:
                q.popleft()
            queues.append(q)
        used = [len(q) for q in queues]
        wait = 0.0
        for q, (window_s, budget), n in zip(queues, limits, used, strict=True):
            if n >= budget:
                # the window must lose (n - budget + 1) requests before one more fits
                leave = heapq.nsmallest(n - budget + 1, q)[-1]
                wait = max(wait, leave + window_s - ts, 1.0)
        if wait > 0:
            return used, wait
        for q in queues:
            q.append(ts)
        return used, None

    # ------------------------------------------------------------------ account age (request path)
    def account_age(self, account: str, ts: float, created_at: float | None = None, cap: int = 100_000) -> float:
        """Seconds since the account's first request seen here (arrival-time clock), or since its
        creation in the store when that is earlier and on the same clock (``0 < created_at <= ts``:
        a restart does not make an old account new; an arena's simulated clock, which runs behind
        the store's wall-clock ``created_at``, falls back to the first request seen)."""
        first = self._first_seen.get(account)
        if first is None:
            first = self._first_seen[account] = ts
            if len(self._first_seen) > cap:
                try:
                    self._first_seen.popitem(last=False)
                except KeyError:
                    pass
        age = ts - first
        if created_at is not None and 0 < created_at <= ts:
            age = max(age, ts - created_at)
        return max(0.0, age)

    # ------------------------------------------------------------------ flagged addresses (request path)
    def note_flagged_address(self, ip: str, account: str, ts: float, cap: int) -> None:
        """``account`` (flagged) sent a request from ``ip`` at ``ts``."""
        seen = self._hot.get(ip)
        if seen is None:
            _put_bounded(self._hot, ip, {account: ts}, cap)
            return
        if seen.get(account, -1.0) < ts:
            self._hot[ip] = {**seen, account: ts}  # replace, never mutate: readers see a whole dict

    def flagged_at_address(self, ip: str | None, account: str, ts: float, ttl_s: float) -> list[str]:
        """Other flagged accounts that sent from ``ip`` within ``ttl_s`` before ``ts``."""
        if ip is None:
            return []
        seen = self._hot.get(ip)
        if not seen:
            return []
        return sorted(a for a, t in seen.items() if a != account and t > ts - ttl_s)

    # ------------------------------------------------------------------ pipelines (request path)
    def note_template(self, keys: list[int], account: str, ts: float, cap: int, max_accounts: int = 64,
                      refresh_s: float = 600.0) -> None:
        """``account`` sent a request with these template keys at ``ts``. A key that more than
        ``max_accounts`` accounts use is common (a popular app's prompt through the default
        client): it is kept as such and passes nothing on (``flagged_with_template``); a hydra's
        pipeline is used by its own few dozen accounts. An account's time on a key is refreshed
        at most every ``refresh_s`` (each refresh copies the key's small dict)."""
        for key in keys:
            seen = self._hot_tpl.get(key)
            if seen is None:
                _put_bounded(self._hot_tpl, key, {account: ts}, cap)
            elif seen is _COMMON:
                continue
            elif account not in seen and len(seen) >= max_accounts:
                self._hot_tpl[key] = _COMMON
            elif seen.get(account, -math.inf) < ts - refresh_s:
                self._hot_tpl[key] = {**seen, account: ts}  # replace, never mutate

    def flagged_with_template(self, keys: list[int], account: str, ts: float, ttl_s: float,
                              threshold: float) -> list[str]:
        """Other accounts that sent a request with any of these keys within ``ttl_s`` and are
        flagged now (effective risk at or over ``threshold``, on their own or by their cluster)."""
        out: set[str] = set()
        for key in keys:
            seen = self._hot_tpl.get(key)
            if seen and seen is not _COMMON:
                out.update(a for a, t in seen.items() if a != account and t > ts - ttl_s)
        return sorted(a for a in out if self.effective(a).risk >= threshold)

    # ------------------------------------------------------------------ explain
    def record_decision(self, account: str, record: dict[str, Any]) -> None:
        """Keep the last decision per account (bounded; called by the policy per request)."""
        last = self._last
        last[account] = record
        if len(last) > self._explain_cap:
            try:
                last.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                pass

    def last_decision(self, account: str) -> dict[str, Any] | None:
        return self._last.get(account)

    # ------------------------------------------------------------------ listing (admin, CLI)
    def flagged(self, min_risk: float | None = None) -> list[dict[str, Any]]:
        """Accounts at or above ``min_risk`` (default: the threshold) on their own or through
        their cluster, highest first, with evidence, cluster and review state."""
        floor = self.threshold if min_risk is None else min_risk
        out = []
        for a in set(self._risk) | set(self._account_cluster):
            eff = self.effective(a)
            if eff.risk < floor and not eff.own.flagged:
                continue
            out.append(self.describe(a, eff))
        out.sort(key=lambda d: (-d["effective_risk"], d["account"]))
        return out

    def describe(self, account: str, eff: Effective | None = None) -> dict[str, Any]:
        eff = eff or self.effective(account)
        rv = self.review(account)
        return {
            "account": account,
            "risk": round(eff.own.risk, 6),
            "effective_risk": round(eff.risk, 6),
            "flagged": eff.own.flagged,
            "cluster": eff.cluster,
            "cluster_flagged": eff.cluster_flagged,
            "cluster_size": len(self.cluster_members(eff.cluster)) if eff.cluster else 0,
            "inherited_from": eff.inherited_from,
            "evidence": list(eff.own.evidence),
            "review": rv.state,
            "review_by": rv.by,
            "review_note": rv.note,
            "source": eff.own.source,
        }

    def verdicts(self) -> list[dict[str, Any]]:
        """Verdict-shaped records (shared/spec/verdicts.md fields the intel export reads)."""
        return [{"account": a, "score": r.risk, "flagged": r.flagged, "cluster": r.cluster, "evidence": list(r.evidence)}
                for a, r in sorted(self._risk.items())]

    def clusters(self) -> dict[str, dict[str, Any]]:
        return {cid: {"members": sorted(c.members), "risk": round(c.risk, 6), "top": c.top, "flagged": c.flagged}
                for cid, c in self._clusters.items()}


@dataclass
class _Refresher:
    board: RiskBoard
    store: Any
    interval_s: float
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="distillguard-policy-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self.board.refresh_from_store(self.store)
            except Exception:  # noqa: BLE001 - a store hiccup must not stop later refreshes
                self.board.refresh_errors += 1
                log.exception("policy board: refreshing review state from the store failed")
            self._halt.wait(self.interval_s)
