"""`distillguard serve` (owned by distillguard.gateway)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer


def serve(
    config: Path | None = typer.Option(None, "--config", help="TOML config file."),
    host: str | None = typer.Option(None, help="Address to bind (default from config: 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default from config: 8000)."),
) -> None:
    """Serve the OpenAI-compatible shielded API.

    On SIGTERM/SIGINT the server stops accepting connections, lets in-flight requests finish
    (at most server.shutdown_grace_s), then writes every logged exchange to the store and exits.
    """
    import logging

    import uvicorn

    from distillguard.config import ConfigError, load_settings
    from distillguard.engines.base import EngineError
    from distillguard.engines.factory import build_engine
    from distillguard.gateway.app import create_app
    from distillguard.gateway.shield import Shield
    from distillguard.store import StoreUnavailable, build_bus, open_store

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):  # one line per upstream call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)

    # Built here rather than in the app's lifespan so a wrong path or URL is one clear line.
    try:
        engine = build_engine(settings.engine)
    except EngineError as exc:
        _fail(f"cannot start the {settings.engine.kind} engine: {exc}", 1)
    try:
        store = open_store(settings.store.url)
        bus = build_bus(settings.store.bus_url)
    except (StoreUnavailable, ValueError) as exc:
        _fail(str(exc), 1)

    try:
        shield = Shield.build(settings, store, bus, config_file=config)
    except (ValueError, OSError) as exc:  # bad threshold file, missing watermark key, ...
        _fail(f"cannot start the shield: {exc}", 1)
    app = create_app(settings, engine=engine, store=store, bus=bus, shield=shield, close_given=True)
    s = settings.server
    shown = f"[{s.host}]" if ":" in s.host else s.host
    print(
        f"DistillGuard: serving model {engine.model_name!r} ({type(engine).__name__}) at http://{shown}:{s.port}/v1"
        f"  (metrics: /metrics, admin: /admin)",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=s.host,
            port=s.port,
            workers=1,
            loop="auto",  # uvloop and httptools when installed (uvicorn[standard])
            http="auto",
            lifespan="on",
            access_log=False,
            log_level="info",
            timeout_graceful_shutdown=s.shutdown_grace_s,
        )
    )
    server.run()
    if not server.started:  # uvicorn logged why (port in use, limits storage unreachable...)
        raise typer.Exit(1)


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)
