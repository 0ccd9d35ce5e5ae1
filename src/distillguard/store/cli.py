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


# --- review (policy): flagged accounts, exempt / ban / unban / verify, explain -------------------
# Review state is written to the account's flags; a running server's policy board re-reads them
# within `policy.board_refresh_s` seconds.


def _review(name: str, action: str, note: str | None, by: str | None, config: Path | None) -> None:
    from distillguard.policy.review import apply_review

    with _opened(config) as (settings, store):
        _require_account(store, name)
        verified_tier = "verified" if action == "verify" and "verified" in settings.limits.tiers else None
        acc = apply_review(store, name, action, by=by or _whoami(), note=note, verified_tier=verified_tier)
    state = {k: acc.flags[k] for k in ("banned", "exempt", "verified") if k in acc.flags}
    typer.echo(f"{action}: account {acc.name} (tier {acc.tier}); review flags now: "
               + (", ".join(sorted(state)) or "none") + " (a running server applies it within seconds)")


def _whoami() -> str:
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


NOTE_HELP = "Why (kept with the review flag, shown by `accounts explain`)."


@accounts_app.command("flagged")
def accounts_flagged(
    min_risk: float | None = typer.Option(None, "--min-risk", help="List accounts at or above this risk (default: the policy threshold)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Flagged accounts (own risk or through their cluster) with evidence, cluster and review state."""
    from rich.markup import escape
    from rich.table import Table

    from distillguard.policy.review import board_from_store

    if min_risk is not None and not 0 <= min_risk <= 1:
        _fail(f"--min-risk must be between 0 and 1 (got {min_risk})", 2)
    with _opened(config) as (settings, store):
        try:
            board = board_from_store(settings, store)
        except ValueError as exc:
            _fail(str(exc), 2)
    rows = board.flagged(min_risk)
    if not rows:
        typer.echo(f"no flagged accounts (threshold {board.threshold:.3f})", err=True)
        return
    table = Table(title=f"flagged accounts (threshold {board.threshold:.3f})")
    for col in ("account", "risk", "effective", "cluster", "review", "evidence"):
        table.add_column(col, overflow="fold")
    for r in rows:
        ev = "; ".join(f"{e.get('signal')} {e.get('value')}" for e in r["evidence"][:3] if isinstance(e, dict))
        cluster = r["cluster"] or ""
        if cluster:
            cluster += f" ({r['cluster_size']})" + (" flagged" if r["cluster_flagged"] else "")
        eff = f"{r['effective_risk']:.3f}" + (f" via {r['inherited_from']}" if r["inherited_from"] else "")
        table.add_row(r["account"], f"{r['risk']:.3f}", eff, cluster, r["review"], escape(ev))
    _console().print(table)


@accounts_app.command("exempt")
def accounts_exempt(
    name: str = typer.Argument(..., help="Account name."),
    note: str | None = typer.Option(None, "--note", help=NOTE_HELP),
    by: str | None = typer.Option(None, "--by", help="Reviewer (default: cli:<user>)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Allow-list an account: the policy always allows it (clears a ban)."""
    _review(name, "exempt", note, by, config)


@accounts_app.command("unexempt")
def accounts_unexempt(
    name: str = typer.Argument(..., help="Account name."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Remove an account from the allow-list."""
    _review(name, "unexempt", None, None, config)


@accounts_app.command("ban")
def accounts_ban(
    name: str = typer.Argument(..., help="Account name."),
    note: str | None = typer.Option(None, "--note", help=NOTE_HELP),
    by: str | None = typer.Option(None, "--by", help="Reviewer (default: cli:<user>)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Ban an account: every request gets 403 (clears an exemption)."""
    _review(name, "ban", note, by, config)


@accounts_app.command("unban")
def accounts_unban(
    name: str = typer.Argument(..., help="Account name."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Lift a ban."""
    _review(name, "unban", None, None, config)


@accounts_app.command("verify")
def accounts_verify(
    name: str = typer.Argument(..., help="Account name."),
    note: str | None = typer.Option(None, "--note", help=NOTE_HELP),
    by: str | None = typer.Option(None, "--by", help="Reviewer (default: cli:<user>)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Mark an account verified (moves it to the 'verified' tier when that tier is configured)."""
    _review(name, "verify", note, by, config)


@accounts_app.command("explain")
def accounts_explain(
    name: str = typer.Argument(..., help="Account name."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Explain the policy for an account: its last logged decision and what it would decide now."""
    import json

    from rich.markup import escape

    from distillguard.policy.review import explain_offline

    with _opened(config) as (settings, store):
        _require_account(store, name)
        try:
            ex = explain_offline(settings, store, name)
        except ValueError as exc:
            _fail(str(exc), 2)
    if json_out:
        typer.echo(json.dumps(ex, indent=1, default=str))
        return
    c = _console()
    now, last, would = ex["now"], ex["last_logged_decision"], ex["would_decide"]
    c.print(f"[bold]account[/bold] {escape(name)}  tier {ex['tier']}  threshold {ex['threshold']:.3f}")
    c.print(f"review    {now['review']}" + (f" by {escape(str(now['review_by']))}" if now["review_by"] else "")
            + (f": {escape(str(now['review_note']))}" if now["review_note"] else ""))
    c.print(f"risk      {now['risk']:.3f} own, {now['effective_risk']:.3f} effective"
            + (f" (inherited from {escape(now['inherited_from'])})" if now["inherited_from"] else ""))
    if now["cluster"]:
        c.print(f"cluster   {escape(now['cluster'])} ({now['cluster_size']} accounts"
                + (", flagged)" if now["cluster_flagged"] else ")"))
    for e in now["evidence"][:5]:
        if isinstance(e, dict):
            c.print(f"  - {escape(str(e.get('signal')))} {e.get('value')}: {escape(str(e.get('detail', '')))}")
    if last is None:
        c.print("last logged decision: none (no requests logged)")
    else:
        c.print(f"last logged decision ({_when(last['ts'])}, status {last['status']}): [bold]{last['action']}[/bold]")
        for r in last["reasons"]:
            c.print(f"  - {escape(r)}")
    c.print(f"policy now: [bold]{would['action']}[/bold]" + (f" (rate limits x{would['limit_scale']:.2f})" if would["limit_scale"] < 1 else ""))
    for r in would["reasons"]:
        c.print(f"  - {escape(r)}")


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
