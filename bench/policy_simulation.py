"""Policy simulation: what the risk policy costs legitimate customers and what it leaves attackers.

    nice -n 10 .venv/bin/python bench/policy_simulation.py [--scale 1.0] [--no-embeddings] \
        [--save-trace T.pkl.gz | --from-trace T.pkl.gz] [--policy POLICY.toml] \
        [--split report|tune|tune-attack] [--embed-cache bench/cache/emb.npz] [--cohort-min-accounts N]

Detection does not depend on the policy here (every request, refused or not, is an event the
detector sees), so the expensive part (MiniLM embeddings, linking) can run once with
``--save-trace``, and policies are then compared on the same detector updates with
``--from-trace`` in seconds. The trace holds the board updates after every batch, the
calibration and a fingerprint of the replayed events (rebuilt from the same seed, checked).

1. Tune split (held apart): benign-only traffic from ``detect/traffic.py``; the detector's
   operating threshold is calibrated on it (``detect.calibrate``, target account FPR 0.1%).
2. Report split (held out): benign personas, hard benign cases and attackers (single-account
   campaigns and hydras), replayed in time order. Each request is decided by ``RiskPolicy`` from
   the board as it stood *before* the request's batch (the detection worker's batch lag), then the
   batch goes to the real ``OnlineDetector``, whose callback updates the board, as in ``serve``.
   Rate limits (standard tier, key and account RPM/TPM over 60 s windows) are simulated with and
   without the policy's ``limit_scale``. Account age (rules with ``max_account_age_s``) counts from
   the account's first request in the replay: every account is new when the window opens, which
   is pessimistic for benign customers whose history would start earlier.
3. Measured:
   * legitimate impact: share of benign requests whose decision is not ``allow`` (throttle,
     degrade, verify, block), and the share actually refused (403, or 429 only under the policy);
   * legitimate impact, two ways: ``decision_share`` = benign requests whose decision was not
     ``allow`` (a throttle decision whose budget was never reached counts, though the customer
     noticed nothing); ``affected_share`` = benign requests whose answer changed: refused (403,
     429 from the risk budget or a scaled limit that the tier's own limit would have passed) or
     degraded (shorter, reasoning withheld). The goal (<= 0.5%) is checked on both.
   * attacker yield: answer tokens obtained with the policy / without it (completion tokens from
     the events; the traffic generator draws them per request). Primary (``yield_ratio``): every
     token the attacker actually receives, a degraded answer counted at its capped length
     (``degrade.max_tokens``), as if its content were fully useful. Also reported:
     ``yield_ratio_degraded_as_zero`` (session 1's definition: a degraded answer, reasoning
     withheld and logprobs noised, no longer counts).
     The campaign is a fixed schedule (the generator's requests over ``--days``): a refused
     request is lost, as for an attacker with a deadline. ``reduction_x_if_429s_were_resent_and_served``
     bounds what a patient attacker recovers by re-sending every request the risk budget refused
     (as if each were then served in full; verify/block refusals are not recoverable).
   * the session-1 policy (degrade at the flag, no risk budget, no length cap) runs on the same
     detector updates in the same pass (``session1_policy_same_run``), for a same-run ratio; so do
     the previous defaults (without the ``watch-new`` rule: ``previous_defaults_same_run``) when
     the run uses the default policy.

Board updates after each batch cover the accounts the batch touched *and* those a relink changed
(``process_batch``'s return, as the detection worker passes it on): before session 4 only the
batch's own accounts were updated, so a member that sent nothing in the batch in which its cluster
was linked or flagged kept its old record until its next batch (hydra numbers were pessimistic).

``--cohort-min-accounts 0`` replays the detector without sybil cohorts (the detector before them),
``--embed-cache F`` keeps MiniLM vectors between runs (re-recording a trace after a detector change
then costs the sketch updates only), and the default policy is also replayed without template
inheritance (``no_template_inheritance_same_run``).

``--split tune-attack`` replays the tune split's benign accounts (event for event the same as
``--split tune``) plus attackers drawn from the tune halves of the corpora: attacker-side settings
are chosen there, and the held-out report split is only replayed to report them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pickle
import os
import platform
import statistics
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESTRICTIVE = ("throttle", "degrade", "verify", "block")


class WindowLimiter:
    """Sliding 60 s windows of requests and tokens per key and per account (the tier's limits,
    times the decision's limit_scale), as the gateway's limiter enforces them."""

    def __init__(self, tier: Any) -> None:
        self.tier = tier
        self.req: dict[str, deque[float]] = defaultdict(deque)
        self.tok: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self.tok_sum: dict[str, int] = defaultdict(int)

    def allow(self, ids: tuple[str, str], ts: float, tokens: int, scale: float) -> bool:
        t = self.tier
        limits = ((ids[0], t.key_rpm, t.key_tpm), (ids[1], t.account_rpm, t.account_tpm))
        for ident, rpm, tpm in limits:
            rq, tk = self.req[ident], self.tok[ident]
            while rq and rq[0] <= ts - 60:
                rq.popleft()
            while tk and tk[0][0] <= ts - 60:
                self.tok_sum[ident] -= tk.popleft()[1]
            if len(rq) + 1 > max(1, int(rpm * scale)) or self.tok_sum[ident] + tokens > max(1, int(tpm * scale)):
                return False
        for ident, _, _ in limits:
            self.req[ident].append(ts)
            self.tok[ident].append((ts, tokens))
            self.tok_sum[ident] += tokens
        return True


def sensitivity(trace: list[tuple[str, bool, float, int]]) -> list[dict[str, Any]]:
    """If every request at or above a level were restricted (degraded or refused): benign share
    restricted and attacker yield, per cut level (the rules' levels are 0.9 throttle, 1.0 degrade,
    1.6 verify by default). Uses the same decisions' levels; limits not re-simulated."""
    out = []
    for cut in (0.5, 0.8, 0.9, 0.95, 1.0, 1.1, 1.2, 1.4, 1.6):
        ben = [lv for side, _, lv, _ in trace if side == "benign"]
        row: dict[str, Any] = {"level": cut, "benign_share_at_or_above": sum(lv >= cut for lv in ben) / max(1, len(ben))}
        for name, hyd in (("single", False), ("hydra", True)):
            toks = [(lv, t) for side, h, lv, t in trace if side == "attack" and h == hyd]
            base = sum(t for _, t in toks)
            kept = sum(t for lv, t in toks if lv < cut)
            row[f"{name}_yield"] = kept / base if base else None
        out.append(row)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    return info


class Sim:
    """One policy over the replay: its own board (fed the same detector updates), limiter and
    per-account tallies."""

    def __init__(self, name: str, cfg: Any, threshold: float, tier: Any) -> None:
        from distillguard.policy.engine import RiskPolicy
        from distillguard.policy.state import RiskBoard

        self.name, self.cfg = name, cfg
        self.board = RiskBoard(threshold)
        self.policy = RiskPolicy(self.board, cfg, threshold=threshold)
        self.lim = WindowLimiter(tier)
        self.per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.actions: dict[str, dict[str, int]] = {"benign": defaultdict(int), "attack": defaultdict(int)}
        self.first_restricted: dict[str, int] = {}
        self.decide_us: list[float] = []
        #: the same in this thread's CPU time (wall time on a busy machine includes time the
        #: process waited for a core)
        self.decide_cpu_us: list[float] = []
        self.reasons_example: dict[str, list[str]] = {}

    def step(self, ctx: Any, acct: str, side: str, n_seen: int, tokens: int, budget_tokens: int,
             ids: tuple[str, str], base_ok: bool) -> float:
        c1 = time.thread_time_ns()
        t1 = time.perf_counter()
        d = self.policy.decide(ctx)
        self.decide_us.append((time.perf_counter() - t1) * 1e6)
        self.decide_cpu_us.append((time.thread_time_ns() - c1) / 1e3)
        refused_budget = d.retry_after_s is not None
        act = "throttle-429" if refused_budget else d.action
        self.actions[side][act] += 1
        cap = d.degrade.max_tokens if (d.action == "degrade" and d.degrade is not None) else None
        got = tokens if cap is None else min(tokens, cap)
        served = (d.action in ("allow", "throttle", "degrade") and not refused_budget
                  and self.lim.allow(ids, ctx.ts, budget_tokens if cap is None else budget_tokens - tokens + got,
                                     d.limit_scale))
        p = self.per[acct]
        p["requests"] += 1
        p["base_tokens"] += tokens if base_ok else 0
        p["received_tokens"] += got if served else 0
        p["useful_tokens_degraded_as_zero"] += tokens if served and d.action != "degrade" else 0
        restricted = d.action in RESTRICTIVE
        p["restricted"] += restricted
        affected = (d.action in ("degrade", "verify", "block") or refused_budget or (not served and base_ok))
        p["affected"] += affected
        p["refused"] += not served
        p["refused_by_budget"] += refused_budget
        # what a patient attacker could still get by re-sending a 429'd request later (upper bound:
        # as if every one of them were then served in full)
        p["budget_refused_tokens"] += tokens if refused_budget and base_ok else 0
        p["degraded"] += d.action == "degrade" and served
        if restricted and acct not in self.first_restricted:
            self.first_restricted[acct] = n_seen
        key = f"{side}:{act}:{d.rule}"
        if key not in self.reasons_example:
            self.reasons_example[key] = list(d.reasons)
        return d.level

    def update(self, records: dict[str, dict[str, Any]]) -> None:
        self.board.update_many(records)

    def summary(self, labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
        per = self.per

        def group(accts: list[str]) -> dict[str, Any]:
            s: dict[str, float] = defaultdict(float)
            for a in accts:
                for k, v in per[a].items():
                    s[k] += v
            base = s["base_tokens"]
            got, zero = s["received_tokens"], s["useful_tokens_degraded_as_zero"]
            out: dict[str, Any] = {"accounts": len(accts), "requests": int(s["requests"]),
                                   "tokens_no_defence": int(base), "tokens_received_with_policy": int(got),
                                   "useful_tokens_degraded_as_zero": int(zero)}
            out["yield_ratio"] = got / base if base else None
            out["reduction_x"] = base / got if got else float("inf")
            out["yield_ratio_degraded_as_zero"] = zero / base if base else None
            out["reduction_x_degraded_as_zero"] = base / zero if zero else float("inf")
            recov = got + s["budget_refused_tokens"]
            out["reduction_x_if_429s_were_resent_and_served"] = base / recov if recov else float("inf")
            out["requests_refused"] = int(s["refused"])
            out["requests_refused_by_budget"] = int(s["refused_by_budget"])
            out["requests_degraded"] = int(s["degraded"])
            rb = [self.first_restricted[a] for a in accts if a in self.first_restricted]
            out["accounts_restricted"] = len(rb)
            out["median_requests_before_restriction"] = statistics.median(rb) if rb else None
            return out

        benign = [a for a, lab in labels.items() if not lab["label"] and a in per]
        singles = [a for a, lab in labels.items() if lab["label"] and not lab["group"] and a in per]
        hydras: dict[str, list[str]] = defaultdict(list)
        for a, lab in labels.items():
            if lab["label"] and lab["group"] and a in per:
                hydras[lab["group"]].append(a)
        by_kind: dict[str, list[str]] = defaultdict(list)
        for a in singles:
            by_kind[labels[a]["kind"]].append(a)
        n_benign = sum(per[a]["requests"] for a in benign)
        restricted = sum(per[a]["restricted"] for a in benign)
        affected = sum(per[a]["affected"] for a in benign)
        benign_kinds: dict[str, dict[str, Any]] = {}
        for a in benign:
            bk = benign_kinds.setdefault(labels[a]["kind"], {"accounts": 0, "requests": 0, "decision_not_allow": 0,
                                                              "affected_requests": 0, "accounts_with_a_restriction": 0})
            bk["accounts"] += 1
            bk["requests"] += int(per[a]["requests"])
            bk["decision_not_allow"] += int(per[a]["restricted"])
            bk["affected_requests"] += int(per[a]["affected"])
            bk["accounts_with_a_restriction"] += int(per[a]["restricted"] > 0)
        act = self.actions["benign"]
        return {
            "legitimate": {
                "requests": int(n_benign),
                "decision_share": restricted / n_benign if n_benign else None,
                "affected_share": affected / n_benign if n_benign else None,
                "decision_not_allow_requests": int(restricted),
                "affected_requests": int(affected),
                "accounts_with_a_restriction": sum(1 for a in benign if per[a]["restricted"] > 0),
                "accounts": len(benign),
                "refused_by_budget": int(act.get("throttle-429", 0)),
                "blocked_or_verify_requests": int(act.get("block", 0) + act.get("verify", 0)),
                "degraded_requests": int(act.get("degrade", 0)),
                "throttled_requests": int(act.get("throttle", 0)),
                "by_kind": benign_kinds,
                "goal": "decision_share and affected_share <= 0.005",
            },
            "attackers": {
                "single_account": group(singles),
                "single_account_by_kind": {k: group(v) for k, v in sorted(by_kind.items())},
                "hydra": group([a for v in hydras.values() for a in v]),
                "hydra_by_group": {g: group(v) for g, v in sorted(hydras.items())},
                "all": group(singles + [a for v in hydras.values() for a in v]),
                "goal": "reduction_x >= 10",
            },
            "actions": {side: dict(v) for side, v in self.actions.items()},
            "decide_us": {"median": statistics.median(self.decide_us),
                          "p99": sorted(self.decide_us)[int(0.99 * len(self.decide_us))]},
            "decide_cpu_us": {"median": statistics.median(self.decide_cpu_us),
                              "mean": statistics.fmean(self.decide_cpu_us),
                              "p99": sorted(self.decide_cpu_us)[int(0.99 * len(self.decide_cpu_us))]},
            "example_reasons": self.reasons_example,
        }


def session1_policy() -> Any:
    """The policy as session 1 left it (for the same-run comparison): degrade at the flag, verify
    at level 1.6, per-minute limits scaled from 0.9, no risk budget, no length cap."""
    from distillguard.policy.config import DegradeConfig, PolicyConfig, Rule, TemplateInheritanceConfig, ThrottleCurve

    rules = [
        Rule(name="banned", review=["banned"], action="block"),
        Rule(name="exempt", review=["exempt"], action="allow"),
        Rule(name="verified-flagged", review=["verified"], min_level=1.5, action="degrade"),
        Rule(name="verified", review=["verified"], min_level=0.9, action="throttle"),
        Rule(name="verified-ok", review=["verified"], action="allow"),
        Rule(name="high-confidence", min_level=1.6, action="verify"),
        Rule(name="trial-flagged", tiers=["trial"], min_level=1.0, action="verify"),
        Rule(name="flagged", min_level=1.0, action="degrade"),
        Rule(name="elevated", min_level=0.9, action="throttle"),
    ]
    return PolicyConfig(rules=rules, throttle=ThrottleCurve(start=0.9, full=1.6, power=2.0, floor=0.05,
                                                            budget_requests=None),
                        degrade=DegradeConfig(max_tokens=None),
                        templates=TemplateInheritanceConfig(enabled=False))


def previous_defaults_policy() -> Any:
    """The default policy before the ``watch-new`` rule (session 3): the same rules without it and
    without template inheritance, for the same-run comparison (``previous_defaults_same_run``)."""
    from distillguard.policy.config import PolicyConfig

    cfg = PolicyConfig()
    cfg.rules = [r for r in cfg.rules if r.name != "watch-new"]
    cfg.templates.enabled = False
    return cfg


def no_template_inheritance_policy() -> Any:
    """The default policy without template inheritance (``policy.templates``), for the same-run
    comparison (``no_template_inheritance_same_run``)."""
    from distillguard.policy.config import PolicyConfig

    cfg = PolicyConfig()
    cfg.templates.enabled = False
    return cfg


def events_fingerprint(raw: list[dict[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for e in raw:
        h.update(f"{e['id']}|{e['account']}|{e['ts']:.3f}\n".encode())
    return h.hexdigest()


def detect_source_hash() -> str:
    """Hash of the detection code this run imported (the working tree can differ from the commit)."""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted((ROOT / "src" / "distillguard" / "detect").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="persona counts x this (Mix.scaled)")
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=64, help="events per detector batch (decision lag)")
    ap.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--calibration", type=Path, default=None,
                    help="reuse a calibration JSON (detect calibrate / --save-calibration) instead of calibrating")
    ap.add_argument("--save-calibration", type=Path, default=None, help="write the tune-split calibration here")
    ap.add_argument("--save-trace", type=Path, default=None, help="write the detector's board updates here")
    ap.add_argument("--from-trace", type=Path, default=None,
                    help="replay the policy on a saved trace (no detector run; same --scale/--days/--seed)")
    ap.add_argument("--policy", type=Path, default=None, help="policy TOML (default: PolicyConfig() defaults)")
    ap.add_argument("--split", choices=("report", "tune", "tune-attack"), default="report",
                    help="replay the held-out report split (default), or the benign-only tune split the "
                         "calibration used (to choose policy settings on benign traffic without touching the report "
                         "split), or tune-attack: the same tune-split benign accounts plus attackers drawn from the "
                         "tune halves of the corpora (to choose attacker-side settings without the report split)")
    ap.add_argument("--no-session1", action="store_true", help="skip the session-1 policy comparison")
    ap.add_argument("--cohort-min-accounts", type=int, default=None,
                    help="detector override: DetectConfig.cohort_min_accounts (0 = sybil cohorts off, the detector "
                         "before cohorts, for a comparison)")
    ap.add_argument("--embed-cache", type=Path, default=None,
                    help="prompt-embedding cache file (bench/cache/...npz): loaded into the embedder's in-memory "
                         "cache before the run and written back after it, so re-recording a trace after a detector "
                         "change does not re-embed the same prompts (the vectors are the ones MiniLM gave)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "policy_simulation.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from distillguard.config import Settings
    from distillguard.detect.traffic import Mix, build_traffic, load_corpora
    from distillguard.events import ExchangeEvent
    from distillguard.gateway.policy import PolicyContext
    from distillguard.policy.config import PolicyConfig, level
    from distillguard.policy.engine import load_policy_file
    from distillguard.store.base import Account, KeyRecord

    t_start = time.time()
    load_start = os.getloadavg()
    detect_hash = detect_source_hash()  # before anything runs: the code this process imported
    mix = Mix().scaled(args.scale)
    trace_in: dict[str, Any] | None = None
    embedder = None
    cfg = None
    t0 = time.perf_counter()
    if args.from_trace is not None:
        with gzip.open(args.from_trace, "rb") as fh:
            trace_in = pickle.load(fh)
        meta = trace_in["meta"]
        for k in ("scale", "days", "seed", "batch", "split"):
            if meta[k] != getattr(args, k):
                sys.exit(f"error: {args.from_trace} was recorded with --{k} {meta[k]}, not {getattr(args, k)}")
        cal = trace_in["calibration"]
    else:
        from distillguard.detect.calibrate import calibrate
        from distillguard.detect.config import DetectConfig

        if args.embeddings:
            from distillguard.detect.embed import MiniLMEmbedder

            embedder = MiniLMEmbedder(threads=2, cache_size=1_000_000)
            if args.embed_cache is not None:
                print(f"embedding cache: {load_embed_cache(embedder, args.embed_cache):,} vectors from "
                      f"{args.embed_cache}", file=sys.stderr)
        cfg = DetectConfig(embeddings=args.embeddings)
        if args.cohort_min_accounts is not None:
            cfg = cfg.model_copy(update={"cohort_min_accounts": args.cohort_min_accounts})
        # 1. calibrate on the tune split, benign only
        if args.calibration is not None:
            cal = json.loads(args.calibration.read_text())
            if (cal.get("embedder") is None) != (embedder is None):
                sys.exit(f"error: {args.calibration} was calibrated with embedder {cal.get('embedder')!r}; "
                         f"this run embeds with {embedder.name if embedder else None!r}")
        else:
            tune = build_traffic(load_corpora("tune"), Mix(**{**mix.__dict__, "benign_only": True}), seed=args.seed,
                                 days=args.days)
            tune_events = [ExchangeEvent.model_validate(e) for e in tune.sorted_events()]
            print(f"calibrating on {len(tune_events):,} benign tune-split events ...", file=sys.stderr)
            cal = calibrate(tune_events, target_fpr=0.001, config=cfg, embedder=embedder)
            del tune_events, tune
            if args.save_calibration is not None:
                from distillguard.detect.calibrate import write_calibration

                write_calibration(cal, args.save_calibration)
    cal_s = time.perf_counter() - t0
    threshold = float(cal["threshold"])
    print(f"threshold {threshold:.4f} ({cal['resolution']}) in {cal_s:.0f}s", file=sys.stderr)

    # 2. replay the held-out report split (or, --split tune, the benign tune split itself)
    if args.split == "tune":
        report = build_traffic(load_corpora("tune"), Mix(**{**mix.__dict__, "benign_only": True}), seed=args.seed,
                               days=args.days)
    elif args.split == "tune-attack":
        # benign personas are built first from the same seed: the tune split's benign accounts,
        # event for event, then attackers from the tune halves of the corpora
        report = build_traffic(load_corpora("tune"), mix, seed=args.seed, days=args.days)
    else:
        report = build_traffic(load_corpora("report"), mix, seed=args.seed + 1, days=args.days)
    labels = report.labels()
    raw = report.sorted_events()
    fingerprint = events_fingerprint(raw)
    if trace_in is not None and trace_in["meta"]["events_fingerprint"] != fingerprint:
        sys.exit(f"error: the rebuilt report split differs from the one in {args.from_trace} "
                 "(traffic generator or corpora changed): record a new trace")
    events = [ExchangeEvent.model_validate(e) for e in raw]
    detector = None
    if trace_in is None:
        from distillguard.detect.online import OnlineDetector

        detector = OnlineDetector(cfg, embedder=embedder, threshold=threshold,
                                  reference_prompts=cal.get("reference_prompts") or None)
    policy_cfg = load_policy_file(args.policy) if args.policy is not None else PolicyConfig()
    tier = Settings().limits.tiers["standard"]
    sims = [Sim("policy", policy_cfg, threshold, tier)]
    if not args.no_session1:
        sims.append(Sim("session1", session1_policy(), threshold, tier))
        if args.policy is None:
            sims.append(Sim("previous_defaults", previous_defaults_policy(), threshold, tier))
            sims.append(Sim("no_template_inheritance", no_template_inheritance_policy(), threshold, tier))
    lim_base = WindowLimiter(tier)
    verdict_board = sims[0].board  # _verdict needs a board for its evidence cut-off
    trace_out: list[dict[str, dict[str, Any]]] = []
    seen: dict[str, int] = defaultdict(int)
    trace: list[tuple[str, bool, float, int]] = []  # (side, hydra?, level at decision, tokens)
    peak_level: dict[str, float] = defaultdict(float)
    hydra_reqs: dict[str, list[tuple[float, int]]] = defaultdict(list)
    hydra_first_flag: dict[str, tuple[float, str]] = {}
    t0 = time.perf_counter()
    batches = list(iter_batches_list(events, args.batch))
    if trace_in is not None and len(trace_in["batches"]) != len(batches):
        sys.exit("error: the trace's batch count does not match this replay")
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("replay", total=len(events))
        for bi, batch in enumerate(batches):
            for ev in batch:
                acct = ev.account
                lab = labels[acct]
                side = "attack" if lab["label"] else "benign"
                seen[acct] += 1
                ctx = PolicyContext(account=Account(acct, "standard", 0.0), key=KeyRecord(ev.key or acct, acct, "standard", 0.0),
                                    tier="standard", endpoint=ev.endpoint, request=ev.request,
                                    prompt_tokens=ev.response.prompt_tokens if ev.response else 0, ip=ev.ip,
                                    user_agent=ev.user_agent, ts=ev.ts, engine=None)
                resp = ev.response
                tokens = (resp.completion_tokens if resp else 0)
                budget = (resp.prompt_tokens if resp else 0) + tokens
                ids = (ev.key or acct, acct)
                base_ok = lim_base.allow(ids, ev.ts, budget, 1.0)
                lv = 0.0
                for sim in sims:
                    lvl = sim.step(ctx, acct, side, seen[acct], tokens if base_ok else 0, budget, ids, base_ok)
                    if sim is sims[0]:
                        lv = lvl
                trace.append((side, lab["group"] is not None, lv, tokens if base_ok else 0))
                if lab["group"] is not None:
                    hydra_reqs[lab["group"]].append((ev.ts, tokens if base_ok else 0))
                    if lv >= 1.0 and lab["group"] not in hydra_first_flag:
                        hydra_first_flag[lab["group"]] = (ev.ts, acct)
                peak_level[acct] = max(peak_level[acct], lv)
            if trace_in is not None:
                records = trace_in["batches"][bi]
            else:
                # the accounts the batch touched plus those a relink changed (a cluster's members
                # that sent nothing in this batch), as the detection worker passes them on
                changed = detector.process_batch(batch)
                records = {a: verdict_board._verdict(detector, a) for a in changed if a in detector.accounts}
                if args.save_trace is not None:
                    trace_out.append(records)
            for sim in sims:
                sim.update(records)
            bar.update(task, advance=len(batch))
            done = int(bar.tasks[0].completed)
            if not sys.stderr.isatty() and done // 5000 != (done - len(batch)) // 5000:
                print(f"replayed {done:,}/{len(events):,} events in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if detector is not None:
            detector.finish()
    replay_s = time.perf_counter() - t0
    if embedder is not None and args.embed_cache is not None:
        print(f"embedding cache: {save_embed_cache(embedder, args.embed_cache):,} vectors -> {args.embed_cache}",
              file=sys.stderr)
    if args.save_trace is not None and trace_in is None:
        args.save_trace.parent.mkdir(parents=True, exist_ok=True)
        meta = {"scale": args.scale, "days": args.days, "seed": args.seed, "batch": args.batch, "split": args.split,
                "embeddings": embedder.name if embedder else None, "events": len(events),
                "cohort_min_accounts": cfg.cohort_min_accounts,
                "events_fingerprint": fingerprint, "git_commit": git_commit(), "detect_source_hash": detect_hash,
                "command": " ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "replay_s": round(replay_s, 1)}
        with gzip.open(args.save_trace, "wb") as fh:
            pickle.dump({"meta": meta, "calibration": cal, "batches": trace_out}, fh)
        print(f"trace -> {args.save_trace}", file=sys.stderr)

    # 3. summarise
    main_sum = sims[0].summary(labels)
    benign_peaks = sorted(peak_level[a] for a, lab in labels.items() if not lab["label"] and a in peak_level)
    q = {str(x): benign_peaks[min(len(benign_peaks) - 1, int(x * len(benign_peaks)))] for x in (0.5, 0.9, 0.99, 0.999)}
    tune_q = {k: round(level(v, threshold), 4) for k, v in (cal.get("score_quantiles") or {}).items()}
    result = {
        "bench": "policy_simulation",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "setup": {"scale": args.scale, "days": args.days, "seed": args.seed, "batch": args.batch,
                  "embeddings": (trace_in["meta"]["embeddings"] if trace_in else (embedder.name if embedder else None)),
                  "tune_split": "benign only, calibration", "report_split": "held out, all personas",
                  "replayed_split": args.split,
                  "threshold": threshold,
                  "calibration": {k: cal.get(k) for k in ("target_fpr", "accounts_scored", "achieved_fpr", "resolution")},
                  "tune_split_benign_score_quantiles_as_levels": tune_q,
                  "detector_trace": ({"file": str(args.from_trace), **trace_in["meta"]} if trace_in else
                                     {"recorded_to": str(args.save_trace) if args.save_trace else None,
                                      "git_commit": git_commit(), "detect_source_hash": detect_hash,
                                      "cohort_min_accounts": cfg.cohort_min_accounts}),
                  "policy": str(args.policy) if args.policy else "PolicyConfig() defaults",
                  "policy_config": policy_cfg.model_dump(mode="json"),
                  "limits": tier.model_dump(),
                  "tokens": "completion_tokens from the events (drawn by detect/traffic.py per request)"},
        "events": len(events),
        "accounts": len(sims[0].per),
        **main_sum,
        "report_split_benign_peak_level_quantiles": q,
        "sensitivity": sensitivity(trace),
        "hydra_inheritance_bound": hydra_bound(hydra_reqs, hydra_first_flag),
        "seconds": {"calibration": round(cal_s, 1), "replay": round(replay_s, 1), "total": round(time.time() - t_start, 1),
                    "cpu_process": round(time.process_time(), 1)},
    }
    for sim in sims[1:]:
        s1 = sim.summary(labels)
        result[f"{sim.name}_policy_same_run" if sim.name == "session1" else f"{sim.name}_same_run"] = {
            "legitimate": s1["legitimate"], "attackers": s1["attackers"], "actions": s1["actions"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    lg, at = result["legitimate"], result["attackers"]
    print(f"benign: decision not allow {lg['decision_share']:.4%}, affected {lg['affected_share']:.4%} of "
          f"{lg['requests']:,} requests ({lg['accounts_with_a_restriction']}/{lg['accounts']} accounts); "
          f"single-account reduction {at['single_account']['reduction_x']:.1f}x "
          f"(degraded as zero {at['single_account']['reduction_x_degraded_as_zero']:.1f}x), "
          f"hydra {at['hydra']['reduction_x']:.1f}x ({at['hydra']['reduction_x_degraded_as_zero']:.1f}x) -> {args.out}")
    for k, v in at["single_account_by_kind"].items():
        print(f"  {k:18s} reduction {v['reduction_x']:.1f}x  restricted after {v['median_requests_before_restriction']}")
    for k, v in at["hydra_by_group"].items():
        print(f"  {k:18s} reduction {v['reduction_x']:.1f}x  restricted after {v['median_requests_before_restriction']}")
    if "no_template_inheritance_same_run" in result:
        s1 = result["no_template_inheritance_same_run"]
        print(f"defaults without template inheritance, same run: benign affected {s1['legitimate']['affected_share']:.4%}; "
              f"single {s1['attackers']['single_account']['reduction_x']:.1f}x, hydra {s1['attackers']['hydra']['reduction_x']:.1f}x")
    if "previous_defaults_same_run" in result:
        s1 = result["previous_defaults_same_run"]
        print(f"previous defaults (no watch-new rule), same run: benign affected {s1['legitimate']['affected_share']:.4%}; "
              f"single {s1['attackers']['single_account']['reduction_x']:.1f}x, hydra {s1['attackers']['hydra']['reduction_x']:.1f}x")
    if len(sims) > 1:
        s1 = result["session1_policy_same_run"]
        print(f"session-1 policy, same run: benign decision {s1['legitimate']['decision_share']:.4%} affected "
              f"{s1['legitimate']['affected_share']:.4%}; single {s1['attackers']['single_account']['reduction_x']:.1f}x, "
              f"hydra {s1['attackers']['hydra']['reduction_x']:.1f}x")


def hydra_bound(reqs: dict[str, list[tuple[float, int]]], first_flag: dict[str, tuple[float, str]]) -> dict[str, Any]:
    """What cluster inheritance could give at best: each hydra's yield if every request of every
    member were refused from the moment its first member reached the flag line (level 1.0), as if
    the whole group were known to be one actor then. When the members are flagged together (the
    detector links them all at once), no inheritance can do better than this."""
    out: dict[str, Any] = {}
    for g, rows in sorted(reqs.items()):
        base = sum(t for _, t in rows)
        ff = first_flag.get(g)
        kept = sum(t for ts, t in rows if ff is None or ts < ff[0])
        out[g] = {"first_member_flagged": ff[1] if ff else None,
                  "requests_before_first_flag": sum(1 for ts, _ in rows if ff is None or ts < ff[0]),
                  "requests": len(rows), "yield_bound": kept / base if base else None,
                  "reduction_x_bound": base / kept if kept else float("inf")}
    return out


def load_embed_cache(embedder: Any, path: Path) -> int:
    """Pre-fill the embedder's prompt-hash cache from ``path`` (a file ``save_embed_cache`` wrote
    with the same embedder and dtype); returns the vectors loaded (0 when the file is absent)."""
    import numpy as np

    if not path.exists():
        return 0
    z = np.load(path, allow_pickle=False)
    if str(z["name"]) != f"{embedder.name}/{embedder.dtype}":
        sys.exit(f"error: {path} holds {z['name']} embeddings; this run embeds with {embedder.name}/{embedder.dtype}")
    keys, vecs = z["keys"], z["vecs"]
    for k, v in zip(keys, vecs, strict=True):
        embedder.cache.put(bytes(k), v)
    return len(keys)


def save_embed_cache(embedder: Any, path: Path) -> int:
    import numpy as np

    items = list(embedder.cache._d.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = (np.frombuffer(b"".join(k for k, _ in items), dtype=np.uint8).reshape(len(items), -1) if items
            else np.zeros((0, 12), dtype=np.uint8))
    vecs = np.stack([v for _, v in items]) if items else np.zeros((0, embedder.dim), dtype=np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, keys=keys, vecs=vecs, name=np.array(f"{embedder.name}/{embedder.dtype}"))
    os.replace(tmp, path)
    return len(items)


def iter_batches_list(events: list[Any], size: int) -> Any:
    for i in range(0, len(events), size):
        yield events[i:i + size]


if __name__ == "__main__":
    main()
