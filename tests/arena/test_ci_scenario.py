"""The ci scenario end to end (tiny model: real gateway subprocess, real clients, real training and
audit), then every headline number of metrics.json recomputed from the logged events."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow

T0_2025 = 1_763_596_800.0  # detect.traffic.T0: the simulated campaign starts here


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from rich.console import Console

    from distillguard.arena.runner import run_arena
    from distillguard.arena.scenario import load_scenario

    out = tmp_path_factory.mktemp("arena") / "ci"
    m = run_arena(load_scenario("ci"), out, Console(stderr=True, quiet=True))
    return out, m


def _events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]


def test_files_and_report(run: tuple[Path, dict[str, Any]]) -> None:
    out, m = run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["scenario"] == "ci" and on_disk["events"] == m["events"]
    html = (out / "report.html").read_text()
    imgs = re.findall(r"src='([^']+\.png)'", html)
    assert {"risk_over_time.png", "roc.png", "yield_impact.png", "topics.png"} <= set(imgs)
    for img in imgs:
        assert (out / img).stat().st_size > 1000, img
    assert "Detection table" in html and "Attacker yield" in html
    # `distillguard arena report DIR` re-renders the same page from metrics.json alone
    from distillguard.arena.runner import rerender

    (out / "report.html").unlink()
    assert rerender(out).read_text().count("<h2>") == html.count("<h2>")


def _chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (apt-get install chromium) to render the report")
def test_report_renders_in_headless_chromium(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The page a person opens, rendered by a real browser with its figures decoded and laid out:
    the plots are the only strongly coloured pixels on the page (text, tables and borders are grey
    or pale), so a page whose PNGs are missing or broken has none."""
    import subprocess

    import numpy as np
    from PIL import Image

    browser = _chromium()
    assert browser is not None
    out, _ = run
    png = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={png}", "--window-size=1280,6000", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert png.is_file(), proc.stderr[-2000:]
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255
    assert rgb.shape[:2] == (6000, 1280)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    coloured = ((hi - lo) / np.maximum(hi, 1e-6) > 0.5) & (hi > 0.2)
    # measured: 5.3% on the quick scenario's report, 0.0 on the same page with its PNGs removed
    assert coloured.mean() > 0.01, coloured.mean()
    # text made it too: many rows carry dark ink
    assert ((rgb.mean(axis=2) < 0.6).mean(axis=1) > 0.01).mean() > 0.1


def test_simulated_clock_and_client_headers_reached_the_log(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    events = _events(out)
    # arena mode: timestamps come from the personas' simulated clock (Nov 2025), not the wall clock
    assert all(T0_2025 <= e["ts"] < T0_2025 + 3 * 86_400 for e in events)
    # X-Forwarded-For from loopback: each persona's own address, not 127.0.0.1
    assert not any(e.get("ip") == "127.0.0.1" for e in events)
    labels = json.loads((out / "labels.json").read_text())
    hydra = [a for a, v in labels.items() if v["persona"] == "hydra"]
    keys = {a: {e["key"] for e in events if e["account"] == a} for a in hydra}
    assert all(len(k) == 2 for k in keys.values()), keys  # key rotation: two keys per hydra account used


def test_numbers_agree_with_the_log(run: tuple[Path, dict[str, Any]]) -> None:
    out, m = run
    events = _events(out)
    labels = json.loads((out / "labels.json").read_text())
    client = [json.loads(x) for x in (out / "client_log.jsonl").read_text().splitlines() if x.strip()]
    assert len(events) == m["events"] == len(client)  # every request the clients sent was logged once

    per_account = Counter(e["account"] for e in events)
    assert {a: v["requests"] for a, v in m["accounts"].items()} == dict(per_account)

    def is_att(e: dict[str, Any]) -> bool:
        return labels[e["account"]]["label"] == 1

    tokens = sum(e["response"]["completion_tokens"] for e in events if is_att(e) and e.get("status", 200) == 200)
    assert m["attacker_yield"]["tokens"] == tokens > 0
    benign = [e for e in events if not is_att(e)]
    hit = [e for e in benign if e.get("status", 200) in (403, 429) or (e.get("decision") or {}).get("action", "allow") != "allow"]
    assert m["legitimate_impact"]["benign_requests"] == len(benign)
    assert m["legitimate_impact"]["share"] == pytest.approx(len(hit) / len(benign))

    # flagged accounts: replay the log through a fresh detector with the scenario's settings
    from distillguard.arena.runner import detector_config
    from distillguard.arena.scenario import load_scenario
    from distillguard.detect.online import OnlineDetector
    from distillguard.events import read_events

    det = OnlineDetector(detector_config(load_scenario("ci")), embedder=None)
    for ev in sorted(read_events(out / "events.jsonl"), key=lambda e: e.ts):
        det.process(ev)
    det.finish()
    flagged = sorted(v["account"] for v in det.verdicts() if v["flagged"])
    assert m["detection"]["flagged"] == flagged
    scores = {v["account"]: v["score"] for v in det.verdicts()}
    assert {r["account"]: r["score"] for r in m["detection"]["table"]} == pytest.approx(scores)


def test_attacker_trained_and_was_audited(run: tuple[Path, dict[str, Any]]) -> None:
    _, m = run
    s = m["student"]
    assert s["collected_answers"] > 0 and s["train"]["steps"] == 2
    ra = s["radioactivity"]["student"]
    assert 0.0 <= ra["p_value"] <= 1.0 and ra["tuples_scored"] > 0
    # the student read unwatermarked answers to the attacker's prompts, not the watermarked texts
    assert "unwatermarked answers" in s["radioactivity"]["contexts"]
    # the collected answers carry the gateway's watermark, and a random key does not see it
    wm = m["watermark"]
    assert wm["attacker"]["p_value"] < 1e-6 < wm["attacker_random_key"]["p_value"]
    assert {r["name"] for r in s["quality"]["models"]} >= {"teacher", "student"}
