"""CLI for distillguard.detect: `detect replay` and `detect calibrate`.

Heavy imports (sentence-transformers, sklearn) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def _embedder(enabled: bool):
    from distillguard.detect.config import DetectConfig

    cfg = DetectConfig()
    if not enabled:
        typer.echo("embeddings off: topic and centroid signals are not computed", err=True)
        return None
    from distillguard.detect.embed import MiniLMEmbedder
    from distillguard.models import ModelNotInstalled

    try:
        # offline commands have no serving path to protect: the embedder may use every core
        # (detect.embed_threads, one thread, is for the live worker inside `serve`)
        return MiniLMEmbedder(max_seq_length=cfg.embed_max_seq_length, batch_size=cfg.embed_batch_size,
                              threads=max(cfg.embed_threads, os.cpu_count() or 1), dtype=cfg.embed_dtype)
    except ModelNotInstalled as exc:
        raise _fail(f"{exc} (or pass --no-embeddings to run without topic signals)") from exc


@app.command("replay")
def replay_cmd(
    events: Path = typer.Argument(..., help="exchange events, JSON Lines (shared/spec/events.md)"),
    out: Path = typer.Option(..., "--out", "-o", help="verdicts file to write (shared/spec/verdicts.md)"),
    threshold_file: Path | None = typer.Option(None, "--threshold-file", help="from `distillguard detect calibrate`"),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="MiniLM topic signals (on by default)"),
) -> None:
    """Stream EVENTS through the online detector and write one verdict per account."""
    if not events.is_file():
        raise _fail(f"events file {events} does not exist")
    from distillguard.detect.config import DetectConfig
    from distillguard.detect.online import OnlineDetector
    from distillguard.detect.replay import replay, write_verdicts

    cfg = DetectConfig(threshold_file=threshold_file)
    if threshold_file is not None:
        from distillguard.detect.reference import load_calibration

        try:  # fail before loading the embedding model
            load_calibration(threshold_file)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    try:
        detector = OnlineDetector(cfg, embedder=_embedder(embeddings))
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if not detector.calibrated:
        typer.echo(f"warning: no --threshold-file; using the uncalibrated default threshold {cfg.default_threshold}",
                   err=True)
    result = replay(events, detector, warn=sys.stderr, progress=sys.stderr.isatty())
    write_verdicts(result.verdicts, out)
    if result.events == 0:
        typer.echo(f"no valid events in {events}; wrote an empty verdict file {out}", err=True)
    else:
        typer.echo(f"{result.events:,} events, {result.accounts:,} accounts, {result.flagged:,} flagged, "
                   f"{len(detector.clusters())} clusters; {result.events_per_s:,.0f} events/s -> {out}")
    typer.echo(f"skipped {len(result.skipped)} malformed line(s)", err=True)


@app.command("calibrate")
def calibrate_cmd(
    benign_events: Path = typer.Argument(..., help="benign-only exchange events (JSON Lines)"),
    out: Path = typer.Option(..., "--out", "-o", help="threshold JSON to write"),
    target_fpr: float = typer.Option(0.001, "--target-fpr", help="target account false-positive rate"),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="MiniLM topic signals (on by default)"),
) -> None:
    """Set the operating threshold from benign traffic at a target account false-positive rate."""
    if not benign_events.is_file():
        raise _fail(f"events file {benign_events} does not exist")
    if not 0 < target_fpr < 1:
        raise _fail(f"--target-fpr must be between 0 and 1 (got {target_fpr})")
    from distillguard.detect.calibrate import CalibrationError, calibrate, write_calibration
    from distillguard.events import ReadReport, read_events

    report = ReadReport()
    evs = list(read_events(benign_events, report=report, warn=sys.stderr))
    skipped = len(report.skipped or [])
    if not evs:
        raise _fail(f"no valid events in {benign_events} (skipped {skipped} malformed line(s))")
    try:
        data = calibrate(evs, target_fpr=target_fpr, embedder=_embedder(embeddings))
    except CalibrationError as exc:
        raise _fail(str(exc)) from exc
    write_calibration(data, out)
    typer.echo(f"threshold {data['threshold']:.6f} for target FPR {target_fpr:g} on {data['accounts_scored']:,} "
               f"benign accounts ({data['resolution']}) -> {out}")
    typer.echo(f"skipped {skipped} malformed line(s)", err=True)
