"""`distillguard serve` (owned by distillguard.gateway)."""

from pathlib import Path

import typer


def serve(
    config: Path | None = typer.Option(None, "--config", help="TOML config file."),
    host: str | None = typer.Option(None, help="Address to bind (default from config: 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default from config: 8000)."),
) -> None:
    """Serve the OpenAI-compatible shielded API."""
    raise typer.Exit(1)
