"""EventWriter: takes exchange events off the request path and writes them to the store in batches.

The gateway calls ``submit(event)`` from the asyncio loop (an O(1) append, never blocks); one
background thread writes batches of up to ``batch_size`` every ``flush_interval_s`` or as soon as
a full batch is waiting. An accepted event is never dropped silently:

* the database is down (StoreUnavailable or any unexpected error): the batch stays in memory and
  is retried with exponential backoff until it is written or ``close`` gives up;
* the database refuses the data (StoreError, ValueError, TypeError): the batch is split in halves
  until the refused event is alone; that one is logged at ERROR, counted as ``rejected`` and
  appended to ``spill_path`` if set;
* ``close(timeout)`` could not write everything in time: the rest is logged at ERROR and appended
  to ``spill_path`` if set (``distillguard events import FILE`` loads it later).

Store writes are idempotent by event id, so a batch that is retried or spilled after a write whose
outcome was unknown never produces duplicates. ``submit`` gives every event without an id one
(mutating it), so store and bus see the same id if the gateway submits before it publishes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from distillguard.events import ExchangeEvent
from distillguard.store.base import Store, StoreError
from distillguard.store.ids import new_event_id

log = logging.getLogger(__name__)

#: errors that say "this data cannot be stored", as opposed to "the database is not working"
_REFUSALS: tuple[type[BaseException], ...] = (StoreError, ValueError, TypeError)


@dataclass(frozen=True)
class WriterStats:
    """Counters for metrics. ``queued`` and ``written`` only grow; ``pending`` is a gauge."""

    queued: int  # events accepted by submit
    written: int  # events stored
    failed: int  # failed write attempts (one per retry; not events lost)
    rejected: int  # events the database refused; logged and spilled, not stored
    pending: int  # accepted but not yet written


class EventWriter:
    def __init__(
        self,
        store: Store,
        batch_size: int = 256,
        flush_interval_s: float = 0.25,
        *,
        spill_path: Path | str | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be positive")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spill_path = Path(spill_path) if spill_path is not None else None
        self.max_backoff_s = max_backoff_s

        self._queue: deque[ExchangeEvent] = deque()  # append/popleft are atomic across threads
        self._inflight: list[ExchangeEvent] = []  # the batch the thread is writing
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._abandon = threading.Event()  # close timed out: stop retrying
        self._progress = threading.Condition()
        self._closed = False
        self._queued = 0
        self._written = 0
        self._failed = 0
        self._rejected = 0
        self._thread = threading.Thread(target=self._run, name="distillguard-event-writer", daemon=True)
        self._thread.start()

    # --- request path --------------------------------------------------------------------------

    def submit(self, event: ExchangeEvent) -> None:
        """Accept one event for writing. Thread-safe, O(1), never waits for the database.
        Raises RuntimeError after close (the event was not accepted)."""
        if event.id is None:
            event.id = new_event_id()
        with self._submit_lock:  # uncontended in the gateway (one loop thread): ~100 ns
            if self._closed:
                raise RuntimeError("EventWriter is closed; the event was not accepted")
            self._queue.append(event)
            self._queued += 1
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    # --- counters ------------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        return WriterStats(
            queued=self._queued,
            written=self._written,
            failed=self._failed,
            rejected=self._rejected,
            pending=len(self._queue) + len(self._inflight),
        )

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def written(self) -> int:
        return self._written

    @property
    def failed(self) -> int:
        return self._failed

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._inflight)

    # --- shutdown ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is written (or rejected)."""
        target = self._queued
        self._wake.set()
        with self._progress:
            return self._progress.wait_for(lambda: self._written + self._rejected >= target, timeout)

    def close(self, timeout: float = 30.0) -> int:
        """Stop accepting, write everything still queued, stop the thread.

        Returns how many accepted events could not be written within ``timeout`` seconds (0 when
        all were); those are logged and spilled to ``spill_path`` if set."""
        if self._closed and not self._thread.is_alive():
            return 0
        with self._submit_lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(5.0)  # a write stuck inside the driver may still be running
        left = list(self._inflight) + list(self._queue)
        if left:
            log.error("event writer closed with %d events not written to %r", len(left), self.store)
            self._spill(left, "not written before close")
        return len(left)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- background thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._abandon.is_set():
            if not self._queue:
                if self._closed:
                    return
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                continue
            n = min(self.batch_size, len(self._queue))
            self._inflight = [self._queue.popleft() for _ in range(n)]
            if self._write(self._inflight):
                self._inflight = []
            # else: abandoned; close() spills _inflight

    def _write(self, batch: list[ExchangeEvent]) -> bool:
        """Write ``batch`` (retrying, splitting refused batches). False only when abandoned."""
        backoff = 0.05
        while True:
            try:
                self.store.write_events(batch)
            except _REFUSALS as exc:
                self._failed += 1
                if len(batch) == 1:
                    self._reject(batch[0], exc)
                    return True
                mid = len(batch) // 2
                return self._write(batch[:mid]) and self._write(batch[mid:])
            except Exception as exc:  # noqa: BLE001 - any other failure: the database is not working
                self._failed += 1
                log.warning(
                    "writing %d events failed (%s: %s); retrying in %.2fs",
                    len(batch),
                    type(exc).__name__,
                    exc,
                    backoff,
                )
                if self._abandon.wait(backoff):
                    return False
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                with self._progress:
                    self._written += len(batch)
                    self._progress.notify_all()
                return True

    def _reject(self, event: ExchangeEvent, exc: BaseException) -> None:
        log.error("event %s refused by the store and not stored: %s", event.id, exc)
        self._spill([event], f"refused: {exc}")
        with self._progress:
            self._rejected += 1
            self._progress.notify_all()

    def _spill(self, events: list[ExchangeEvent], why: str) -> None:
        if self.spill_path is None:
            return
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spill_path, "a", encoding="utf-8") as fh:
                for ev in events:
                    fh.write(ev.to_json() + "\n")
            log.error("%d events (%s) appended to %s", len(events), why, self.spill_path)
        except OSError as exc:
            log.error("could not spill %d events to %s: %s", len(events), self.spill_path, exc)
