import json

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.detect.calibrate import CalibrationError, calibrate, is_reference_account, threshold_for_fpr
from distillguard.detect.embed import HashingEmbedder
from distillguard.detect.online import OnlineDetector
from distillguard.detect.traffic import Mix, build_traffic, load_corpora, write_jsonl
from distillguard.events import ExchangeEvent


def test_threshold_for_fpr_keeps_false_positives_at_or_below_target():
    scores = [i / 100 for i in range(100)]
    thr, k = threshold_for_fpr(scores, 0.05)
    assert k == 5
    assert sum(s >= thr for s in scores) == 5
    thr0, k0 = threshold_for_fpr(scores, 0.001)
    assert k0 == 0 and thr0 > max(scores)


@pytest.fixture(scope="module")
def benign():
    b = build_traffic(load_corpora("tune"), Mix(searcher=50, app_user=15, chatter=15, tutor=8, coder=6, rag_app=1,
                                                researcher=2, benign_only=True), seed=5, days=5)
    return b.sorted_events()


def test_calibration_respects_target_fpr_on_benign_only_data(benign):
    events = [ExchangeEvent.model_validate(e) for e in benign]
    cal = calibrate(events, target_fpr=0.05, embedder=HashingEmbedder())
    assert cal["accounts_scored"] >= 20 and cal["reference_prompts"]
    det = OnlineDetector(embedder=HashingEmbedder(), threshold=cal["threshold"],
                         reference_prompts=cal["reference_prompts"])
    from distillguard.detect.online import iter_batches
    for b in iter_batches(events, 256):
        det.process_batch(b)
    det.finish()
    scored = [a for a in det.accounts if not is_reference_account(a)]
    fp = sum(1 for a in scored if det.accounts[a].flagged_at is not None)
    assert fp / len(scored) <= 0.05 + 1e-9
    assert cal["achieved_fpr"] <= 0.05


def test_calibrate_refuses_too_few_accounts(benign):
    events = [ExchangeEvent.model_validate(e) for e in benign if e["account"].startswith("searcher")][:30]
    with pytest.raises(CalibrationError, match="at least"):
        calibrate(events, target_fpr=0.001)


def test_cli_calibrate_writes_threshold_file_that_replay_loads(benign, tmp_path):
    log = tmp_path / "benign.jsonl"
    write_jsonl(benign, log)
    out = tmp_path / "thr.json"
    r = CliRunner().invoke(app, ["detect", "calibrate", str(log), "--out", str(out), "--target-fpr", "0.05",
                                 "--no-embeddings"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["target_fpr"] == 0.05 and 0 < data["threshold"] <= 1.0 + 1e-9
    v = tmp_path / "v.jsonl"
    r = CliRunner().invoke(app, ["detect", "replay", str(log), "--out", str(v), "--threshold-file", str(out),
                                 "--no-embeddings"])
    assert r.exit_code == 0, r.output
    assert "uncalibrated" not in r.output
    r = CliRunner().invoke(app, ["detect", "calibrate", str(log), "--out", str(out), "--target-fpr", "2"])
    assert r.exit_code != 0 and "target-fpr" in r.output
