"""`distillguard arena run`: the whole experiment, top to bottom.

    1. config + keys + watermark key into DIR; `distillguard serve` as a subprocess on loopback
    2. personas (benign, attacker, hydra) as concurrent `openai` clients on a simulated clock
    3. the gateway's own view (admin API), then SIGTERM (every event reaches the store)
    4. events.jsonl exported from the store; detection replayed over it (risk over time)
    5. the attacker trains a student on what it collected (distill pipeline, sequence-level KD)
       and the arena audits the student for radioactivity with the gateway's watermark key
    6. metrics.json and report.html (+ PNGs)
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distillguard.arena import metrics as M
from distillguard.arena.client import AccountRun, run_traffic, write_client_log
from distillguard.arena.personas import AccountPlan, load_corpora, plan_scenario
from distillguard.arena.scenario import Scenario
from distillguard.arena.server import ArenaServer, start, write_config


@dataclass
class Stage:
    """Wall time of each stage, for the report and the budget."""

    times: dict[str, float] = field(default_factory=dict)
    _t: float = field(default_factory=time.perf_counter)
    _name: str | None = None

    def __call__(self, name: str, console: Console) -> None:
        self.end()
        self._name, self._t = name, time.perf_counter()
        console.print(f"[bold cyan]arena[/] {name} …")

    def end(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.perf_counter() - self._t, 2)
            self._name = None


def labels_of(plans: list[AccountPlan]) -> dict[str, dict[str, Any]]:
    return {p.name: {"label": p.label, "persona": p.persona, "kind": p.kind, "group": p.group} for p in plans}


def run_arena(sc: Scenario, out: Path, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    import torch

    torch.set_num_threads(sc.torch_threads)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    stage = Stage()

    stage("starting the gateway", console)
    model_path: Path | None = None
    if sc.model == "tiny":
        from distillguard.engines.tiny import make_tiny_model

        model_path = make_tiny_model(out / "tiny-model")
    server = write_config(sc, out, model_path)
    corpora = load_corpora(sc.corpora)
    plans = plan_scenario(sc, corpora)
    labels = labels_of(plans)
    runs = _create_keys(server, plans)
    (out / "labels.json").write_text(json.dumps(labels, indent=2))
    start(server, runs[0].secrets[0])
    try:
        stage("sending traffic", console)
        n_planned = sum(p.planned_requests for p in plans)
        console.print(f"  {len(plans)} accounts ({sum(p.label for p in plans)} attacker), {n_planned} planned requests "
                      f"over {sc.days:g} simulated days; gateway {server.url}")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bars:
            traffic = asyncio.run(run_traffic(server.url + "/v1", "smollm2", server.arena_secret, runs,
                                              concurrency=sc.concurrency, max_real_sleep_s=sc.max_real_sleep_s,
                                              budget_s=sc.traffic_budget_s, progress=bars))
        write_client_log(traffic, out / "client_log.jsonl")
        stage("reading the gateway's own verdicts (admin API)", console)
        live = _live_view(server, plans)
    finally:
        code = server.stop()
    if code not in (0, None, -15):  # uvicorn re-raises SIGTERM after its graceful shutdown
        console.print(f"[yellow]the gateway exited with code {code}; see {server.log_path}[/]")

    stage("exporting events and replaying detection", console)
    events = _export_events(server.store_url, out / "events.jsonl")
    planned = {p.name: p.planned_requests for p in plans}
    numbers = M.traffic_numbers(events, labels, planned)
    detection = _detection(sc, events, labels)

    stage("watermark evidence", console)
    wm = _watermark_evidence(server, traffic.collected, events, labels)

    student: dict[str, Any] = {"skipped": "distill.enabled = false" if not sc.distill.enabled else
                               "the attacker collected no answers (refused from its first requests)"}
    if sc.distill.enabled and traffic.collected:
        stage("attacker trains a student on what it collected", console)
        from distillguard.arena.attacker import train_and_audit

        try:
            student = train_and_audit(sc, out, server, traffic.collected, model_path, console)
        except Exception as exc:  # noqa: BLE001 - the traffic, detection and watermark results are kept
            import traceback

            (out / "student_error.txt").write_text(traceback.format_exc())
            console.print(f"[red]the attacker's student failed: {type(exc).__name__}: {exc}[/] "
                          f"(traceback in {out / 'student_error.txt'}); the report goes on without it")
            student = {"error": f"{type(exc).__name__}: {exc}"[:400]}

    stage("topic map and report", console)
    from distillguard.arena.report import topic_map, write_report

    topics = topic_map(events, labels, sc.topics, sc.seed, threads=sc.torch_threads)
    stage.end()
    wall = time.perf_counter() - t_start
    result = {
        "scenario": sc.name,
        "description": sc.description,
        "out": str(out),
        "gateway": {"config": str(server.config_path), "model": sc.model, "model_path": str(model_path or "SmolLM2 GGUF")},
        "corpora": corpora.source,
        "simulated_days": sc.days,
        "account_counts": {"total": len(plans), "attacker": sum(p.label for p in plans),
                     "benign": sum(1 - p.label for p in plans)},
        "planned_requests": n_planned,
        "traffic": {"client_requests": len(traffic.sent), "seconds": round(traffic.seconds, 1),
                    "not_sent": traffic.skipped, "budget_s": sc.traffic_budget_s},
        **numbers,
        "detection": detection,
        "live": live,
        "watermark": wm,
        "student": student,
        "topics": topics,
        "timing": {"wall_s": round(wall, 1), "stages_s": stage.times, "load_avg_start": load0,
                   "load_avg_end": os.getloadavg(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    write_report(result, topics, detection, out)
    return result


def rerender(out: Path) -> Path:
    """Write report.html and the PNGs again from DIR/metrics.json (no traffic, no training)."""
    from distillguard.arena.report import write_report

    m = json.loads((out / "metrics.json").read_text())
    return write_report(m, m["topics"], m["detection"], out)


def _create_keys(server: ArenaServer, plans: list[AccountPlan]) -> list[AccountRun]:
    from distillguard.store import open_store

    store = open_store(server.store_url)
    try:
        runs = []
        for p in plans:
            secrets = [store.create_key(p.name, p.tier)[1] for _ in range(p.keys)]
            runs.append(AccountRun(plan=p, secrets=secrets))
        return runs
    finally:
        store.close()


def _live_view(server: ArenaServer, plans: list[AccountPlan], settle_s: float = 3.0) -> dict[str, Any]:
    """What the running gateway itself concluded (its detection worker and policy)."""
    time.sleep(settle_s)  # let the worker drain the bus
    view: dict[str, Any] = {}
    for name, path in (("flagged", "/admin/policy/flagged"), ("clusters", "/admin/policy/clusters"),
                       ("detect_clusters", "/admin/detect/clusters")):
        try:
            view[name] = server.admin(path)
        except Exception as exc:  # noqa: BLE001 - a missing admin route is reported, not fatal
            view[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    accounts = {}
    for p in plans:
        try:
            accounts[p.name] = server.admin(f"/admin/detect/accounts/{p.name}")
        except Exception as exc:  # noqa: BLE001
            accounts[p.name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    view["accounts"] = accounts
    return view


def _export_events(store_url: str, path: Path) -> list[dict[str, Any]]:
    import orjson

    from distillguard.store import open_store

    store = open_store(store_url)
    try:
        events = [ev.model_dump(mode="json", exclude_none=True) for ev in store.iter_events()]
    finally:
        store.close()
    events.sort(key=lambda e: (e["ts"], e.get("id") or ""))
    with open(path, "wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e) + b"\n")
    return events


def detector_config(sc: Scenario) -> Any:
    from distillguard.detect.config import DetectConfig

    return DetectConfig(embeddings=sc.embeddings, link_every_events=sc.link_every_events, link_min_requests=4,
                        default_threshold=sc.detect_threshold or 0.9)


def _detection(sc: Scenario, events: list[dict[str, Any]], labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cfg = detector_config(sc)
    embedder = None
    if cfg.embeddings:
        from distillguard.detect.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder(max_seq_length=cfg.embed_max_seq_length, batch_size=cfg.embed_batch_size,
                                  threads=sc.torch_threads)
    det, series = M.replay(events, cfg, embedder)
    verdicts = det.verdicts()
    scores = {v["account"]: v["score"] for v in verdicts}
    t0 = min((e["ts"] for e in events), default=0.0)
    table = []
    for v in verdicts:
        lab = labels.get(v["account"], {})
        table.append({**v, "label": lab.get("label"), "persona": lab.get("persona"), "kind": lab.get("kind"),
                      "flagged_after_h": (v["flagged_at"] - t0) / 3600 if v["flagged_at"] else None})
    attackers = [r for r in table if r["label"] == 1]
    benign = [r for r in table if r["label"] == 0]
    return {
        "threshold": det.threshold,
        "calibrated": det.calibrated,
        "threshold_note": sc.threshold_note or ("the detector's uncalibrated default" if not det.calibrated else ""),
        "embeddings": cfg.embeddings,
        "t0": t0,
        "table": table,
        "flagged": sorted(r["account"] for r in table if r["flagged"]),
        "attackers_flagged": sum(1 for r in attackers if r["flagged"]),
        "attackers": len(attackers),
        "benign_flagged": sum(1 for r in benign if r["flagged"]),
        "benign": len(benign),
        "roc": M.roc(scores, labels),
        "clusters": det.clusters(),
        "series": series,
    }


def _watermark_evidence(server: ArenaServer, collected: dict[str, list[dict[str, Any]]], events: list[dict[str, Any]],
                        labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pooled p-value of the attacker's collected answers under the gateway's key, and the same
    texts under a fresh random key (what an unrelated key says: should not be significant)."""
    import secrets as _s

    from distillguard.watermark.detect import DetectionInputError, Detector
    from distillguard.watermark.keys import KeyRing
    from distillguard.watermark.processors import WatermarkService

    cfg = server.watermark_config()
    svc = WatermarkService(cfg, KeyRing.from_secret(server.watermark_key))
    texts = [r["response"] for recs in collected.values() for r in recs if r["response"].strip()]
    benign_texts = [(e.get("response") or {}).get("text", "") for e in events
                    if labels.get(e["account"], {}).get("label") == 0 and e.get("status", 200) == 200]
    import dataclasses

    out: dict[str, Any] = {"scheme": dataclasses.asdict(cfg.scheme_params()), "attacker_texts": len(texts)}
    try:
        r = svc.detector().detect_texts(texts)
        out["attacker"] = {"p_value": r.p_value, "tokens_scored": r.tokens_scored, "score": r.score,
                           "verdict": r.verdict, "texts": r.texts}
        ctrl = Detector(cfg.scheme_params(), KeyRing.from_secret(_s.token_hex(32)), svc.tokenizer).detect_texts(texts)
        out["attacker_random_key"] = {"p_value": ctrl.p_value, "tokens_scored": ctrl.tokens_scored}
        bt = [t for t in benign_texts if t.strip()]
        if bt:
            b = svc.detector().detect_texts(bt)
            out["benign"] = {"p_value": b.p_value, "tokens_scored": b.tokens_scored, "texts": b.texts}
    except (DetectionInputError, ValueError) as exc:
        out["error"] = str(exc)
    return out
