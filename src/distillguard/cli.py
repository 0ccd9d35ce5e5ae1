"""The `distillguard` command. Each area owns a Typer sub-app in its own `cli.py`; this module
only mounts them. Area CLIs import heavy libraries (torch, transformers) inside their commands so
`distillguard --help` stays fast."""

from __future__ import annotations

import typer

from distillguard.arena.cli import app as arena_app
from distillguard.detect.cli import app as detect_app
from distillguard.distill.cli import app as distill_app
from distillguard.gateway.cli import serve
from distillguard.intel.cli import app as intel_app
from distillguard.store.cli import accounts_app, events_app, keys_app
from distillguard.watermark.cli import app as watermark_app

app = typer.Typer(
    name="distillguard",
    help="Shield a model API against distillation attacks, prove where text came from, distil models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)
app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
app.add_typer(accounts_app, name="accounts", help="List and inspect accounts.")
app.add_typer(events_app, name="events", help="Export the exchange log (JSONL, shared/spec/events.md).")
app.add_typer(detect_app, name="detect", help="Detect distillation campaigns in exchange logs.")
app.add_typer(watermark_app, name="watermark", help="Watermark detection and radioactivity audits.")
app.add_typer(distill_app, name="distill", help="Distil a teacher into a smaller student.")
app.add_typer(intel_app, name="intel", help="Share distillation threat intelligence (STIX 2.1).")
app.add_typer(arena_app, name="arena", help="Run a real distillation attack against the shielded model; report.")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
