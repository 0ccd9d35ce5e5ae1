"""The board fed by the real OnlineDetector (no embeddings: fast): clusters and risk mirror the
detector's verdicts, and every cluster member's effective risk is the cluster's maximum."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillguard.detect.config import DetectConfig  # noqa: E402
from distillguard.detect.online import OnlineDetector, iter_batches  # noqa: E402
from distillguard.detect.traffic import Mix, build_traffic, load_corpora  # noqa: E402
from distillguard.events import ExchangeEvent  # noqa: E402
from distillguard.policy.state import RiskBoard  # noqa: E402


@pytest.mark.slow  # ~10-30 s on 2 busy cores (the detector replays ~2k events)
def test_board_mirrors_detector_clusters_and_inherits_max_risk() -> None:
    mix = Mix(searcher=10, app_user=3, chatter=3, tutor=3, coder=3, rag_app=0, researcher=1, gsm8k_sweep=1,
              code_sweep=0, template_generator=0, slow_and_low=0, paraphraser=0, with_cover=0, hydras=((20, "gsm8k"),))
    b = build_traffic(load_corpora("tune"), mix, seed=5, days=4)
    events = [ExchangeEvent.model_validate(e) for e in b.sorted_events()]
    det = OnlineDetector(DetectConfig(embeddings=False, link_every_events=300), embedder=None, threshold=0.5)
    board = RiskBoard(det.threshold)
    cb = board.detector_callback()
    for batch in iter_batches(events, 128):
        cb(det, det.process_batch(batch))
    cb(det, det.relink() | set(det.accounts))
    clusters = det.clusters()
    assert clusters, "the detector linked no accounts in a 20-account hydra"
    for cid, members in clusters.items():
        assert board.cluster_members(cid) == frozenset(members)
        top = max(det.verdict(a)["score"] for a in members)
        for a in members:
            assert board.effective(a).risk == pytest.approx(max(top, board.risk(a).risk), abs=1e-6)
    for a in det.accounts:
        assert board.risk(a).risk == pytest.approx(det.verdict(a)["score"], abs=1e-6)
