"""Review: CLI commands and admin routes write review state to the store; the server's board picks
it up (refresh), the policy follows it; flagged listing and explain."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.events import Decision, ExchangeEvent
from distillguard.policy.admin_routes import build_router
from distillguard.policy.config import PolicyConfig
from distillguard.policy.engine import RiskPolicy
from distillguard.policy.state import RiskBoard
from distillguard.store.sql import SqlStore

from .test_engine import ctx


@pytest.fixture
def store(tmp_path: Path):
    s = SqlStore(f"sqlite:///{tmp_path / 'dg.db'}")
    for name in ("acme", "hydra-1", "hydra-2", "quiet"):
        s.create_account(name, "standard")
    # what the detection worker's store_flags_callback writes
    s.update_account("hydra-1", flags={"risk": 0.97, "risk_flagged": True, "cluster": "c7",
                                       "evidence": [{"signal": "coordination", "value": 0.9, "detail": "shared proxies"}]})
    s.update_account("hydra-2", flags={"risk": 0.2, "risk_flagged": False, "cluster": "c7", "evidence": []})
    s.update_account("quiet", flags={"risk": 0.05, "risk_flagged": False, "cluster": None, "evidence": []})
    yield s
    s.close()


@pytest.fixture
def config(tmp_path: Path, store: SqlStore) -> Path:
    p = tmp_path / "dg.toml"
    p.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "dg.db"}"\n[detect]\ndefault_threshold = 0.9\n')
    return p


def cli(*args: str, config: Path):
    return CliRunner().invoke(app, [*args, "--config", str(config)])


def test_board_refresh_reads_review_and_risk_from_the_store(store: SqlStore) -> None:
    board = RiskBoard(0.9)
    policy = RiskPolicy(board, PolicyConfig(), threshold=0.9)
    board.refresh_from_store(store)
    assert board.effective("hydra-2").risk == pytest.approx(0.97)  # cluster inheritance from stored flags
    assert policy.decide(ctx("acme")).action == "allow"
    # a review made elsewhere (CLI process) reaches the board on the next refresh
    from distillguard.policy.review import apply_review

    apply_review(store, "acme", "ban", by="ops", note="abuse")
    assert policy.decide(ctx("acme")).action == "allow"  # not refreshed yet: no DB read per request
    board.refresh_from_store(store)
    assert policy.decide(ctx("acme")).action == "block"
    apply_review(store, "acme", "unban")
    board.refresh_from_store(store)
    assert policy.decide(ctx("acme")).action == "allow"


def test_refresher_thread_applies_cli_review_within_seconds(store: SqlStore, config: Path) -> None:
    board = RiskBoard(0.9)
    policy = RiskPolicy(board, PolicyConfig(), threshold=0.9)
    board.start_refresher(store, interval_s=0.05)
    try:
        r = cli("accounts", "exempt", "hydra-1", "--note", "partner eval", config=config)
        assert r.exit_code == 0, r.output
        deadline = time.time() + 5
        while policy.decide(ctx("hydra-1")).action != "allow":
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        board.stop_refresher()


def test_cli_review_commands(store: SqlStore, config: Path) -> None:
    r = cli("accounts", "flagged", config=config)
    assert r.exit_code == 0, r.output
    assert "hydra-1" in r.stdout and "hydra-2" in r.stdout and "quiet" not in r.stdout  # hydra-2 via its cluster
    assert "coordination" in r.stdout

    assert cli("accounts", "ban", "hydra-2", "--note", "proxy network", config=config).exit_code == 0
    assert store.get_account("hydra-2").flags["banned"]["note"] == "proxy network"
    assert cli("accounts", "exempt", "hydra-2", config=config).exit_code == 0
    flags = store.get_account("hydra-2").flags
    assert "banned" not in flags and "exempt" in flags  # exclusive
    assert cli("accounts", "ban", "hydra-2", config=config).exit_code == 0
    assert cli("accounts", "unban", "hydra-2", config=config).exit_code == 0
    assert "banned" not in store.get_account("hydra-2").flags
    r = cli("accounts", "verify", "acme", config=config)
    assert r.exit_code == 0 and store.get_account("acme").flags.get("verified")
    assert store.get_account("acme").tier == "verified"

    r = cli("accounts", "ban", "nobody", config=config)
    assert r.exit_code == 1 and r.stderr.startswith("error: unknown account 'nobody'") and "Traceback" not in r.output


def test_cli_explain_shows_last_logged_and_current_decision(store: SqlStore, config: Path) -> None:
    store.write_events([ExchangeEvent(ts=time.time() - 5, account="hydra-2", request={"messages": []}, status=200,
                                      decision=Decision(action="degrade", reasons=["cluster c7 flagged"]))])
    r = cli("accounts", "explain", "hydra-2", config=config)
    assert r.exit_code == 0, r.output
    assert "cluster c7 flagged" in r.stdout and "inherited from hydra-1" in r.stdout
    j = json.loads(cli("accounts", "explain", "hydra-2", "--json", config=config).stdout)
    assert j["last_logged_decision"]["action"] == "degrade"
    assert j["would_decide"]["action"] == "verify"  # level of 0.97 at threshold 0.9 is above 1.6
    assert any("inherits risk 0.97 from linked account hydra-1" in x for x in j["would_decide"]["reasons"])


def test_admin_routes(store: SqlStore) -> None:
    board = RiskBoard(0.9)
    board.refresh_from_store(store)
    policy = RiskPolicy(board, PolicyConfig(), threshold=0.9)

    def admin(authorization: str | None = Header(None)) -> None:
        if authorization != "Bearer t":
            raise HTTPException(401, "admin token needed")

    api = FastAPI()
    api.include_router(build_router(board, store, policy=policy, dependencies=[Depends(admin)]), prefix="/admin")
    c = TestClient(api)
    h = {"Authorization": "Bearer t"}
    assert c.get("/admin/policy/flagged").status_code == 401

    flagged = c.get("/admin/policy/flagged", headers=h).json()["data"]
    assert [f["account"] for f in flagged] == ["hydra-1", "hydra-2"]
    assert flagged[1]["inherited_from"] == "hydra-1" and flagged[0]["evidence"][0]["signal"] == "coordination"
    assert c.get("/admin/policy/clusters", headers=h).json()["data"][0]["members"] == ["hydra-1", "hydra-2"]

    assert policy.decide(ctx("hydra-2")).action == "verify"
    r = c.post("/admin/policy/accounts/hydra-2/exempt", json={"note": "internal red team"}, headers=h)
    assert r.status_code == 200 and r.json()["review"] == "exempt"
    assert policy.decide(ctx("hydra-2")).action == "allow"  # at once, in this process
    assert store.get_account("hydra-2").flags["exempt"]["note"] == "internal red team"  # and persisted
    ex = c.get("/admin/policy/accounts/hydra-2/explain", headers=h).json()
    assert ex["last_decision"]["action"] == "allow" and ex["now"]["review"] == "exempt"

    assert c.post("/admin/policy/accounts/acme/ban", headers=h).json()["review"] == "banned"
    assert policy.decide(ctx("acme")).action == "block"
    assert c.post("/admin/policy/accounts/acme/unban", headers=h).json()["review"] == "none"
    assert c.post("/admin/policy/accounts/nobody/ban", headers=h).status_code == 404
    assert c.post("/admin/policy/accounts/acme/obliterate", headers=h).status_code == 404
    assert c.get("/admin/policy/accounts/nobody/explain", headers=h).status_code == 404
    st = c.get("/admin/policy/status", headers=h).json()
    assert st["threshold"] == 0.9 and st["rules"][0]["name"] == "banned"


def test_admin_routes_late_bound_to_app_state(store: SqlStore) -> None:
    api = FastAPI()
    api.include_router(build_router(state=api.state), prefix="/admin")
    c = TestClient(api)
    api.state.store = store
    api.state.policy = object()  # e.g. AllowAll: no board
    assert c.get("/admin/policy/flagged").status_code == 503
    board = RiskBoard(0.9)
    board.refresh_from_store(store)
    api.state.policy = RiskPolicy(board, PolicyConfig(), threshold=0.9)
    assert [f["account"] for f in c.get("/admin/policy/flagged").json()["data"]] == ["hydra-1", "hydra-2"]
    assert c.post("/admin/policy/accounts/quiet/verify").json()["review"] == "verified"
    assert c.get("/admin/policy/status").json()["decisions"] == []


def test_admin_intel_export_from_board_and_store(store: SqlStore) -> None:
    import stix2

    store.write_events([ExchangeEvent(ts=1_763_600_000.0 + i, account="hydra-1", ip="203.0.113.5",
                                      request={"messages": [{"role": "user", "content": f"Solve step by step: {i} + {i}"}]})
                        for i in range(5)])
    board = RiskBoard(0.9)
    board.refresh_from_store(store)
    api = FastAPI()
    api.include_router(build_router(board, store), prefix="/admin")
    r = TestClient(api).get("/admin/policy/intel/export")
    assert r.status_code == 200
    bundle = stix2.parse(r.text, allow_custom=True)
    assert any(o.type == "indicator" and "203.0.113.5" in o.pattern for o in bundle.objects)
    assert "hydra-1" not in r.text and "Solve step by step" not in r.text
