"""`distillguard keys|accounts|events` through Typer's CliRunner, plus one real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.events import ReadReport, read_events
from distillguard.store.cli import parse_since
from distillguard.store.sql import SqlStore


@pytest.fixture
def config(tmp_path, sqlite_url):
    path = tmp_path / "dg.toml"
    path.write_text(
        f'[store]\nurl = "{sqlite_url}"\n\n'
        "[limits.tiers.trial]\nkey_rpm = 5\n\n[limits.tiers.gold]\nkey_rpm = 500\n"
        '\n[limits]\ndefault_tier = "trial"\n'
    )
    return path


def run(*args: str, config=None, env=None):
    argv = list(args) + (["--config", str(config)] if config else [])
    return CliRunner().invoke(app, argv, env=env)


def assert_one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in lines[0]


def test_keys_create_prints_secret_last_and_it_authenticates(config, sqlite_url):
    result = run("keys", "create", "--account", "acme", "--tier", "gold", config=config)
    assert result.exit_code == 0, result.stderr
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("dg-key_")
    store = SqlStore(sqlite_url)
    rec = store.authenticate(secret)
    assert rec is not None and rec.account == "acme" and rec.tier == "gold"
    assert rec.key_id in result.stderr  # the id is reported; the secret only once
    assert result.output.count(secret) == 1

    listing = run("keys", "list", config=config)
    assert listing.exit_code == 0 and rec.key_id in listing.stdout and secret not in listing.output

    second = run("keys", "create", "--account", "acme", config=config)  # tier: the account's
    assert second.exit_code == 0
    assert store.authenticate(second.stdout.strip().splitlines()[-1]).tier == "gold"
    new = run("keys", "create", "--account", "newco", config=config)  # tier: limits.default_tier
    assert store.authenticate(new.stdout.strip().splitlines()[-1]).tier == "trial"


def test_keys_revoke_and_errors(config, sqlite_url):
    created = run("keys", "create", "--account", "acme", "--tier", "trial", config=config)
    secret = created.stdout.strip().splitlines()[-1]
    key_id = SqlStore(sqlite_url).authenticate(secret).key_id
    revoked = run("keys", "revoke", key_id, config=config)
    assert revoked.exit_code == 0 and key_id in revoked.stdout
    assert SqlStore(sqlite_url).authenticate(secret).revoked
    assert "revoked" in run("keys", "list", "--account", "acme", config=config).stdout

    assert_one_line_error(run("keys", "revoke", "key_nope", config=config), 1, "key_nope")
    assert_one_line_error(
        run("keys", "create", "--account", "acme", "--tier", "standard", config=config),
        2,
        "unknown tier 'standard'",
        "gold, trial",
    )
    assert_one_line_error(run("keys", "list", "--account", "ghost", config=config), 1, "ghost")


def test_accounts_list_and_show(config, sqlite_url, make_event):
    run("keys", "create", "--account", "acme", "--tier", "gold", config=config)
    run("keys", "create", "--account", "beta", "--tier", "trial", config=config)
    store = SqlStore(sqlite_url)
    store.write_events([make_event(i, account="acme") for i in range(7)])
    store.update_account(
        "acme",
        flags={"risk": {"score": 0.91, "level": "high"}, "evidence": ["templated prompts", "burst"], "cluster": "c-17", "exempt": False},
    )
    listing = run("accounts", "list", config=config)
    assert listing.exit_code == 0
    assert "acme" in listing.stdout and "beta" in listing.stdout and "gold" in listing.stdout

    show = run("accounts", "show", "acme", config=config)
    assert show.exit_code == 0, show.stderr
    out = show.stdout
    for expected in ("gold", "requests  7", "exempt=false", "score: 0.91", "templated prompts", "cluster: c-17"):
        assert expected in out, (expected, out)
    assert "not assessed" in run("accounts", "show", "beta", config=config).stdout
    assert_one_line_error(run("accounts", "show", "ghost", config=config), 1, "unknown account 'ghost'")


def test_events_export_prints_spec_jsonl(config, sqlite_url, make_event, tmp_path):
    events = [make_event(i, account="acme" if i < 6 else "beta") for i in range(10)]
    SqlStore(sqlite_url).write_events(list(reversed(events)))  # stored out of order
    SqlStore(sqlite_url).create_account("beta", "trial")

    result = run("events", "export", config=config)
    assert result.exit_code == 0, result.stderr
    report = ReadReport()
    exported = list(read_events(result.stdout.splitlines(), report, warn=None))
    assert report.skipped == [] and len(exported) == 10
    assert [e.ts for e in exported] == [e.ts for e in events]  # arrival order
    assert [e.model_dump(exclude={"id"}) for e in exported] == [e.model_dump(exclude={"id"}) for e in events]
    for line in result.stdout.splitlines():  # spec: required fields present, no nulls written
        assert '"ts":' in line and '"account":' in line and '"request":' in line and "null" not in line

    since = run("events", "export", "--since", str(events[4].ts), "--account", "acme", config=config)
    assert [e.ts for e in read_events(since.stdout.splitlines())] == [e.ts for e in events[4:6]]
    iso = run("events", "export", "--since", "2099-01-01T00:00:00Z", config=config)
    assert iso.exit_code == 0 and iso.stdout == ""

    out = tmp_path / "out" / "events.jsonl"
    out.parent.mkdir()
    to_file = run("events", "export", "--account", "beta", "--out", str(out), config=config)
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert [e.account for e in read_events(out)] == ["beta"] * 4

    assert_one_line_error(run("events", "export", "--since", "yesterday-ish", config=config), 2, "--since")
    assert_one_line_error(run("events", "export", "--account", "ghost", config=config), 1, "ghost")


def test_parse_since():
    assert parse_since("1763712000.5") == 1763712000.5
    assert parse_since("2025-11-21T08:00:00Z") == 1763712000.0
    assert parse_since("2025-11-21T08:00:00") == 1763712000.0  # no zone: UTC
    assert parse_since("2025-11-21T09:00:00+01:00") == 1763712000.0
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("last tuesday")


def test_store_errors_are_one_line(tmp_path):
    env = {"DISTILLGUARD_STORE__URL": "postgresql+psycopg://127.0.0.1:1/test"}
    assert_one_line_error(run("accounts", "list", env=env), 1, "127.0.0.1:1", "unavailable")
    assert_one_line_error(run("keys", "list", config=tmp_path / "missing.toml"), 2, "does not exist")
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\nurl=")
    assert_one_line_error(run("events", "export", config=bad), 2, "not valid TOML")


def test_real_command_line(tmp_path):
    """The installed entry point, in a fresh process, with the store URL from the environment."""
    env = {**os.environ, "DISTILLGUARD_STORE__URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    cmd = [sys.executable, "-m", "distillguard.cli"]
    created = subprocess.run(
        [*cmd, "keys", "create", "--account", "acme", "--tier", "standard"], env=env, capture_output=True, text=True, timeout=60
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert SqlStore(env["DISTILLGUARD_STORE__URL"]).authenticate(secret) is not None
    bad = subprocess.run([*cmd, "keys", "revoke", "key_nope"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: unknown key id 'key_nope'"


@pytest.mark.postgres
def test_cli_against_postgres(pg_store, tmp_path):
    # the CLI gets no schema option, so point it at a store built on the same schema via search_path
    from sqlalchemy.engine import make_url

    url = make_url(pg_store.url).update_query_dict({"options": f"-csearch_path={pg_store.schema}"}).render_as_string(False)
    result = run("keys", "create", "--account", "pgco", "--tier", "standard", env={"DISTILLGUARD_STORE__URL": url})
    assert result.exit_code == 0, result.stderr
    assert pg_store.authenticate(result.stdout.strip().splitlines()[-1]).account == "pgco"
    listing = run("accounts", "list", env={"DISTILLGUARD_STORE__URL": url})
    assert "pgco" in listing.stdout
