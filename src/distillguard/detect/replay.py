"""Offline replay: stream an events file through the online detector and write verdicts.

Events are read with ``distillguard.events.read_events`` (bad lines reported by line number and
skipped), put back in ``ts`` order within a bounded window (the spec allows slightly unsorted
logs), and fed to ``OnlineDetector`` in batches, exactly as the live worker would see them.
Verdict lines follow ``shared/spec/verdicts.md``.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from distillguard.detect.online import OnlineDetector, iter_batches
from distillguard.events import ExchangeEvent, ReadReport, read_events

SORT_WINDOW = 10_000


def sorted_within_window(events: Iterable[ExchangeEvent], window: int = SORT_WINDOW) -> Iterator[ExchangeEvent]:
    """Yield events in ts order, assuming no event arrives more than ``window`` lines late.
    Ties keep file order."""
    heap: list[tuple[float, int, ExchangeEvent]] = []
    for i, ev in enumerate(events):
        heapq.heappush(heap, (ev.ts, i, ev))
        if len(heap) > window:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


@dataclass
class ReplayResult:
    events: int = 0
    accounts: int = 0
    flagged: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def replay(source: Path | str | TextIO | Iterable[str], detector: OnlineDetector, *, batch_size: int = 256,
           warn: TextIO | None = sys.stderr, progress: bool = False) -> ReplayResult:
    report = ReadReport()
    result = ReplayResult()
    t0 = time.perf_counter()
    stream = sorted_within_window(read_events(source, report=report, warn=warn))
    bar = None
    if progress:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        bar = Progress(SpinnerColumn(), TextColumn("{task.completed:,} events"), TimeElapsedColumn(), transient=True)
        bar.start()
        task = bar.add_task("replay", total=None)
    try:
        # embedding of the next batch overlaps the scoring of this one (two cores)
        result.events = detector.process_stream(
            iter_batches(stream, batch_size),
            on_batch=(lambda k: bar.update(task, advance=k)) if bar is not None else None)
        detector.finish()
    finally:
        if bar is not None:
            bar.stop()
    result.seconds = time.perf_counter() - t0
    result.skipped = list(report.skipped or [])
    result.verdicts = detector.verdicts()
    result.accounts = len(result.verdicts)
    result.flagged = sum(1 for v in result.verdicts if v["flagged"])
    return result


def write_verdicts(verdicts: list[dict[str, Any]], out: Path | str) -> None:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as fh:
        for v in verdicts:
            fh.write(orjson.dumps(v))
            fh.write(b"\n")
