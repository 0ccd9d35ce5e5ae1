"""The online detector: one pass over the event stream, bounded state per account.

For each batch of events (in arrival order):

1. per-event derived data that is cheap to batch: reasoning-elicitation probabilities (one
   classifier call) and prompt embeddings for the events chosen for embedding (one cached MiniLM
   call; every prompt of an account's first ``embed_full_first``, then one in ``embed_every``);
2. then, event by event, update the account's sketches (behaviour counters, template slots, topic
   sums, link attributes) and score the account with what it has sent *so far*;
3. every ``link_every_events`` events, relink accounts, recompute clusters and give each member
   the risk of its cluster taken as one actor (a hydra's members are each too small to score).

An account's ``score`` is the highest risk it reached (the risk that decides ``flagged``), and
``flagged_at`` is the ``ts`` of the event at which it first reached the threshold. Nothing reads
the wall clock or later events, so a replay gives honest ``flagged_at`` and
``requests_before_flag``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.detect.config import DetectConfig
from distillguard.detect.coordination import CohortTracker, LinkState, Linker
from distillguard.detect.datagen import DataGenScorer
from distillguard.detect.embed import Embedder
from distillguard.detect.features import BehaviourState
from distillguard.detect.reasoning import ReasoningScorer, default_scorer
from distillguard.detect.reference import builtin_reference_prompts, load_calibration
from distillguard.detect.risk import Signal, combine
from distillguard.detect.templates import MinHasher, TemplateIndex, TemplateTracker, short_hash, system_prompt, user_text
from distillguard.detect.topics import ReferenceModel, TopicState, topic_signals
from distillguard.events import ExchangeEvent

log = logging.getLogger(__name__)

MAX_TEMPLATE_INSERTS = 32
TEMPLATE_ESTABLISHED = 3
TOPIC_EVIDENCE_MIN = 8


@dataclass
class AccountState:
    name: str
    behaviour: BehaviourState = field(default_factory=BehaviourState)
    templates: TemplateTracker = field(default_factory=TemplateTracker)
    topics: TopicState = field(default_factory=TopicState)
    links: LinkState = field(default_factory=LinkState)
    template_inserts: int = 0
    score: float = 0.0
    own_risk: float = 0.0
    peak_own: float = 0.0
    cluster_risk: float = 0.0
    peak_cluster: float = 0.0
    flagged_at: float | None = None
    requests_before_flag: int | None = None
    last_ts: float = 0.0


@dataclass
class PreparedBatch:
    """A batch with its batched per-event data (see ``OnlineDetector.prepare``)."""

    events: list[ExchangeEvent]
    texts: list[str]
    reasoning_p: np.ndarray
    datagen_p: np.ndarray
    vectors: dict[int, np.ndarray]
    phis: dict[int, np.ndarray]


class OnlineDetector:
    """Incremental distillation detector. ``embedder=None`` turns the embedding stage (topic and
    centroid signals) off, for fast tests; the product passes ``MiniLMEmbedder``."""

    def __init__(self, config: DetectConfig | None = None, *, embedder: Embedder | None = None,
                 threshold: float | None = None, reference_prompts: list[str] | None = None,
                 reasoning: ReasoningScorer | None = None) -> None:
        self.config = cfg = config or DetectConfig()
        self.embedder = embedder
        calibration: dict[str, Any] = {}
        if cfg.threshold_file is not None:
            calibration = load_calibration(cfg.threshold_file)
        if threshold is not None:
            self.threshold = float(threshold)
        elif calibration:
            self.threshold = float(calibration["threshold"])
        else:
            self.threshold = cfg.default_threshold
        self.calibrated = threshold is not None or bool(calibration)
        if calibration and embedder is not None and calibration.get("embedder") not in (None, embedder.name):
            raise ValueError(f"threshold file was calibrated with embedder {calibration.get('embedder')!r} but "
                             f"this detector embeds with {embedder.name!r}; re-run `distillguard detect calibrate`")
        self.reasoning = reasoning or default_scorer()
        self.datagen = DataGenScorer()
        self.minhash = MinHasher(num_perm=32, seed=cfg.seed)
        self.template_index = TemplateIndex(num_perm=32)
        self.linker = Linker(max_shared=cfg.link_max_shared, min_weight=cfg.link_min_weight,
                             min_requests=cfg.link_min_requests)
        #: sybil cohorts: new accounts that start one pipeline together are linked at once (see
        #: ``CohortTracker``, ``link_cohorts``); None when ``cohort_min_accounts`` is 0
        self.cohorts: CohortTracker | None = (
            CohortTracker(young_requests=cfg.cohort_young_requests, gap_s=cfg.cohort_gap_s,
                          min_accounts=cfg.cohort_min_accounts, max_members=cfg.link_max_shared,
                          warmup_s=cfg.cohort_warmup_s)
            if cfg.cohort_min_accounts > 0 else None)
        self.accounts: dict[str, AccountState] = {}
        self.events_seen = 0
        #: ``events_seen`` at the last relink (cohort relinks are at most one per
        #: ``cohort_relink_every_events`` events)
        self._last_relink = -(10**9)
        #: events prepared per account (decides which prompts are embedded; see ``prepare``)
        self._prepared: dict[str, int] = {}
        self.clock = 0.0
        self.ref: ReferenceModel | None = None
        self.reference_prompts = reference_prompts or calibration.get("reference_prompts") or builtin_reference_prompts()
        if embedder is not None:
            emb = embedder.embed(list(self.reference_prompts))
            self.ref = ReferenceModel(emb, n_features=cfg.mmd_features, bandwidth=cfg.mmd_bandwidth, seed=cfg.seed)

    # ------------------------------------------------------------------ ingestion
    def process(self, event: ExchangeEvent) -> None:
        self.process_batch([event])

    def process_batch(self, events: list[ExchangeEvent]) -> set[str]:
        """Score a batch in order; returns the accounts whose state changed."""
        return self.apply(self.prepare(events))

    def process_stream(self, batches: Iterable[list[ExchangeEvent]],
                       on_batch: Callable[[int], None] | None = None) -> int:
        """Score a stream of batches with the embedding of batch k+1 overlapping the scoring of
        batch k (offline replay: MiniLM runs in torch, which releases the GIL, so a second core
        embeds while this one updates the sketches). The result is identical to calling
        ``process_batch`` on each batch in turn. Returns the number of events."""
        from concurrent.futures import ThreadPoolExecutor

        total = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distillguard-embed") as pool:
            it = iter(batches)
            first = next(it, None)
            if first is None:
                return 0
            pending = pool.submit(self.prepare, first)
            for nxt in it:
                ready = pending.result()
                pending = pool.submit(self.prepare, nxt)
                self.apply(ready)
                total += len(ready.events)
                if on_batch:
                    on_batch(len(ready.events))
            ready = pending.result()
            self.apply(ready)
            total += len(ready.events)
            if on_batch:
                on_batch(len(ready.events))
        return total

    def prepare(self, events: list[ExchangeEvent]) -> PreparedBatch:
        """The per-event data that is cheap to batch: prompt texts, reasoning probabilities, and
        embeddings of the events picked for embedding. Picks depend only on how many events of
        each account were prepared before, so batches must be prepared in stream order (they may
        be prepared while the previous batch is being applied)."""
        cfg = self.config
        texts = [user_text(ev.request) for ev in events]
        reasoning_p = self.reasoning.score(texts) if events else np.zeros(0)
        datagen_p = self.datagen.score(texts)
        vectors: dict[int, np.ndarray] = {}
        phis: dict[int, np.ndarray] = {}
        if self.embedder is not None and self.ref is not None:
            pick: list[int] = []
            for i, ev in enumerate(events):
                k = self._prepared.get(ev.account, 0)
                self._prepared[ev.account] = k + 1
                if texts[i].strip() and (k < cfg.embed_full_first or k % cfg.embed_every == 0):
                    pick.append(i)
            if pick:
                emb = self.embedder.embed([texts[i] for i in pick])
                phi = self.ref.features(emb)
                for j, i in enumerate(pick):
                    vectors[i] = emb[j]
                    phis[i] = phi[j]
        return PreparedBatch(events, texts, reasoning_p, datagen_p, vectors, phis)

    def apply(self, batch: PreparedBatch) -> set[str]:
        """Update the accounts' sketches and scores event by event, in order."""
        changed: set[str] = set()
        cfg = self.config
        for i, ev in enumerate(batch.events):
            self._update(ev, batch.texts[i], float(batch.reasoning_p[i]), batch.vectors.get(i), batch.phis.get(i),
                         float(batch.datagen_p[i]))
            changed.add(ev.account)
            self.events_seen += 1
            if self.events_seen % cfg.link_every_events == 0:
                changed |= self.relink()
            elif self.cohorts is not None and self.events_seen - self._last_relink >= cfg.cohort_relink_every_events:
                changed |= self.link_cohorts()
        return changed

    def _update(self, ev: ExchangeEvent, text: str, rp: float, vec: np.ndarray | None, phi: np.ndarray | None,
                dp: float = 0.0) -> None:
        cfg = self.config
        st = self.accounts.get(ev.account)
        if st is None:
            st = self.accounts[ev.account] = AccountState(ev.account, templates=TemplateTracker(slots=cfg.template_slots))
            st.links.bucket_cap = cfg.time_buckets_kept
        self.clock = max(self.clock, ev.ts)
        st.last_ts = ev.ts
        sp = system_prompt(ev.request)
        sp_hash = short_hash(sp) if sp else None
        resp = ev.response
        st.behaviour.update(ev.ts, ev.request, resp.completion_tokens if resp else 0,
                            resp.prompt_tokens if resp else 0, sp_hash, rp, text, cfg.max_tokens_maximal, dp)
        slot = st.templates.add(self.minhash.text_signature(text), text)
        if (slot.count >= TEMPLATE_ESTABLISHED and slot.global_key is None
                and st.template_inserts < MAX_TEMPLATE_INSERTS):
            slot.global_key, others = self.template_index.add_and_query(ev.account, slot.sig)
            st.template_inserts += 1
            self.linker.observe_template(ev.account, others, slot.example)
        links = st.links
        # the first few IPs and user agents of an account are enough to link it; keeps state bounded
        if ev.ip and (ev.ip in links.ips or len(links.ips) < 16):
            if ev.ip not in links.ips:
                self.linker.observe(ev.account, "ip", ev.ip)
                if self.cohorts is not None:
                    # a cohort member on a new address may link an account born beside the cohort
                    self.cohorts.touch(ev.account)
            links.ips[ev.ip] += 1
        if ev.user_agent and (ev.user_agent in links.uas or len(links.uas) < 8):
            if ev.user_agent not in links.uas:
                self.linker.observe(ev.account, "user_agent", ev.user_agent)
            links.uas[ev.user_agent] += 1
        if sp_hash and st.behaviour.system.get(sp_hash) == 1:
            self.linker.observe(ev.account, "system_prompt", sp_hash)
        links.add_bucket(int(ev.ts // cfg.lockstep_bucket_s))
        links.add_prompt_hash(int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"))
        if vec is not None and phi is not None:
            st.topics.add(vec, phi)
        if self.cohorts is not None and text.strip():
            self.cohorts.observe(ev.account, st.behaviour.n, ev.ts, text,
                                 CohortTracker.fingerprint(ev.request, ev.endpoint, ev.user_agent),
                                 st.behaviour.first_ts)
        own, _ = self._score(st)
        st.own_risk = own
        st.peak_own = max(st.peak_own, own)
        self._raise(st, max(own, st.cluster_risk), ev.ts)

    def _raise(self, st: AccountState, risk: float, ts: float) -> None:
        st.score = max(st.score, risk)
        if st.flagged_at is None and risk >= self.threshold:
            st.flagged_at = ts
            st.requests_before_flag = st.behaviour.n

    # ------------------------------------------------------------------ scoring
    def signals(self, st: AccountState, detail: bool = True) -> list[Signal]:
        """The account's signals now; ``detail=False`` skips the reviewer sentences (hot path)."""
        b = st.behaviour
        out = []
        for name, fn in (("reasoning_elicitation", b.reasoning), ("data_generation", b.data_generation),
                         ("harvesting", b.harvesting),
                         ("volume", b.volume), ("persistence", b.persistence), ("time_regularity", b.time_regularity),
                         ("param_uniformity", b.param_uniformity), ("single_turn", b.single_turn_share),
                         ("fixed_system_prompt", b.fixed_system_prompt)):
            v, d = fn(detail)
            out.append(Signal(name, v, d))
        reuse = st.templates.reuse_rate()
        if st.templates.table:
            d = ""
            if detail:
                top = st.templates.top()
                d = (f"{reuse:.0%} of prompts reuse an earlier skeleton; top one in {top.count:,} of {b.n:,} requests, "
                     f'e.g. "{top.example[:120]}"')
            out.append(Signal("template_reuse", reuse, d))
        out.extend(self._topic_signals(st.topics, detail))
        return out

    def _topic_signals(self, t: TopicState, detail: bool, pooled: bool = False) -> list[Signal]:
        if self.ref is None or t.m < 2:
            return []
        if t.cache is None or t.cache[0] != t.m:
            t.cache = (t.m, topic_signals(t, self.ref))
        ts = t.cache[1]
        if not detail:
            return [Signal("topic_concentration", ts.concentration, ""), Signal("topic_sweep", ts.sweep, ""),
                    Signal("mmd_distance", ts.mmd, ""), Signal("prompt_novelty", ts.novelty, "")]
        who = "pooled over the cluster: " if pooled else ""
        return [
            Signal("topic_concentration", ts.concentration,
                   f"{who}prompt embeddings' mean cosine {ts.raw_concentration:.2f} vs {self.ref.concentration:.2f} "
                   f"in the benign reference ({t.m} prompts embedded)"),
            Signal("topic_sweep", ts.sweep,
                   f"{who}{t.novel} distinct prompts in one area, {t.novelty_rate():.0%} of them new (systematic coverage)"),
            Signal("mmd_distance", ts.mmd,
                   f"{who}MMD^2 to the benign reference {ts.raw_mmd2:.3f} (z = {ts.mmd_z:.1f} over the "
                   f"{t.m}-sample noise floor)"),
            Signal("prompt_novelty", ts.novelty,
                   f"{who}{ts.novelty:.0%} of embedded prompts are new (no near-duplicate among the recent ones)"),
        ]

    def _score(self, st: AccountState, detail: bool = False) -> tuple[float, list[Signal]]:
        sig = self.signals(st, detail)
        return combine(sig, self.config.weights, st.behaviour.n, self.config.shrinkage_requests, detail)

    # ------------------------------------------------------------------ coordination
    def relink(self) -> set[str]:
        """Recompute account links and clusters now (at the current event); give members their
        cluster's risk. Returns accounts whose risk or cluster changed."""
        centroids: dict[str, np.ndarray] = {}
        counts = {a: st.behaviour.n for a, st in self.accounts.items()}
        if self.ref is not None:
            for a, st in self.accounts.items():
                c = st.topics.centroid()
                if c is not None and st.topics.m >= self.config.link_min_requests:
                    centroids[a] = c - self.ref.mean_unit
        self._last_relink = self.events_seen
        before = dict(self.linker.account_cluster)
        clusters = self.linker.recompute(self.accounts, centroids, counts, {a: s.links for a, s in self.accounts.items()},
                                         self.cohorts)
        if self.cohorts is not None:
            self.cohorts.take_dirty()  # the relink linked them all
        changed = {a for a in set(before) | set(self.linker.account_cluster)
                   if before.get(a) != self.linker.account_cluster.get(a)}
        in_cluster = set(self.linker.account_cluster)
        for a, st in self.accounts.items():
            if a not in in_cluster:
                st.cluster_risk = 0.0
        for cid, members in clusters.items():
            risk, _ = self._cluster_risk(cid, members, detail=False)
            for a in members:
                st = self.accounts[a]
                st.cluster_risk = risk
                st.peak_cluster = max(st.peak_cluster, risk)
                if risk > st.score:
                    changed.add(a)
                self._raise(st, risk, self.clock)
        return changed

    def link_cohorts(self) -> set[str]:
        """Relink now (at this event) when a sybil cohort was established or grew, or an account
        was born beside a running one, since the last relink: its members and the accounts born
        with it are linked at once, not at the next periodic relink. At most one such relink per
        ``cohort_relink_every_events`` events, counted in the stream (not per batch, so
        ``flagged_at`` does not depend on how the stream was batched). Returns the accounts whose
        risk or cluster changed."""
        if not self.cohorts.take_dirty():
            return set()
        return self.relink()

    def _cohort_parts(self, members: list[str]) -> tuple[int, int, str | None]:
        """(accounts in established cohorts, their requests through the cohorts' templates, an
        example prompt) for a cluster's members."""
        if self.cohorts is None:
            return 0, 0, None
        seen: dict[int, object] = {}
        for a in members:
            c = self.cohorts.of(a)
            if c is not None:
                seen[c.cid] = c
        accounts = sum(len(c.members) for c in seen.values())
        matched = sum(sum(c.members.values()) - 1 for c in seen.values())
        example = next((c.example for c in seen.values()), None)
        return accounts, matched, example

    def _cluster_risk(self, cid: str, members: list[str], detail: bool = True) -> tuple[float, list[Signal]]:
        """Score the cluster as one actor: request-weighted member signals, pooled topic sums and
        volume, plus the coordination evidence itself."""
        states = [self.accounts[a] for a in members]
        n = sum(s.behaviour.n for s in states)
        pooled = TopicState()
        for s in states:
            pooled = pooled.merged(s.topics)
        sums: dict[str, float] = {}
        details: dict[str, str] = {}
        for s in states:
            for sig in self.signals(s, detail):
                if sig.name in ("topic_concentration", "topic_sweep", "mmd_distance", "prompt_novelty", "volume",
                                "persistence"):
                    continue
                sums[sig.name] = sums.get(sig.name, 0.0) + sig.value * s.behaviour.n
                details.setdefault(sig.name, sig.detail)
        cohort_accounts, cohort_matched, cohort_example = self._cohort_parts(members)
        if cohort_accounts:
            # one template poured through all the cohort's accounts: reuse is cluster-wide, not per member
            pooled_reuse = min(1.0, cohort_matched / max(1, n))
            if pooled_reuse > sums.get("template_reuse", 0.0) / max(1, n):
                sums["template_reuse"] = pooled_reuse * n
                details["template_reuse"] = (f"{cohort_matched + 1:,} of the cluster's {n:,} requests go through one "
                                             f'template, e.g. "{(cohort_example or "")[:120]}"')
        out = [Signal(k, v / max(1, n), f"cluster-wide ({len(members)} accounts, request-weighted {v / max(1, n):.0%}); "
                      f"this member: {details[k]}" if detail else "") for k, v in sums.items()]
        if cohort_accounts:
            strength = min(1.0, (cohort_accounts - 1) / 9)
            out.append(Signal("cohort", strength,
                              f"{cohort_accounts} accounts started together: each began sending one prompt template "
                              f"with identical parameters and client while the others were active (a hydra scaling "
                              f"out: sustained effort spread over accounts, not over time)" if detail else ""))
        total_days = len(set().union(*(s.behaviour.days for s in states)))
        out.append(Signal("volume", min(1.0, float(np.log1p(n) / np.log1p(5000))),
                          f"{n:,} requests across {len(members)} linked accounts on {total_days} day(s)" if detail else ""))
        total_hours = len(set().union(*(s.behaviour.hours_active for s in states)))
        total_slots = len(set().union(*(s.behaviour.slots_active for s in states)))
        out.append(Signal("persistence", min(1.0, max(0.0, (total_days - 1) / 4, (total_hours - 2) / 10,
                                                      (total_slots - 4) / 24)),
                          f"the linked accounts were active in {total_hours} clock hour(s) on {total_days} distinct "
                          f"day(s)" if detail else ""))
        out.extend(self._topic_signals(pooled, detail, pooled=True))
        value, text = self.linker.describe(cid) if detail else (self.linker.strength(cid), "")
        out.append(Signal("coordination", value, text))
        return combine(out, self.config.weights, n, self.config.shrinkage_requests, detail)

    # ------------------------------------------------------------------ results
    def finish(self) -> None:
        """Final relink at the end of a replay (at the last event's time)."""
        if self.accounts:
            self.relink()

    def verdict(self, account: str) -> dict[str, Any]:
        st = self.accounts.get(account)
        if st is None:
            raise KeyError(f"account {account!r} has no events")
        cid = self.linker.account_cluster.get(account)
        # explain the score: the cluster's evidence when the cluster's risk is what raised it
        if cid is not None and st.peak_cluster > st.peak_own:
            _, signals = self._cluster_risk(cid, self.linker.clusters[cid])
            signals = sorted(signals, key=lambda s: s.name != "coordination")
        else:
            _, signals = self._score(st, detail=True)
            if cid is not None:
                value, text = self.linker.describe(cid)
                signals.append(Signal("coordination", value, text))
        if st.topics.m < TOPIC_EVIDENCE_MIN and not (cid is not None and st.peak_cluster > st.peak_own):
            # a handful of embedded prompts moves the (shrunk) risk little; do not show it as evidence
            signals = [s for s in signals if s.name not in ("topic_concentration", "topic_sweep", "mmd_distance",
                                                            "prompt_novelty")]
        evidence = [s.as_evidence() for s in signals if s.value >= 0.05][:8]
        return {
            "account": account,
            "score": round(float(st.score), 6),
            "flagged": st.flagged_at is not None,
            "flagged_at": st.flagged_at,
            "requests_before_flag": st.requests_before_flag,
            "requests": st.behaviour.n,
            "cluster": cid,
            "evidence": evidence,
        }

    def verdicts(self) -> list[dict[str, Any]]:
        return [self.verdict(a) for a in sorted(self.accounts)]

    def clusters(self) -> dict[str, list[str]]:
        return dict(self.linker.clusters)


def build_detector(config: DetectConfig | None = None, *, threshold: float | None = None,
                   threshold_file: Path | None = None, embedder: Embedder | None | str = "minilm") -> OnlineDetector:
    """The product detector: MiniLM embeddings unless the config turns embeddings off."""
    cfg = (config or DetectConfig()).model_copy()
    if threshold_file is not None:
        cfg.threshold_file = threshold_file
    if embedder == "minilm":
        if cfg.embeddings:
            from distillguard.detect.embed import MiniLMEmbedder

            embedder = MiniLMEmbedder(max_seq_length=cfg.embed_max_seq_length, batch_size=cfg.embed_batch_size,
                                      threads=cfg.embed_threads, dtype=cfg.embed_dtype)
        else:
            embedder = None
    det = OnlineDetector(cfg, embedder=embedder, threshold=threshold)  # type: ignore[arg-type]
    if not det.calibrated:
        log.warning("no detection threshold file: using the uncalibrated default %.2f; run `distillguard detect "
                    "calibrate` on benign traffic and set detect.threshold_file", det.threshold)
    return det


# ---------------------------------------------------------------------- live worker
RiskCallback = Callable[[OnlineDetector, set[str]], None]


class DetectionWorker(threading.Thread):
    """Pulls event batches from the bus and feeds the detector, off the request path."""

    def __init__(self, detector: OnlineDetector, subscription: Any, on_update: RiskCallback | None = None,
                 batch: int = 256, timeout_s: float = 0.5, relink_idle_s: float = 30.0) -> None:
        super().__init__(name="distillguard-detect", daemon=True)
        self.detector = detector
        self.subscription = subscription
        self.on_update = on_update
        self.batch = batch
        self.timeout_s = timeout_s
        self._halt = threading.Event()
        self.lock = threading.Lock()
        self.processed = 0
        self.errors = 0
        #: live traffic may be too thin to reach ``link_every_events`` for hours, so an idle worker
        #: relinks accounts once new events have waited ``relink_idle_s`` (replay never does this)
        self.relink_idle_s = relink_idle_s
        self._pending_since: float | None = None

    def stop(self, join_timeout: float | None = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(join_timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                events = self.subscription.get_batch(self.batch, self.timeout_s)
                if not events:
                    if self._pending_since is not None and time.monotonic() - self._pending_since >= self.relink_idle_s:
                        with self.lock:
                            changed = self.detector.relink()
                        self._pending_since = None
                        if self.on_update is not None and changed:
                            self.on_update(self.detector, changed)
                    continue
                with self.lock:
                    changed = self.detector.process_batch(events)
                    self.processed += len(events)
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
                if self.on_update is not None and changed:
                    self.on_update(self.detector, changed)
            except Exception:  # the worker must outlive one bad batch; the error is logged
                self.errors += 1
                log.exception("detection worker failed on a batch")


def store_flags_callback(store: Any) -> RiskCallback:
    """Push each changed account's risk, evidence and cluster into the store's account flags
    (keys ``risk``, ``evidence``, ``cluster``, plus ``risk_flagged``, ``risk_flagged_at`` and
    ``risk_requests``, the requests scored); unknown accounts are skipped."""

    def push(detector: OnlineDetector, changed: set[str]) -> None:
        for name in sorted(changed):
            acct = store.get_account(name)
            if acct is None:
                continue
            v = detector.verdict(name)
            flags = dict(acct.flags)
            flags.update(risk=v["score"], evidence=v["evidence"], cluster=v["cluster"], risk_flagged=v["flagged"],
                         risk_requests=v["requests"], risk_flagged_at=v["flagged_at"])
            store.update_account(name, flags=flags)

    return push


def iter_batches(events: Iterable[ExchangeEvent], size: int) -> Iterable[list[ExchangeEvent]]:
    batch: list[ExchangeEvent] = []
    for ev in events:
        batch.append(ev)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = ["OnlineDetector", "DetectionWorker", "build_detector", "store_flags_callback"]
