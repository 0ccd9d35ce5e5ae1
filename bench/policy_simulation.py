"""Policy simulation: what the risk policy costs legitimate customers and what it leaves attackers.

    nice -n 10 .venv/bin/python bench/policy_simulation.py [--scale 1.0] [--no-embeddings]

1. Tune split (held apart): benign-only traffic from ``detect/traffic.py``; the detector's
   operating threshold is calibrated on it (``detect.calibrate``, target account FPR 0.1%).
2. Report split (held out): benign personas, hard benign cases and attackers (single-account
   campaigns and hydras), replayed in time order. Each request is decided by ``RiskPolicy`` from
   the board as it stood *before* the request's batch (the detection worker's batch lag), then the
   batch goes to the real ``OnlineDetector``, whose callback updates the board, as in ``serve``.
   Rate limits (standard tier, key and account RPM/TPM over 60 s windows) are simulated with and
   without the policy's ``limit_scale``.
3. Measured:
   * legitimate impact: share of benign requests whose decision is not ``allow`` (throttle,
     degrade, verify, block), and the share actually refused (403, or 429 only under the policy);
   * attacker yield: useful answer tokens obtained with the policy / without it. Useful = the
     completion tokens (from the events; the traffic generator draws them per request) of requests
     served with ``allow`` or ``throttle``; a degraded answer has its reasoning withheld and its
     logprobs noised, so by the issue's definition it no longer counts ("before being blocked or
     degraded"). Also reported, as a lower bound on the defence: yield counting degraded answers
     as fully useful (what degrade buys when a model's reasoning is not in ``<think>`` tags).
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "policy_simulation.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from distillguard.config import Settings
    from distillguard.detect.calibrate import calibrate
    from distillguard.detect.config import DetectConfig
    from distillguard.detect.online import OnlineDetector, iter_batches
    from distillguard.detect.traffic import Mix, build_traffic, load_corpora
    from distillguard.events import ExchangeEvent
    from distillguard.gateway.policy import PolicyContext
    from distillguard.policy.config import PolicyConfig
    from distillguard.policy.engine import RiskPolicy
    from distillguard.policy.state import RiskBoard
    from distillguard.store.base import Account, KeyRecord

    t_start = time.time()
    embedder = None
    if args.embeddings:
        from distillguard.detect.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder(threads=2)
    cfg = DetectConfig(embeddings=args.embeddings)

    # 1. calibrate on the tune split, benign only
    mix = Mix().scaled(args.scale)
    t0 = time.perf_counter()
    if args.calibration is not None:
        cal = json.loads(args.calibration.read_text())
        if (cal.get("embedder") is None) != (embedder is None):
            sys.exit(f"error: {args.calibration} was calibrated with embedder {cal.get('embedder')!r}; "
                     f"this run embeds with {embedder.name if embedder else None!r}")
    else:
        tune = build_traffic(load_corpora("tune"), Mix(**{**mix.__dict__, "benign_only": True}), seed=args.seed, days=args.days)
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

    # 2. replay the held-out report split
    report = build_traffic(load_corpora("report"), mix, seed=args.seed + 1, days=args.days)
    labels = report.labels()
    raw = report.sorted_events()
    events = [ExchangeEvent.model_validate(e) for e in raw]
    detector = OnlineDetector(cfg, embedder=embedder, threshold=threshold,
                              reference_prompts=cal.get("reference_prompts") or None)
    board = RiskBoard(threshold)
    policy = RiskPolicy(board, PolicyConfig(), threshold=threshold)
    on_update = board.detector_callback()
    tier = Settings().limits.tiers["standard"]
    lim_policy, lim_base = WindowLimiter(tier), WindowLimiter(tier)

    per: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    actions: dict[str, dict[str, int]] = {"benign": defaultdict(int), "attack": defaultdict(int)}
    decide_us: list[float] = []
    first_restricted: dict[str, int] = {}
    seen: dict[str, int] = defaultdict(int)
    trace: list[tuple[str, bool, float, int]] = []  # (side, hydra?, level at decision, tokens)
    t0 = time.perf_counter()
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("replay", total=len(events))
        for batch in iter_batches(events, args.batch):
            for ev in batch:
                acct = ev.account
                lab = labels[acct]
                side = "attack" if lab["label"] else "benign"
                seen[acct] += 1
                ctx = PolicyContext(account=Account(acct, "standard", 0.0), key=KeyRecord(ev.key or acct, acct, "standard", 0.0),
                                    tier="standard", endpoint=ev.endpoint, request=ev.request,
                                    prompt_tokens=ev.response.prompt_tokens if ev.response else 0, ip=ev.ip,
                                    user_agent=ev.user_agent, ts=ev.ts, engine=None)
                t1 = time.perf_counter()
                d = policy.decide(ctx)
                decide_us.append((time.perf_counter() - t1) * 1e6)
                actions[side][d.action] += 1
                resp = ev.response
                tokens = (resp.completion_tokens if resp else 0)
                budget = (resp.prompt_tokens if resp else 0) + tokens
                ids = (ev.key or acct, acct)
                base_ok = lim_base.allow(ids, ev.ts, budget, 1.0)
                served = d.action in ("allow", "throttle", "degrade") and lim_policy.allow(ids, ev.ts, budget, d.limit_scale)
                trace.append((side, lab["group"] is not None, d.level, tokens if base_ok else 0))
                p = per[acct]
                p["requests"] += 1
                p["base_tokens"] += tokens if base_ok else 0
                p["useful_tokens"] += tokens if served and d.action != "degrade" else 0
                p["served_tokens"] += tokens if served else 0
                p["restricted"] += d.action in RESTRICTIVE
                p["refused"] += not served
                p["refused_429_policy_only"] += (not served) and d.action in ("allow", "throttle", "degrade") and base_ok
                p["degraded"] += d.action == "degrade"
                if d.action in RESTRICTIVE and acct not in first_restricted:
                    first_restricted[acct] = seen[acct]
            detector.process_batch(batch)
            changed = {ev.account for ev in batch}
            on_update(detector, changed)
            bar.update(task, advance=len(batch))
            done = int(bar.tasks[0].completed)
            if not sys.stderr.isatty() and done // 5000 != (done - len(batch)) // 5000:
                print(f"replayed {done:,}/{len(events):,} events in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        detector.finish()
    replay_s = time.perf_counter() - t0

    # 3. summarise
    def group(accts: list[str]) -> dict[str, Any]:
        s = defaultdict(float)
        for a in accts:
            for k, v in per[a].items():
                s[k] += v
        base = s["base_tokens"]
        out = {"accounts": len(accts), "requests": int(s["requests"]), "tokens_no_defence": int(base),
               "useful_tokens_with_policy": int(s["useful_tokens"]),
               "served_tokens_with_policy_incl_degraded": int(s["served_tokens"])}
        out["yield_ratio"] = s["useful_tokens"] / base if base else None
        out["reduction_x"] = base / s["useful_tokens"] if s["useful_tokens"] else float("inf")
        out["yield_ratio_degraded_counted"] = s["served_tokens"] / base if base else None
        out["reduction_x_degraded_counted"] = base / s["served_tokens"] if s["served_tokens"] else float("inf")
        rb = [first_restricted[a] for a in accts if a in first_restricted]
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
    benign_kinds: dict[str, dict[str, Any]] = {}
    for a in benign:
        k = labels[a]["kind"]
        bk = benign_kinds.setdefault(k, {"accounts": 0, "requests": 0, "restricted_requests": 0, "restricted_accounts": 0})
        bk["accounts"] += 1
        bk["requests"] += int(per[a]["requests"])
        bk["restricted_requests"] += int(per[a]["restricted"])
        bk["restricted_accounts"] += int(per[a]["restricted"] > 0)
    result = {
        "bench": "policy_simulation",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "setup": {"scale": args.scale, "days": args.days, "seed": args.seed, "batch": args.batch,
                  "embeddings": embedder.name if embedder else None, "tune_split": "benign only, calibration",
                  "report_split": "held out, all personas", "threshold": threshold,
                  "calibration": {**{k: cal.get(k) for k in ("target_fpr", "accounts_scored", "achieved_fpr", "resolution")},
                                  "file": str(args.calibration) if args.calibration else None},
                  "policy": "PolicyConfig() defaults", "limits": tier.model_dump(),
                  "tokens": "completion_tokens from the events (drawn by detect/traffic.py per request)"},
        "events": len(events),
        "accounts": len(per),
        "legitimate": {
            "requests": int(n_benign),
            "restricted_share": restricted / n_benign if n_benign else None,
            "restricted_requests": int(restricted),
            "restricted_accounts": sum(1 for a in benign if per[a]["restricted"] > 0),
            "accounts": len(benign),
            "refused_by_policy_share": sum(per[a]["refused_429_policy_only"] for a in benign) / n_benign if n_benign else None,
            "blocked_or_verify_requests": int(actions["benign"]["block"] + actions["benign"]["verify"]),
            "degraded_requests": int(actions["benign"]["degrade"]),
            "throttled_requests": int(actions["benign"]["throttle"]),
            "by_kind": benign_kinds,
            "goal": "restricted_share <= 0.005",
        },
        "attackers": {
            "single_account": group(singles),
            "single_account_by_kind": {k: group(v) for k, v in sorted(by_kind.items())},
            "hydra": group([a for v in hydras.values() for a in v]),
            "hydra_by_group": {g: group(v) for g, v in sorted(hydras.items())},
            "goal": "reduction_x >= 10",
        },
        "actions": {side: dict(v) for side, v in actions.items()},
        "sensitivity": sensitivity(trace),
        "decide_us": {"median": statistics.median(decide_us), "p99": sorted(decide_us)[int(0.99 * len(decide_us))]},
        "seconds": {"calibration": round(cal_s, 1), "replay": round(replay_s, 1), "total": round(time.time() - t_start, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    lg, at = result["legitimate"], result["attackers"]
    print(f"benign restricted {lg['restricted_share']:.4%} of {lg['requests']:,} requests "
          f"({lg['restricted_accounts']}/{lg['accounts']} accounts); "
          f"single-account yield x{at['single_account']['yield_ratio']:.3f} (reduction {at['single_account']['reduction_x']:.1f}x), "
          f"hydra yield x{at['hydra']['yield_ratio']:.3f} (reduction {at['hydra']['reduction_x']:.1f}x) -> {args.out}")


if __name__ == "__main__":
    main()
