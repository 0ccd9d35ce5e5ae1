import json

import orjson
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.detect.embed import HashingEmbedder
from distillguard.detect.online import OnlineDetector
from distillguard.detect.replay import replay, sorted_within_window
from distillguard.events import ExchangeEvent

VERDICT_FIELDS = {"account", "score", "flagged", "flagged_at", "requests_before_flag", "requests", "cluster", "evidence"}


def validate_verdict(v: dict, threshold: float) -> None:
    assert set(v) == VERDICT_FIELDS
    assert isinstance(v["account"], str)
    assert 0.0 <= v["score"] <= 1.0
    assert isinstance(v["flagged"], bool)
    assert isinstance(v["requests"], int) and v["requests"] >= 1
    if v["flagged"]:
        assert isinstance(v["flagged_at"], float)
        assert 1 <= v["requests_before_flag"] <= v["requests"]
        assert v["score"] >= threshold - 1e-6
    else:
        assert v["flagged_at"] is None and v["requests_before_flag"] is None
    assert v["cluster"] is None or isinstance(v["cluster"], str)
    values = []
    for e in v["evidence"]:
        assert set(e) == {"signal", "value", "detail"}
        assert 0.0 <= e["value"] <= 1.0 and isinstance(e["detail"], str) and e["detail"]
        values.append(e["value"])


def write_log(path, events, bad_lines=()):
    lines = [orjson.dumps(e).decode() for e in events]
    for at, text in sorted(bad_lines):
        lines.insert(at - 1, text)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def replayed(small_traffic, tmp_path_factory):
    events, labels = small_traffic
    p = tmp_path_factory.mktemp("replay") / "events.jsonl"
    write_log(p, events)
    det = OnlineDetector(embedder=HashingEmbedder(), threshold=0.8)
    res = replay(p, det, warn=None)
    return det, res, labels, p


def test_replay_scores_attackers_above_benign(replayed):
    det, res, labels, _ = replayed
    assert res.accounts == len(labels)
    for v in res.verdicts:
        validate_verdict(v, det.threshold)
    att = [v["score"] for v in res.verdicts if labels[v["account"]]["label"] == 1]
    ben = sorted(v["score"] for v in res.verdicts if labels[v["account"]]["label"] == 0)
    # most attacker accounts outrank the 95th-percentile benign account
    p95 = ben[int(0.95 * len(ben))]
    assert sum(a > p95 for a in att) / len(att) >= 0.8


def test_hydra_members_are_clustered_together(replayed):
    det, res, labels, _ = replayed
    members = [a for a, lab in labels.items() if lab["group"]]
    clusters = {v["account"]: v["cluster"] for v in res.verdicts}
    assert sum(1 for a in members if clusters[a]) / len(members) >= 0.8
    benign_clustered = [a for a, lab in labels.items() if lab["label"] == 0 and clusters[a]]
    assert len(benign_clustered) <= 2


def test_cli_replay_reports_malformed_lines_and_writes_spec_verdicts(small_traffic, tmp_path):
    events, labels = small_traffic
    events = events[:1500]
    log = tmp_path / "events.jsonl"
    write_log(log, events, bad_lines=[(3, "{not json"), (10, '{"account": "x", "request": {}}'), (20, "[1, 2]")])
    out = tmp_path / "verdicts.jsonl"
    r = CliRunner().invoke(app, ["detect", "replay", str(log), "--out", str(out), "--no-embeddings"])
    assert r.exit_code == 0, r.output
    assert "line 3:" in r.output and "line 10:" in r.output and "line 20:" in r.output
    assert "ts" in r.output.split("line 10:")[1].splitlines()[0]
    assert "skipped 3 malformed line(s)" in r.output
    verdicts = [json.loads(x) for x in out.read_text().splitlines()]
    assert {v["account"] for v in verdicts} == {e["account"] for e in events}
    for v in verdicts:
        validate_verdict(v, 0.0)


def test_cli_empty_log_gives_empty_verdicts_and_message(tmp_path):
    log = tmp_path / "empty.jsonl"
    log.write_text("")
    out = tmp_path / "v.jsonl"
    r = CliRunner().invoke(app, ["detect", "replay", str(log), "--out", str(out), "--no-embeddings"])
    assert r.exit_code == 0, r.output
    assert out.exists() and out.read_text() == ""
    assert "no valid events" in r.output


def test_cli_missing_file_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["detect", "replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "v")])
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output


def test_sort_window_restores_order():
    evs = [ExchangeEvent(ts=t, account="a", request={"prompt": "x"}) for t in [3, 1, 2, 6, 4, 5]]
    assert [e.ts for e in sorted_within_window(evs, window=3)] == [1, 2, 3, 4, 5, 6]
