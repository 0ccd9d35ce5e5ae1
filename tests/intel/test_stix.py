"""STIX export (valid, ATLAS attack pattern, no prompts/names/keys by default), import (matching
traffic gets raised risk), invalid bundles (clear errors)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import stix2
from typer.testing import CliRunner

from distillguard.gateway.policy import PolicyContext
from distillguard.intel.cli import app
from distillguard.intel.indicators import IndicatorError, load_indicators
from distillguard.intel.stix import ExportOptions, build_bundle, import_bundle
from distillguard.policy.config import PolicyConfig
from distillguard.policy.engine import RiskPolicy
from distillguard.policy.state import RiskBoard
from distillguard.store.base import Account, KeyRecord

TEMPLATE = "Solve the following problem. Show your complete reasoning before giving the final answer.\n\n{q}"
QUESTIONS = [f"A farmer has {i} cows and buys {i + 3} more each week for {i % 5 + 2} weeks. How many cows are there now?"
             for i in range(40)]
BENIGN = ["what is the tallest mountain in europe", "write a haiku about autumn leaves",
          "how do I reverse a list in python", "who wrote pride and prejudice"]
SHARED_NAT = "192.0.2.50"
SECRET_KEY = "dg-key_supersecret123"


def ctx(name: str, ip: str, prompt: str = "What is the capital of France?") -> PolicyContext:
    return PolicyContext(account=Account(name, "standard", 0.0), key=KeyRecord("k", name, "standard", 0.0),
                         tier="standard", endpoint="/v1/chat/completions",
                         request={"messages": [{"role": "user", "content": prompt}]}, prompt_tokens=9, ip=ip,
                         user_agent="OpenAI/Python 1.54.0", ts=time.time(), engine=None)  # type: ignore[arg-type]


def _ev(i: int, account: str, ip: str, ua: str, text: str) -> dict[str, Any]:
    return {"id": f"ev_{i}", "ts": 1_763_600_000.0 + i, "account": account, "key": f"key_{account}", "ip": ip,
            "user_agent": ua, "request": {"model": "smollm2", "messages": [{"role": "user", "content": text}],
                                          "api_key_echo": SECRET_KEY},
            "response": {"text": "...", "completion_tokens": 100}}


def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events = []
    i = 0
    for a, member in enumerate(("acme-labs-17", "acme-labs-18", "acme-labs-19")):
        for k in range(20):
            ip = SHARED_NAT if k == 0 else f"203.0.113.{10 + a}"
            events.append(_ev(i, member, ip, "harvester/0.1", TEMPLATE.format(q=QUESTIONS[(a * 20 + k) % 40])))
            i += 1
    for b, name in enumerate(("bakery", "lawfirm")):
        for k in range(10):
            ip = SHARED_NAT if b == 0 else "198.51.100.20"
            events.append(_ev(i, name, ip, "OpenAI/Python 1.54.0", BENIGN[k % 4]))
            i += 1
    verdicts = [
        {"account": "acme-labs-17", "score": 0.97, "flagged": True, "cluster": "c7",
         "evidence": [{"signal": "template_reuse", "value": 0.95,
                       "detail": 'one skeleton in 20 of 20 requests, e.g. "Solve the following problem. Show your complete"'}]},
        {"account": "acme-labs-18", "score": 0.4, "flagged": False, "cluster": "c7", "evidence": []},
        {"account": "acme-labs-19", "score": 0.3, "flagged": False, "cluster": "c7", "evidence": []},
        {"account": "bakery", "score": 0.01, "flagged": False, "cluster": None, "evidence": []},
        {"account": "lawfirm", "score": 0.02, "flagged": False, "cluster": None, "evidence": []},
    ]
    return events, verdicts


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    events, verdicts = traffic()
    b = build_bundle(verdicts, events, ExportOptions(salt=b"test-salt"))
    p = tmp_path / "bundle.json"
    p.write_text(b.serialize(pretty=True))
    return p


def test_export_is_valid_stix_with_atlas_and_relationships(bundle_file: Path) -> None:
    text = bundle_file.read_text()
    parsed = stix2.parse(text, allow_custom=True)
    by_type: dict[str, list[Any]] = {}
    for o in parsed.objects:
        by_type.setdefault(o.type, []).append(o)
    ap = by_type["attack-pattern"][0]
    assert any(r.source_name == "mitre-atlas" and r.external_id == "AML.T0024.002" for r in ap.external_references)
    assert len(by_type["threat-actor"]) == 1 and by_type["threat-actor"][0].x_distillguard_accounts == 3
    kinds = {o.x_distillguard_kind for o in by_type["indicator"]}
    assert kinds == {"ip", "user_agent", "template"}
    patterns = " ".join(o.pattern for o in by_type["indicator"])
    assert "[ipv4-addr:value = '203.0.113.10']" in patterns
    assert SHARED_NAT not in patterns  # also used by a legitimate account: never exported
    assert "OpenAI/Python" not in patterns
    tmpl = next(o for o in by_type["indicator"] if o.x_distillguard_kind == "template")
    assert len(tmpl.x_distillguard_template_minhash) == tmpl.x_distillguard_minhash_params["length"] >= 32
    rels = {(r.relationship_type, r.source_ref.split("--")[0], r.target_ref.split("--")[0]) for r in by_type["relationship"]}
    assert ("indicates", "indicator", "attack-pattern") in rels
    assert ("related-to", "identity", "identity") in rels  # linked accounts
    assert ("uses", "threat-actor", "attack-pattern") in rels


def test_export_leaks_no_prompts_names_or_keys_by_default(bundle_file: Path) -> None:
    text = bundle_file.read_text()
    for secret in ("acme-labs", "bakery", "key_", SECRET_KEY, "farmer", "cows", "Solve the following",
                   "complete reasoning", "tallest mountain"):
        assert secret not in text, secret


def test_export_flags_include_prompts_and_names() -> None:
    events, verdicts = traffic()
    b = build_bundle(verdicts, events, ExportOptions(include_prompts=True, include_account_names=True)).serialize()
    assert "acme-labs-18" in b and "Solve the following problem" in b
    assert SECRET_KEY not in b and "key_acme" not in b  # keys never, whatever the flags


def test_import_makes_matching_traffic_raise_risk(bundle_file: Path, tmp_path: Path) -> None:
    ind_file = tmp_path / "indicators.json"
    rep = import_bundle(bundle_file, ind_file)
    assert rep.indexed >= 3 and rep.by_kind["ip"] >= 3 and rep.by_kind["template"] >= 1
    cfg = PolicyConfig()
    cfg.indicators.file = ind_file
    policy = RiskPolicy(RiskBoard(0.9), cfg, threshold=0.9)
    # a brand-new account (no risk of its own) from a listed IP
    d = policy.decide(ctx("fresh-account", ip="203.0.113.11"))
    assert d.action == "degrade" and any(r.startswith("matches indicator indicator--") and "(ip)" in r for r in d.reasons)
    assert policy.decide(ctx("fresh-account", ip="192.0.2.99")).action == "allow"
    assert policy.decide(ctx("bakery", ip=SHARED_NAT)).action == "allow"
    # the template fingerprint matches a new question poured into the same template
    d = policy.decide(ctx("other", ip="192.0.2.99", prompt=TEMPLATE.format(q="Tom has 7 apples and eats 2. How many are left?")))
    assert d.action == "degrade" and any("(template)" in r for r in d.reasons)
    # re-importing is idempotent
    assert import_bundle(bundle_file, ind_file).total_in_file == rep.total_in_file


def test_running_policy_picks_up_an_import(bundle_file: Path, tmp_path: Path) -> None:
    ind_file = tmp_path / "indicators.json"
    cfg = PolicyConfig()
    cfg.indicators.file = ind_file
    policy = RiskPolicy(RiskBoard(0.9), cfg, threshold=0.9)
    policy.watch(None, interval_s=0.05)
    try:
        assert policy.decide(ctx("x", ip="203.0.113.12")).action == "allow"
        import_bundle(bundle_file, ind_file)
        deadline = time.time() + 5
        while policy.decide(ctx("x", ip="203.0.113.12")).action == "allow":
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        policy.stop()


@pytest.mark.parametrize("content,words", [
    ("not json at all", "is not JSON"),
    ('{"type": "indicator"}', "not a STIX bundle"),
    ('{"type": "bundle", "id": "bundle--x", "objects": []}', "not a valid STIX 2.1 bundle"),
    ('{"type": "bundle", "id": "bundle--2b4a6e5c-8b0c-4a7f-9d7c-0c6c2a5d0a11", "objects": [{"type": "indicator", '
     '"spec_version": "2.1", "id": "indicator--2b4a6e5c-8b0c-4a7f-9d7c-0c6c2a5d0a11", "created": "2020-01-01T00:00:00Z", '
     '"modified": "2020-01-01T00:00:00Z", "pattern": "[ipv4-addr:value = ", "pattern_type": "stix", '
     '"valid_from": "2020-01-01T00:00:00Z"}]}', "pattern"),
])
def test_invalid_bundle_gives_a_clear_error(tmp_path: Path, content: str, words: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(IndicatorError, match=words):
        import_bundle(p, tmp_path / "ind.json")
    assert not (tmp_path / "ind.json").exists()
    r = CliRunner().invoke(app, ["import", str(p), "--indicators", str(tmp_path / "ind.json")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_cli_export_and_import_roundtrip(tmp_path: Path) -> None:
    events, verdicts = traffic()
    ev, vd = tmp_path / "events.jsonl", tmp_path / "verdicts.jsonl"
    ev.write_text("".join(json.dumps(e) + "\n" for e in events) + "{broken\n")
    vd.write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    out = tmp_path / "bundle.json"
    r = CliRunner().invoke(app, ["export", "--events", str(ev), "--verdicts", str(vd), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 flagged cluster(s)" in r.stdout and "skipped 1 malformed" in r.stderr
    stix2.parse(out.read_text(), allow_custom=True)
    assert "acme-labs" not in out.read_text()
    r = CliRunner().invoke(app, ["import", str(out), "--indicators", str(tmp_path / "ind.json")])
    assert r.exit_code == 0 and "imported" in r.stdout
    assert len(load_indicators(tmp_path / "ind.json").ips) >= 3
    r = CliRunner().invoke(app, ["export", "--events", str(tmp_path / "missing.jsonl"), "--verdicts", str(vd),
                                 "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_cli_export_from_the_servers_store(tmp_path: Path) -> None:
    from distillguard.events import ExchangeEvent
    from distillguard.store.sql import SqlStore

    events, verdicts = traffic()
    store = SqlStore(f"sqlite:///{tmp_path / 'dg.db'}")
    for v in verdicts:
        store.create_account(v["account"], "standard")
        store.update_account(v["account"], flags={"risk": v["score"], "risk_flagged": v["flagged"],
                                                  "cluster": v["cluster"], "evidence": v["evidence"]})
    store.write_events([ExchangeEvent.model_validate(e) for e in events])
    store.close()
    cfg = tmp_path / "dg.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "dg.db"}"\n')
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["export", "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "AML.T0024.002" in text and "203.0.113.10" in text and "acme-labs" not in text
