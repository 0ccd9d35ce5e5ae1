"""`distillguard arena` (owned by distillguard.arena)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


def _fail(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(code)


@app.command()
def run(
    scenario: str = typer.Option("quick", "--scenario", "-s", help="quick | full | ci, or a scenario .toml file"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default arena-<scenario>)"),
) -> None:
    """Run a distillation attack against the shielded model and write metrics.json + report.html."""
    import json
    import time

    from rich.console import Console

    from distillguard.arena.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        _fail(str(exc))
    out = (out or Path(f"arena-{sc.name}")).resolve()
    if (out / "arena.db").exists():
        _fail(f"{out} already holds an arena run; give another --out or delete it")
    console = Console(stderr=True)
    from distillguard.arena.report import headline
    from distillguard.arena.runner import run_arena

    t0 = time.perf_counter()
    try:
        m = run_arena(sc, out, console)
    except RuntimeError as exc:  # the gateway did not start, or a stage could not run
        _fail(str(exc).splitlines()[0] + f" (details in {out})", 1)
    h = headline(m)
    console.print(f"\n[bold green]arena done[/] in {time.perf_counter() - t0:.0f} s — report: {out / 'report.html'}")
    for k, v in h.items():
        console.print(f"  {k:34s} {v if not isinstance(v, float) else (f'{v:.3g}')}")
    sys.stdout.write(json.dumps({"report": str(out / "report.html"), "metrics": str(out / "metrics.json"), **h}) + "\n")


@app.command("report")
def report(out: Path = typer.Argument(..., help="a finished arena run's folder (holds metrics.json)")) -> None:
    """Write report.html and its PNGs again from a run's metrics.json."""
    if not (out / "metrics.json").is_file():
        _fail(f"{out} has no metrics.json: give the --out folder of a finished `distillguard arena run`")
    from distillguard.arena.runner import rerender

    print(rerender(out))


@app.command("scenarios")
def scenarios() -> None:
    """List the built-in scenarios."""
    from distillguard.arena.scenario import builtin_names, load_scenario

    for n in builtin_names():
        sc = load_scenario(n)
        print(f"{n:8s} {sc.description}")
