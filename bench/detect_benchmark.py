"""Detection benchmark: calibrate on benign tune traffic, report on held-out traffic.

    nice -n 10 .venv/bin/python bench/detect_benchmark.py [--scale 0.7] [--no-embeddings]

1. Corpora in ../shared/datasets are split in halves by item hash ("tune" / "report").
2. Tune traffic (benign personas only, tune half) -> `calibrate` -> threshold file (target FPR).
   The plain windowed-MMD baseline is calibrated on the same benign accounts.
3. Report traffic (benign, hard benign and attackers, report half; new seed) is written as spec
   JSONL and replayed through `replay` (a fresh embedder cache, so throughput includes embedding).
4. Metrics for both detectors on the report split: ROC AUC, TPR/FPR at the calibrated operating
   point, TPR at FPR 0.1% / 1% read off the report ROC, median requests_before_flag, hydra linkage
   (share of members linked to another member, adjusted Rand index), events/s.
Results: bench/results/detect_benchmark.json (with the command line and machine facts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distillguard.detect.baseline import WindowedMMD  # noqa: E402
from distillguard.detect.calibrate import calibrate, is_reference_account, threshold_for_fpr, write_calibration  # noqa: E402
from distillguard.detect.config import DetectConfig  # noqa: E402
from distillguard.detect.online import OnlineDetector  # noqa: E402
from distillguard.detect.replay import replay, write_verdicts  # noqa: E402
from distillguard.detect.traffic import Mix, build_traffic, load_corpora, write_jsonl  # noqa: E402
from distillguard.events import ExchangeEvent, read_events  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name and the matrix extensions that decide MiniLM's speed (bf16/AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    ext = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(ext) or 'no avx512'})"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """TPR read off the ROC: threshold just above the benign score that keeps FPR <= fpr."""
    benign = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(fpr * len(benign) + 1e-9))
    thr = np.nextafter(benign[k], np.inf) if k < len(benign) else -np.inf
    return float(np.mean(scores[labels == 1] >= thr))


def metrics(labels: dict[str, dict], scores: dict[str, float], flagged: dict[str, bool],
            rbf: dict[str, int | None], clusters: dict[str, str | None] | None) -> dict:
    from sklearn.metrics import adjusted_rand_score, roc_auc_score

    accts = sorted(labels)
    y = np.array([labels[a]["label"] for a in accts])
    s = np.array([scores.get(a, 0.0) for a in accts])
    f = np.array([flagged.get(a, False) for a in accts])
    out = {
        "accounts": {"benign": int((y == 0).sum()), "attack": int((y == 1).sum())},
        "roc_auc": float(roc_auc_score(y, s)),
        "operating_point": {"tpr": float(f[y == 1].mean()), "fpr": float(f[y == 0].mean()),
                            "false_positives": int(f[y == 0].sum()), "missed": int((~f[y == 1]).sum())},
        "tpr_at_fpr_0.001_report_roc": tpr_at_fpr(y, s, 0.001),
        "tpr_at_fpr_0.01_report_roc": tpr_at_fpr(y, s, 0.01),
    }
    solo = np.array([labels[a]["label"] == 1 and not labels[a]["group"] for a in accts])
    if solo.any():
        y_solo = y[(y == 0) | solo]
        s_solo = s[(y == 0) | solo]
        out["single_account_attackers"] = {
            "n": int(solo.sum()), "tpr_operating_point": float(f[solo].mean()),
            "tpr_at_fpr_0.001_report_roc": tpr_at_fpr(y_solo, s_solo, 0.001),
            "tpr_at_fpr_0.01_report_roc": tpr_at_fpr(y_solo, s_solo, 0.01)}
    single = [rbf[a] for a in accts if labels[a]["label"] == 1 and not labels[a]["group"] and rbf.get(a) is not None]
    out["median_requests_before_flag_single_account"] = float(statistics.median(single)) if single else None
    hyd = [rbf[a] for a in accts if labels[a]["group"] and rbf.get(a) is not None]
    out["median_requests_before_flag_hydra_members"] = float(statistics.median(hyd)) if hyd else None
    per = defaultdict(lambda: {"n": 0, "flagged": 0, "scores": []})
    for a in accts:
        k = labels[a]["kind"]
        per[k]["n"] += 1
        per[k]["flagged"] += int(flagged.get(a, False))
        per[k]["scores"].append(scores.get(a, 0.0))
    out["per_persona"] = {k: {"n": v["n"], "flagged": v["flagged"], "median_score": float(np.median(v["scores"])),
                              "max_score": float(np.max(v["scores"]))} for k, v in sorted(per.items())}
    if clusters is not None:
        members = [a for a in accts if labels[a]["group"]]
        by_cluster = defaultdict(list)
        for a in accts:
            if clusters.get(a):
                by_cluster[clusters[a]].append(a)
        linked = [a for a in members if clusters.get(a) and
                  any(labels[b]["group"] == labels[a]["group"] for b in by_cluster[clusters[a]] if b != a)]
        true = [labels[a]["group"] or f"solo:{a}" for a in accts]
        pred = [clusters.get(a) or f"solo:{a}" for a in accts]
        benign_clustered = [a for a in accts if labels[a]["label"] == 0 and clusters.get(a)]
        out["hydra"] = {
            "members": len(members), "linked": len(linked),
            "share_linked": len(linked) / len(members) if members else None,
            "adjusted_rand_index": float(adjusted_rand_score(true, pred)),
            "clusters": len(by_cluster), "benign_accounts_in_clusters": len(benign_clustered),
            "members_flagged": int(sum(flagged.get(a, False) for a in members)),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.7, help="multiply every persona count (1.0 = 1,495 benign accounts)")
    ap.add_argument("--tune-benign-scale", type=float, default=3.0,
                    help="calibration (tune split, benign only) accounts vs report: ~2,300 benign accounts, so the 0.1%% "
                         "quantile rests on more than one or two hard benign accounts")
    ap.add_argument("--no-embeddings", action="store_true", help="skip MiniLM (topic signals off)")
    ap.add_argument("--workdir", default="/tmp/detect_bench")
    ap.add_argument("--out", default=str(ROOT / "bench/results/detect_benchmark.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-fpr", type=float, default=0.001)
    ap.add_argument("--embed-threads", type=int, default=None,
                    help="torch threads for MiniLM (default: the product's detect.embed_threads, 1); offline replay "
                         "may give the embedder every core, as the replay CLI does")
    ap.add_argument("--eval-split", choices=["report", "tune"], default="report",
                    help="'tune' evaluates on attack traffic built from the tune split (a development readout for "
                         "choosing settings; the report split stays unseen)")
    ap.add_argument("--replay-repeats", type=int, default=3,
                    help="time the replay this many times, each with a fresh detector and a cold embedding cache; "
                         "the median is reported (the verdicts are the first run's; every run must agree)")
    ap.add_argument("--note", default="", help="recorded with the machine facts (e.g. what else ran)")
    ap.add_argument("--embed-full-first", type=int, default=None, help="override detect.embed_full_first")
    ap.add_argument("--embed-every", type=int, default=None, help="override detect.embed_every")
    ap.add_argument("--embed-max-seq-length", type=int, default=None, help="override detect.embed_max_seq_length")
    ap.add_argument("--link-every-events", type=int, default=None, help="override detect.link_every_events")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    load_at_start = os.getloadavg()

    def new_embedder():
        if args.no_embeddings:
            return None
        from distillguard.detect.embed import MiniLMEmbedder
        return MiniLMEmbedder(max_seq_length=cfg.embed_max_seq_length, batch_size=cfg.embed_batch_size,
                              threads=args.embed_threads or cfg.embed_threads)

    cfg = DetectConfig()
    for k in ("embed_full_first", "embed_every", "embed_max_seq_length", "link_every_events"):
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    mix = Mix().scaled(args.scale)
    tune_mix = Mix().scaled(args.scale * args.tune_benign_scale)
    tune_mix.benign_only = True

    # ---- tune split: benign only -> calibration (never sees attack traffic)
    tune = build_traffic(load_corpora("tune"), tune_mix, seed=args.seed + 1)
    tune_events = [ExchangeEvent.model_validate(e) for e in tune.sorted_events()]
    write_jsonl(tune.sorted_events(), work / "tune_benign.jsonl")
    log(f"tune: {len(tune_events):,} benign events, {len(tune.personas):,} accounts")
    emb = new_embedder()
    t0 = time.time()
    cal = calibrate(tune_events, target_fpr=args.target_fpr, config=cfg, embedder=emb)
    write_calibration(cal, work / "threshold.json")
    log(f"calibrated: threshold {cal['threshold']:.4f} on {cal['accounts_scored']} accounts ({time.time() - t0:.0f}s)")
    base_thr = None
    if emb is not None:
        base = WindowedMMD(emb, cal["reference_prompts"], embed_full_first=cfg.embed_full_first, embed_every=cfg.embed_every)
        base.run(tune_events)
        bs = base.scores()
        base_thr, _ = threshold_for_fpr([bs[a] for a in bs if not is_reference_account(a)], args.target_fpr)
        log(f"baseline calibrated: threshold {base_thr:.4f}")
    del tune_events

    # ---- report split: held-out prompts, new seed, attackers included
    rep = build_traffic(load_corpora(args.eval_split), mix, seed=args.seed + 2)
    labels = rep.labels()
    write_jsonl(rep.sorted_events(), work / "report.jsonl")
    (work / "report_labels.json").write_text(json.dumps(labels))
    n_events = len(rep.events)
    log(f"report: {n_events:,} events, {len(labels):,} accounts ({sum(v['label'] for v in labels.values())} attack)")
    del rep

    cfg_rep = cfg.model_copy()
    cfg_rep.threshold_file = work / "threshold.json"
    emb2 = new_embedder()
    det = OnlineDetector(cfg_rep, embedder=emb2)
    cpu0 = time.process_time()
    res = replay(work / "report.jsonl", det, warn=sys.stderr)
    replay_cpu = time.process_time() - cpu0
    write_verdicts(res.verdicts, work / "report_verdicts.jsonl")
    log(f"replay: {res.events:,} events in {res.seconds:.0f}s = {res.events_per_s:,.0f} events/s; {res.flagged} flagged")
    runs = [(res.events_per_s, replay_cpu)]
    for _ in range(args.replay_repeats - 1):
        det_k = OnlineDetector(cfg_rep, embedder=new_embedder())
        cpu_k = time.process_time()
        res_k = replay(work / "report.jsonl", det_k, warn=None)
        runs.append((res_k.events_per_s, time.process_time() - cpu_k))
        if [x["score"] for x in res_k.verdicts] != [x["score"] for x in res.verdicts]:
            raise SystemExit("replay is not deterministic: a repeat gave other scores")
        log(f"replay repeat: {res_k.events_per_s:,.0f} events/s")
        del det_k
    v = {x["account"]: x for x in res.verdicts}
    ours = metrics(labels, {a: x["score"] for a, x in v.items()}, {a: x["flagged"] for a, x in v.items()},
                   {a: x["requests_before_flag"] for a, x in v.items()}, {a: x["cluster"] for a, x in v.items()})
    members = [a for a in labels if labels[a]["group"]]
    ours["hydra"]["members_whose_own_peak_risk_stayed_below_threshold"] = sum(
        1 for a in members if det.accounts[a].peak_own < det.threshold)
    ours["replay_events_per_s"] = float(np.median([r[0] for r in runs]))
    ours["replay_events_per_s_runs"] = [r[0] for r in runs]
    ours["replay_cpu_seconds_runs"] = [r[1] for r in runs]
    ours["replay_seconds"] = res.seconds
    # CPU seconds of this process (both threads): a load-independent cost. On an idle 2-core
    # machine the pipelined replay runs at up to 2x events-per-CPU-second when both threads are busy
    ours["replay_cpu_seconds"] = replay_cpu
    ours["replay_events_per_cpu_second"] = res.events / replay_cpu if replay_cpu > 0 else None
    ours["threshold"] = cal["threshold"]
    if emb2 is not None:
        ours["embedding_cache"] = {"hits": emb2.cache.hits, "misses": emb2.cache.misses}
        ours["embedding_dtype"] = emb2.dtype

    baseline = None
    if emb2 is not None and base_thr is not None:
        evs = list(read_events(work / "report.jsonl", warn=None))
        b = WindowedMMD(emb2, cal["reference_prompts"], threshold=base_thr, embed_full_first=cfg.embed_full_first,
                        embed_every=cfg.embed_every)
        t0 = time.time()
        b.run(evs)
        dt = time.time() - t0
        baseline = metrics(labels, b.scores(), {a: s.flagged_at is not None for a, s in b.accounts.items()},
                           {a: s.requests_before_flag for a, s in b.accounts.items()}, None)
        baseline["replay_events_per_s_warm_embedding_cache"] = len(evs) / dt
        baseline["threshold"] = base_thr
        log(f"baseline: AUC {baseline['roc_auc']:.3f}, TPR {baseline['operating_point']['tpr']:.3f}")

    import torch

    out = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                    "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_at_end": os.getloadavg(),
                    "load_average_at_start": load_at_start,
                    "note": "throughput depends on what else runs: see the load averages" + (
                        f"; {args.note}" if args.note else "")},
        "setup": {"scale": args.scale, "seed": args.seed, "target_fpr": args.target_fpr, "eval_split": args.eval_split,
                  "embeddings": None if args.no_embeddings else "minilm-l6 (max_seq_length "
                  f"{cfg.embed_max_seq_length}, first {cfg.embed_full_first} prompts/account then 1 in {cfg.embed_every}, "
                  f"{args.embed_threads or cfg.embed_threads} torch thread(s))",
                  "tune_benign_accounts": len(tune.personas), "report_events": n_events,
                  "calibration": {k: cal[k] for k in ("threshold", "accounts_scored", "allowed_false_positives",
                                                       "achieved_fpr", "resolution", "score_quantiles")}},
        "detector": ours,
        "baseline_windowed_mmd": baseline,
        "goals": {"tpr_at_fpr_0.001": ">= 0.95", "median_requests_before_flag": "<= 200",
                  "hydra_share_linked": ">= 0.90", "replay_events_per_s": ">= 1000"},
        "total_seconds": time.time() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    log(f"wrote {args.out}")
    print(json.dumps({"detector": {k: ours[k] for k in ("roc_auc", "operating_point", "tpr_at_fpr_0.001_report_roc",
                                                        "tpr_at_fpr_0.01_report_roc", "median_requests_before_flag_single_account",
                                                        "hydra", "replay_events_per_s")}}, indent=1))


if __name__ == "__main__":
    main()
