"""`distillguard intel`: export flagged distillation clusters as STIX 2.1, import others' bundles.

    distillguard intel export --events EVENTS.jsonl --verdicts VERDICTS.jsonl --out bundle.json
    distillguard intel export --config server.toml --out bundle.json        # from the store
    distillguard intel import bundle.json [--indicators FILE | --config server.toml]
    distillguard intel list [--indicators FILE | --config server.toml]

Errors: one line on stderr, exit 2 (bad input) or 1 (store unavailable).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(no_args_is_help=True)

DEFAULT_INDICATORS = Path("distillguard-indicators.json")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings(config: Path | None):
    from distillguard.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))


def _indicators_file(indicators: Path | None, config: Path | None) -> Path:
    if indicators is not None:
        return indicators
    if config is not None:
        policy = getattr(_settings(config), "policy", None)
        if policy is not None:
            return Path(policy.indicators.file)
    return DEFAULT_INDICATORS


def _read_verdicts(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(f"{path}:{lineno}: not valid JSON ({exc.msg}); expected one verdict per line (shared/spec/verdicts.md)")
            if not isinstance(v, dict) or "account" not in v:
                _fail(f"{path}:{lineno}: a verdict needs an 'account' field (shared/spec/verdicts.md)")
            out.append(v)
    return out


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="bundle file to write (STIX 2.1 JSON)"),
    events: Path | None = typer.Option(None, "--events", help="exchange events JSONL (IPs, user agents, templates)"),
    verdicts: Path | None = typer.Option(None, "--verdicts", help="detection verdicts JSONL (`detect replay --out`)"),
    config: Path | None = typer.Option(None, "--config", help="server config: read verdicts (account flags) and events from its store"),
    since: str | None = typer.Option(None, "--since", help="with --config: only events at or after (Unix seconds or ISO 8601)"),
    include_prompts: bool = typer.Option(False, "--include-prompts", help="also export an example prompt and evidence sentences (may quote customer prompts)"),
    include_account_names: bool = typer.Option(False, "--include-account-names", help="real account names instead of keyed pseudonyms"),
    salt_env: str = typer.Option("DISTILLGUARD_INTEL_SALT", "--salt-env", help="env var with the pseudonym key (unset: random per export, pseudonyms do not link across exports)"),
    producer: str = typer.Option("DistillGuard", "--producer", help="producer identity name"),
    tlp: str = typer.Option("amber", "--tlp", help="TLP marking: white, green, amber, red or none"),
) -> None:
    """Write a STIX 2.1 bundle for the flagged clusters (API keys never; prompts and account names only with a flag)."""
    from distillguard.events import ReadReport, read_events
    from distillguard.intel.stix import ExportOptions, build_bundle, verdicts_from_store

    if tlp not in ("white", "green", "amber", "red", "none"):
        _fail(f"--tlp must be white, green, amber, red or none (got {tlp!r})")
    salt = os.environ.get(salt_env)
    opt = ExportOptions(producer=producer, include_prompts=include_prompts, include_account_names=include_account_names,
                        salt=salt.encode() if salt else None, tlp=None if tlp == "none" else tlp)
    if config is None:
        if events is None or verdicts is None:
            _fail("give --events and --verdicts (files), or --config to read the server's store")
        for p, what in ((events, "events"), (verdicts, "verdicts")):
            if not p.is_file():
                _fail(f"{what} file {p} does not exist")
        vs = _read_verdicts(verdicts)
        report = ReadReport()
        bundle = build_bundle(vs, read_events(events, report=report, warn=sys.stderr), opt)
        skipped = len(report.skipped or [])
    else:
        from distillguard.store import StoreError, StoreUnavailable, open_store
        from distillguard.store.cli import parse_since

        settings = _settings(config)
        try:
            since_ts = parse_since(since) if since is not None else None
        except ValueError as exc:
            _fail(str(exc))
        try:
            store = open_store(settings.store.url)
        except (StoreError, StoreUnavailable) as exc:
            _fail(str(exc), 1)
        try:
            vs = verdicts_from_store(store)
            bundle = build_bundle(vs, store.iter_events(since=since_ts), opt)
        except StoreUnavailable as exc:
            _fail(str(exc), 1)
        finally:
            store.close()
        skipped = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(bundle.serialize(pretty=True), encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror}")
    n_ind = sum(1 for o in bundle.objects if o.type == "indicator")
    n_act = sum(1 for o in bundle.objects if o.type == "threat-actor")
    typer.echo(f"{n_act} flagged cluster(s), {n_ind} indicator(s), {len(bundle.objects)} STIX objects -> {out}")
    if skipped:
        typer.echo(f"skipped {skipped} malformed event line(s)", err=True)


@app.command("import")
def import_cmd(
    bundle: Path = typer.Argument(..., help="STIX 2.1 bundle (JSON)"),
    indicators: Path | None = typer.Option(None, "--indicators", help=f"indicator file the policy reads (default: [policy.indicators] file, else {DEFAULT_INDICATORS})"),
    config: Path | None = typer.Option(None, "--config", help="server config (for [policy.indicators] file)"),
) -> None:
    """Validate a bundle and add its IP / user-agent / template indicators to the policy's indicator file
    (a running server re-reads it within seconds; matching requests get raised risk)."""
    from distillguard.intel.indicators import IndicatorError
    from distillguard.intel.stix import import_bundle

    target = _indicators_file(indicators, config)
    try:
        rep = import_bundle(bundle, target)
    except IndicatorError as exc:
        _fail(str(exc))
    typer.echo(f"{rep.indicators} indicator(s) in {bundle}: {rep.indexed} imported, {rep.skipped_unsupported} with patterns "
               f"DistillGuard cannot match, {rep.skipped_expired} revoked/expired; {target} now holds "
               f"{rep.total_in_file} ({rep.by_kind['ip']} IPs, {rep.by_kind['user_agent']} user agents, "
               f"{rep.by_kind['template']} template fingerprints)")


@app.command("list")
def list_cmd(
    indicators: Path | None = typer.Option(None, "--indicators", help="indicator file"),
    config: Path | None = typer.Option(None, "--config", help="server config (for [policy.indicators] file)"),
) -> None:
    """List imported indicators."""
    from rich.console import Console
    from rich.table import Table

    from distillguard.intel.indicators import IndicatorError, load_indicators

    target = _indicators_file(indicators, config)
    try:
        s = load_indicators(target)
    except IndicatorError as exc:
        _fail(str(exc))
    if not s.records:
        typer.echo(f"no indicators in {target}", err=True)
        return
    table = Table()
    for col in ("id", "kind", "pattern", "source"):
        table.add_column(col, overflow="fold")
    for r in sorted(s.records.values(), key=lambda r: r["id"]):
        table.add_row(r["id"], r.get("kind") or "", r["pattern"], r.get("source") or "")
    Console(soft_wrap=False).print(table)
