"""STIX 2.1 threat intelligence: export flagged distillation clusters, import others' indicators.

Export (``build_bundle``), from detection verdicts (shared/spec/verdicts.md) and the exchange
events behind them:

* an Identity for the producer and the AttackPattern MITRE ATLAS AML.T0024.002 (Extract AI Model);
* per flagged cluster (a detector cluster with a flagged member, or a flagged account alone):
  a ThreatActor; an Identity per member account, ``related-to`` the actor and to the cluster's
  first member (the linked accounts); the actor ``uses`` the attack pattern;
* Indicators, each ``indicates`` the attack pattern and the actor: client IPs, user agents, and
  prompt-template fingerprints (SHA-256 of the head/tail of the prompt skeleton, see
  ``intel.indicators``; the cluster's dominant template's MinHash signature in
  ``x_distillguard_template_minhash``).

What never leaves unless a flag says so: account names (pseudonyms: keyed HMAC of the name,
``--include-account-names`` to send the names), prompts and evidence sentences that quote them
(``--include-prompts``), API keys and key ids (never). Indicators that would hit legitimate
traffic are not exported: an IP, user agent or template fingerprint also seen from an account
outside the flagged clusters is dropped (shared NATs, common SDK user agents, ordinary phrasing).

Import (``import_bundle``): ``stix2.parse`` validates the bundle (custom ``x_`` properties
allowed); indicators with patterns we can match are written to the indicator file the policy
reads (``intel.indicators``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distillguard.intel.indicators import (
    IndicatorError,
    IndicatorSet,
    fingerprint_windows,
    ip_pattern,
    load_indicators,
    save_indicators,
    template_pattern,
    user_agent_pattern,
)

ATLAS_ID = "AML.T0024.002"
ATLAS_URL = "https://atlas.mitre.org/techniques/AML.T0024.002"
MINHASH_PERM = 64
MINHASH_SEED = 1234
#: requests per cluster whose MinHash feeds the dominant-template signature
MINHASH_SAMPLE = 400


@dataclass
class ExportOptions:
    producer: str = "DistillGuard"
    include_prompts: bool = False
    include_account_names: bool = False
    #: HMAC key for pseudonyms; None = random per export (pseudonyms do not link across exports)
    salt: bytes | None = None
    #: a template fingerprint must occur this many times in a cluster (and in this share of its
    #: requests) to be exported
    min_template_count: int = 5
    min_template_share: float = 0.05
    max_ips: int = 64
    max_user_agents: int = 8
    max_templates: int = 12
    #: TLP marking on every object (None for no marking)
    tlp: str | None = "amber"


@dataclass
class _Group:
    key: str
    members: set[str] = field(default_factory=set)
    score: float = 0.0
    evidence: list[dict[str, Any]] = field(default_factory=list)
    ips: Counter = field(default_factory=Counter)
    uas: Counter = field(default_factory=Counter)
    fps: Counter = field(default_factory=Counter)
    fp_scope: dict[str, tuple[str, int]] = field(default_factory=dict)
    events: int = 0
    first: float | None = None
    last: float | None = None
    tracker: Any = None


def _dt(ts: float | None) -> datetime:
    return datetime.fromtimestamp(ts if ts is not None else 0.0, tz=timezone.utc)


def pseudonym(name: str, salt: bytes) -> str:
    return "acct-" + hmac.new(salt, name.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def build_bundle(verdicts: Iterable[dict[str, Any]], events: Iterable[Any], options: ExportOptions | None = None) -> Any:
    """A ``stix2.Bundle``. ``events`` are ExchangeEvent objects (or dicts in the events format)."""
    import stix2

    from distillguard.detect.templates import MinHasher, TemplateTracker, shingles, user_text

    opt = options or ExportOptions()
    salt = opt.salt if opt.salt is not None else secrets.token_bytes(16)
    verdicts = list(verdicts)
    # groups: a cluster with a flagged member, or a flagged account without a cluster
    cluster_flagged = {v["cluster"] for v in verdicts if v.get("flagged") and v.get("cluster")}
    groups: dict[str, _Group] = {}
    member_of: dict[str, _Group] = {}
    for v in verdicts:
        cid = v.get("cluster")
        if cid in cluster_flagged:
            key = f"cluster {cid}"
        elif v.get("flagged"):
            key = f"account {v['account']}"
        else:
            continue
        g = groups.setdefault(key, _Group(key))
        g.members.add(v["account"])
        if float(v.get("score") or 0.0) >= g.score:
            g.score = float(v.get("score") or 0.0)
            g.evidence = list(v.get("evidence") or [])
        member_of[v["account"]] = g

    hasher = MinHasher(num_perm=MINHASH_PERM, seed=MINHASH_SEED)
    others_ips: set[str] = set()
    others_uas: set[str] = set()
    others_fps: set[str] = set()
    for ev in events:
        e = ev if isinstance(ev, dict) else ev.model_dump()
        text = user_text(e.get("request") or {})
        fps = fingerprint_windows(text) if text else []
        g = member_of.get(e.get("account"))
        if g is None:
            if e.get("ip"):
                others_ips.add(e["ip"])
            if e.get("user_agent"):
                others_uas.add(e["user_agent"])
            others_fps.update(d for _, _, d in fps)
            continue
        g.events += 1
        ts = float(e["ts"])
        g.first = ts if g.first is None else min(g.first, ts)
        g.last = ts if g.last is None else max(g.last, ts)
        if e.get("ip"):
            g.ips[e["ip"]] += 1
        if e.get("user_agent"):
            g.uas[e["user_agent"]] += 1
        for scope, k, d in fps:
            g.fps[d] += 1
            g.fp_scope[d] = (scope, k)
        if text and g.events <= MINHASH_SAMPLE:
            if g.tracker is None:
                g.tracker = TemplateTracker(slots=16)
            g.tracker.add(hasher.signature(shingles(text)), text)

    marking = None
    if opt.tlp:
        marking = {"white": stix2.TLP_WHITE, "green": stix2.TLP_GREEN, "amber": stix2.TLP_AMBER,
                   "red": stix2.TLP_RED}[opt.tlp]
    common: dict[str, Any] = {"object_marking_refs": [marking]} if marking is not None else {}
    producer = stix2.Identity(name=opt.producer, identity_class="organization",
                              description="Model API operator running DistillGuard distillation detection.", **common)
    common["created_by_ref"] = producer.id
    attack = stix2.AttackPattern(
        name="Extract AI Model",
        description="Adversaries query a model API at scale to collect outputs (answers, reasoning, logprobs) "
                    "and train a copy of the model (capability extraction / distillation).",
        external_references=[{"source_name": "mitre-atlas", "external_id": ATLAS_ID, "url": ATLAS_URL}],
        **common)
    objects: list[Any] = ([marking] if marking is not None else []) + [producer, attack]

    for key in sorted(groups):
        g = groups[key]
        members = sorted(g.members)
        names = {m: (m if opt.include_account_names else pseudonym(m, salt)) for m in members}
        label = key.split(" ", 1)[1] if key.startswith("cluster") else names[members[0]]
        signals = [{"signal": e.get("signal"), "value": e.get("value")} for e in g.evidence]
        if opt.include_prompts:
            signals = [dict(e) for e in g.evidence]
        actor = stix2.ThreatActor(
            name=f"distillation campaign {label}",
            description=f"{len(members)} linked API account(s) flagged for model extraction by DistillGuard "
                        f"(risk {g.score:.2f}, {g.events} requests observed).",
            first_seen=_dt(g.first), last_seen=_dt(g.last) if g.last and g.first and g.last > g.first else None,
            x_distillguard_cluster=label, x_distillguard_accounts=len(members), x_distillguard_risk=round(g.score, 4),
            x_distillguard_requests=g.events, x_distillguard_signals=signals,
            x_distillguard_pseudonymous=not opt.include_account_names,
            allow_custom=True, **{k: v for k, v in common.items()})
        objects += [actor, stix2.Relationship(actor, "uses", attack, **common)]
        idents = []
        for m in members:
            ident = stix2.Identity(name=names[m], identity_class="unknown",
                                   description="API account linked into this campaign by the detector", **common)
            idents.append(ident)
            objects += [ident, stix2.Relationship(ident, "related-to", actor, description="member account", **common)]
        for ident in idents[1:]:
            objects.append(stix2.Relationship(ident, "related-to", idents[0], description="linked account", **common))

        valid_from = _dt(g.first)
        indicators: list[Any] = []
        for ip, n in [(ip, n) for ip, n in g.ips.most_common() if ip not in others_ips][: opt.max_ips]:
            indicators.append(stix2.Indicator(
                name=f"client IP of distillation campaign {label}", pattern=ip_pattern(ip), pattern_type="stix",
                indicator_types=["malicious-activity"], valid_from=valid_from, x_distillguard_kind="ip",
                x_distillguard_count=n, allow_custom=True, **common))
        for ua, n in [(ua, n) for ua, n in g.uas.most_common() if ua not in others_uas][: opt.max_user_agents]:
            indicators.append(stix2.Indicator(
                name=f"user agent of distillation campaign {label}", pattern=user_agent_pattern(ua),
                pattern_type="stix", indicator_types=["malicious-activity"], valid_from=valid_from,
                x_distillguard_kind="user_agent", x_distillguard_count=n, allow_custom=True, **common))
        need = max(opt.min_template_count, int(opt.min_template_share * g.events))
        fps = [(d, n) for d, n in g.fps.most_common() if n >= need and d not in others_fps][: opt.max_templates]
        top = g.tracker.top() if g.tracker is not None else None
        for d, n in fps:
            scope, k = g.fp_scope[d]
            extra: dict[str, Any] = {}
            if top is not None:
                extra["x_distillguard_template_minhash"] = [int(x) for x in top.sig]
                extra["x_distillguard_minhash_params"] = {
                    "num_perm": hasher.num_perm, "seed": MINHASH_SEED, "length": len(top.sig),
                    "hash": "blake2b-32 of each shingle, (a*h + b) mod 2^61-1 (datasketch legacy scheme)",
                    "shingles": "distillguard.detect.templates.shingles (prompt skeleton; head and tail "
                                "signatures concatenated when it returns two sets)"}
            if opt.include_prompts and top is not None:
                extra["x_distillguard_example_prompt"] = top.example
            indicators.append(stix2.Indicator(
                name=f"prompt template of distillation campaign {label}", pattern=template_pattern(d),
                pattern_type="stix", indicator_types=["malicious-activity"], valid_from=valid_from,
                description=f"SHA-256 of the {scope} {k} tokens of the prompt skeleton "
                            "(distillguard.detect.templates.skeleton_tokens; input '{scope}{k}:' + tokens joined by spaces)",
                x_distillguard_kind="template", x_distillguard_count=n, x_distillguard_template_scope=scope,
                x_distillguard_template_tokens=k, allow_custom=True, **common, **extra))
        for ind in indicators:
            objects += [ind, stix2.Relationship(ind, "indicates", attack, **common),
                        stix2.Relationship(ind, "indicates", actor, **common)]
    return stix2.Bundle(objects=objects, allow_custom=True)


def verdicts_from_store(store: Any) -> list[dict[str, Any]]:
    """Verdict-like records from the account flags the detection worker writes."""
    out = []
    for acc in store.list_accounts():
        f = acc.flags or {}
        if "risk" not in f:
            continue
        out.append({"account": acc.name, "score": f.get("risk", 0.0), "flagged": bool(f.get("risk_flagged")),
                    "cluster": f.get("cluster"), "evidence": f.get("evidence") or []})
    return out


# ---------------------------------------------------------------------- import
@dataclass
class ImportReport:
    indicators: int = 0
    indexed: int = 0
    skipped_unsupported: int = 0
    skipped_expired: int = 0
    total_in_file: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def parse_bundle(text: str, source: str = "bundle") -> Any:
    """Validate with ``stix2.parse``; raise IndicatorError saying what is wrong."""
    import stix2
    from stix2.exceptions import STIXError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndicatorError(f"{source} is not JSON ({exc.msg} at line {exc.lineno}); expected a STIX 2.1 bundle") from None
    if not isinstance(data, dict) or data.get("type") != "bundle":
        raise IndicatorError(f"{source} is not a STIX bundle (top-level \"type\" must be \"bundle\")")
    try:
        return stix2.parse(data, allow_custom=True)
    except (STIXError, ValueError, KeyError, TypeError) as exc:
        raise IndicatorError(f"{source} is not a valid STIX 2.1 bundle: {exc}") from None


def import_bundle(path: Path | str, indicators_file: Path | str, *, now: datetime | None = None) -> ImportReport:
    """Validate ``path`` and merge its matchable indicators into ``indicators_file``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndicatorError(f"bundle file {p} does not exist") from None
    except UnicodeDecodeError:
        raise IndicatorError(f"bundle file {p} is not UTF-8 text; expected a STIX 2.1 JSON bundle") from None
    bundle = parse_bundle(text, f"bundle file {p}")
    now = now or datetime.now(timezone.utc)
    current = load_indicators(indicators_file)
    records = dict(current.records)
    report = ImportReport()
    fresh = IndicatorSet()
    for obj in getattr(bundle, "objects", None) or []:
        if getattr(obj, "type", None) != "indicator":
            continue
        report.indicators += 1
        if getattr(obj, "revoked", False) or (getattr(obj, "valid_until", None) and obj.valid_until < now):
            report.skipped_expired += 1
            continue
        record = {"id": obj.id, "pattern": obj.pattern, "name": getattr(obj, "name", None),
                  "kind": obj.get("x_distillguard_kind"), "valid_until": str(obj.valid_until) if getattr(obj, "valid_until", None) else None,
                  "created_by_ref": getattr(obj, "created_by_ref", None), "source": p.name,
                  "imported_at": now.isoformat()}
        n = fresh.add_indicator(obj.id, obj.pattern, record)
        if n == 0:
            report.skipped_unsupported += 1
            continue
        report.indexed += 1
        records[obj.id] = record
    merged = IndicatorSet.from_records(list(records.values()))
    save_indicators(merged, indicators_file)
    report.total_in_file = len(merged.records)
    report.by_kind = {"ip": len(merged.ips), "user_agent": len(merged.user_agents), "template": len(merged.templates)}
    return report
