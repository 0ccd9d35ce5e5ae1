"""CLI for keys, accounts and events (owned by distillguard.store).

Errors print one line to stderr and exit non-zero: 2 for bad input (config, tier, --since),
1 when the store says no (unknown account or key) or cannot be reached.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.store.base import Account, KeyRecord, Store

keys_app = typer.Typer(no_args_is_help=True)
accounts_app = typer.Typer(no_args_is_help=True)
events_app = typer.Typer(no_args_is_help=True)

CONFIG_HELP = "TOML config file (the store URL is [store] url)."


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _opened(config: Path | None) -> Iterator[tuple[Settings, Store]]:
    """Settings and an open store; store errors become one line on stderr and exit 1."""
    from distillguard.config import ConfigError, load_settings
    from distillguard.store import StoreError, StoreUnavailable, open_store

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    try:
        store = open_store(settings.store.url)
    except (StoreError, StoreUnavailable) as exc:
        _fail(str(exc), 1)
    try:
        yield settings, store
    except (StoreError, StoreUnavailable) as exc:
        _fail(str(exc), 1)
    finally:
        store.close()


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=False)


def _keys_table(keys: list[KeyRecord], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("key id", "account", "tier", "created", "status"):
        table.add_column(col)
    for k in keys:
        status = f"revoked {_when(k.revoked_at)}" if k.revoked else "active"
        table.add_row(k.key_id, k.account, k.tier, _when(k.created_at), status)
    return table


def _require_account(store: Store, name: str) -> Account:
    acc = store.get_account(name)
    if acc is None:
        _fail(f"unknown account {name!r} (create one with: distillguard keys create --account {name} --tier TIER)")
    return acc


# --- keys ---------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    account: str = typer.Option(..., "--account", help="Account (organisation); created if it does not exist."),
    tier: str | None = typer.Option(
        None, "--tier", help="Tier from the config's [limits.tiers]; default: the account's, else limits.default_tier."
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Create an API key. The secret is printed once, as the last line of stdout."""
    with _opened(config) as (settings, store):
        tiers = settings.limits.tiers
        if tier is not None and tier not in tiers:
            _fail(f"unknown tier {tier!r}; configured tiers: {', '.join(sorted(tiers))}", 2)
        existing = store.get_account(account)
        if tier is None:
            tier = existing.tier if existing else settings.limits.default_tier
        record, secret = store.create_key(account, tier)
        made = "" if existing else " (new account)"
        typer.echo(
            f"created key {record.key_id} for account {record.account}{made}, tier {record.tier}; "
            "the secret below is shown only once:",
            err=True,
        )
        typer.echo(secret)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="Key id as shown by `keys list` (key_...)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    with _opened(config) as (_settings, store):
        record = store.revoke_key(key_id)
        typer.echo(f"revoked {record.key_id} (account {record.account}) at {_when(record.revoked_at)}")


@keys_app.command("list")
def keys_list(
    account: str | None = typer.Option(None, "--account", help="Only this account's keys."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """List keys (ids, never secrets)."""
    with _opened(config) as (_settings, store):
        if account is not None:
            _require_account(store, account)
        keys = store.list_keys(account)
        if not keys:
            typer.echo("no keys", err=True)
            return
        _console().print(_keys_table(keys))


# --- accounts -----------------------------------------------------------------------------------


@accounts_app.command("list")
def accounts_list(config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP)) -> None:
    """List accounts with their tier, keys and request counts."""
    from rich.table import Table

    with _opened(config) as (_settings, store):
        accounts = store.list_accounts()
        if not accounts:
            typer.echo("no accounts", err=True)
            return
        keys_by_account: dict[str, list[KeyRecord]] = {}
        for k in store.list_keys():
            keys_by_account.setdefault(k.account, []).append(k)
        table = Table()
        for col in ("account", "tier", "keys (active/all)", "requests", "created", "flags"):
            table.add_column(col)
        for acc in accounts:
            keys = keys_by_account.get(acc.name, [])
            active = sum(not k.revoked for k in keys)
            table.add_row(
                acc.name,
                acc.tier,
                f"{active}/{len(keys)}",
                str(store.count_events(acc.name)),
                _when(acc.created_at),
                ", ".join(sorted(acc.flags)),
            )
        _console().print(table)


#: flags the detection area writes; shown in their own section by `accounts show`
RISK_FLAGS = ("risk", "risk_flagged", "evidence", "cluster")


@accounts_app.command("show")
def accounts_show(
    name: str = typer.Argument(..., help="Account name."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Show one account: tier, keys, request count, flags, and risk / evidence / cluster."""
    with _opened(config) as (_settings, store):
        acc = _require_account(store, name)
        keys = store.list_keys(name)
        requests = store.count_events(name)
    console = _console()
    console.print(f"[bold]account[/bold] {acc.name}")
    console.print(f"tier      {acc.tier}")
    console.print(f"created   {_when(acc.created_at)}")
    console.print(f"requests  {requests}")
    other = {k: v for k, v in acc.flags.items() if k not in RISK_FLAGS}
    console.print("flags     " + (", ".join(f"{k}={_compact(v)}" for k, v in sorted(other.items())) or "none"))
    if keys:
        console.print(_keys_table(keys, title="keys"))
    else:
        console.print("keys      none")
    console.print("[bold]risk[/bold]")
    if not any(k in acc.flags for k in RISK_FLAGS):
        console.print("  not assessed yet (the detection worker fills risk, evidence and cluster)")
        return
    for key in RISK_FLAGS:
        if key in acc.flags:
            _print_flag(console, key, acc.flags[key])


def _print_flag(console: Any, key: str, value: Any) -> None:
    from rich.markup import escape

    if isinstance(value, dict):
        console.print(f"  {key}:")
        for k, v in value.items():
            console.print(f"    {escape(str(k))}: {escape(_compact(v))}")
    elif isinstance(value, list):
        console.print(f"  {key}:")
        for item in value:
            console.print(f"    - {escape(_compact(item))}")
    else:
        console.print(f"  {key}: {escape(_compact(value))}")


def _compact(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- events -------------------------------------------------------------------------------------


def parse_since(value: str) -> float:
    """Unix seconds (``1763712000.5``) or ISO 8601 (``2025-11-21``, ``2025-11-21T10:00:00Z``;
    no zone means UTC)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--since {value!r} is neither Unix seconds nor an ISO 8601 time such as 2025-11-21T10:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@events_app.command("export")
def events_export(
    since: str | None = typer.Option(None, "--since", help="Only events at or after this time (Unix seconds or ISO 8601)."),
    account: str | None = typer.Option(None, "--account", help="Only this account's events."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Print the exchange log as JSONL (shared/spec/events.md), in arrival order."""
    try:
        since_ts = parse_since(since) if since is not None else None
    except ValueError as exc:
        _fail(str(exc), 2)
    with _opened(config) as (_settings, store):
        # imported logs may name accounts that have no keys here: only fail when nothing matches
        if account is not None and store.get_account(account) is None and store.count_events(account) == 0:
            _fail(f"unknown account {account!r}: no such account and no events for it")
        try:
            fh = open(out, "w", encoding="utf-8") if out is not None else sys.stdout
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror}", 2)
        n = 0
        try:
            for ev in store.iter_events(since=since_ts, account=account):
                fh.write(ev.to_json())
                fh.write("\n")
                n += 1
        finally:
            if out is not None:
                fh.close()
        typer.echo(f"exported {n} events" + (f" to {out}" if out else ""), err=True)


@events_app.command("import")
def events_import(
    file: Path = typer.Argument(..., help="JSONL events file (shared/spec/events.md), e.g. a writer spill file."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Load events into the store; events whose id is already stored are skipped."""
    from distillguard.events import ReadReport, read_events

    if not file.is_file():
        _fail(f"events file {file} does not exist", 2)
    report = ReadReport()
    with _opened(config) as (_settings, store):
        batch = []
        for ev in read_events(file, report):
            batch.append(ev)
            if len(batch) >= 1000:
                store.write_events(batch)
                batch = []
        store.write_events(batch)
    skipped = len(report.skipped or [])
    typer.echo(f"read {report.read} events from {file}" + (f", skipped {skipped} bad lines" if skipped else ""), err=True)
