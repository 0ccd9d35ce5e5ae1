"""EventWriter: batching off the request path, flush on close, surviving database failures."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from distillguard.events import read_events
from distillguard.store import EventWriter, StoreError, StoreUnavailable
from distillguard.store.sql import SqlStore


class FlakyStore:
    """Wraps a real store; write_events fails while ``down`` is set, or for the first ``fail_first`` calls."""

    def __init__(self, inner: SqlStore, fail_first: int = 0, error: type[Exception] = StoreUnavailable) -> None:
        self.inner = inner
        self.fail_first = fail_first
        self.error = error
        self.down = threading.Event()
        self.calls = 0
        self.batch_sizes: list[int] = []

    def write_events(self, events):
        self.calls += 1
        if self.calls <= self.fail_first or self.down.is_set():
            if self.error is OperationalError:
                raise OperationalError("INSERT", {}, Exception("database is locked"))
            raise self.error("database down for the test")
        self.batch_sizes.append(len(events))
        self.inner.write_events(events)

    def __repr__(self) -> str:
        return "FlakyStore"


def test_close_flushes_events_from_many_threads(sqlite_store, make_event):
    writer = EventWriter(sqlite_store, batch_size=64, flush_interval_s=0.05)
    n_threads, per_thread = 4, 500

    def produce(t: int) -> None:
        for i in range(per_thread):
            writer.submit(make_event(t * per_thread + i, account=f"acct{t}"))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.close(timeout=30) == 0
    total = n_threads * per_thread
    stats = writer.stats()
    assert (stats.queued, stats.written, stats.pending, stats.rejected) == (total, total, 0, 0)
    assert sqlite_store.count_events() == total
    assert len({e.id for e in sqlite_store.iter_events()}) == total
    for t in range(n_threads):
        assert sqlite_store.count_events(f"acct{t}") == per_thread
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(make_event(0))


def test_submit_is_batched_and_flush_waits(sqlite_store, make_event):
    flaky = FlakyStore(sqlite_store)
    writer = EventWriter(flaky, batch_size=100, flush_interval_s=0.2)
    for i in range(1000):
        writer.submit(make_event(i))
    assert writer.flush(timeout=10)
    assert sqlite_store.count_events() == 1000
    assert max(flaky.batch_sizes) <= 100
    assert len(flaky.batch_sizes) < 1000 / 5  # batches, not one write per event
    writer.close()


def test_submit_assigns_ids_so_bus_and_store_agree(sqlite_store, make_event):
    writer = EventWriter(sqlite_store, flush_interval_s=0.05)
    ev = make_event(1)
    assert ev.id is None
    writer.submit(ev)
    assert ev.id is not None
    writer.close()
    assert [e.id for e in sqlite_store.iter_events()] == [ev.id]


@pytest.mark.parametrize("error", [StoreUnavailable, OperationalError, ConnectionError])
def test_temporary_failure_is_retried(sqlite_store, make_event, error):
    flaky = FlakyStore(sqlite_store, fail_first=3, error=error)
    writer = EventWriter(flaky, batch_size=10, flush_interval_s=0.02, max_backoff_s=0.05)
    for i in range(50):
        writer.submit(make_event(i))
    assert writer.close(timeout=20) == 0
    assert writer.failed == 3
    assert writer.written == 50 and sqlite_store.count_events() == 50


def test_outage_keeps_events_in_memory_until_the_database_returns(sqlite_store, make_event):
    flaky = FlakyStore(sqlite_store)
    flaky.down.set()
    writer = EventWriter(flaky, batch_size=16, flush_interval_s=0.02, max_backoff_s=0.05)
    for i in range(200):
        writer.submit(make_event(i))
    deadline = time.monotonic() + 5
    while writer.failed < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.failed >= 3 and writer.written == 0 and writer.pending == 200
    for i in range(200, 300):  # the gateway keeps submitting during the outage
        writer.submit(make_event(i))
    flaky.down.clear()
    assert writer.close(timeout=20) == 0
    assert sqlite_store.count_events() == 300
    assert [e.ts for e in sqlite_store.iter_events()] == sorted(make_event(i).ts for i in range(300))


def test_close_during_outage_spills_and_import_recovers(sqlite_store, sqlite_url, make_event, tmp_path):
    from typer.testing import CliRunner

    from distillguard.cli import app

    flaky = FlakyStore(sqlite_store)
    flaky.down.set()
    spill = tmp_path / "spill" / "events.jsonl"
    writer = EventWriter(flaky, batch_size=8, flush_interval_s=0.02, spill_path=spill, max_backoff_s=0.05)
    events = [make_event(i) for i in range(40)]
    for ev in events:
        writer.submit(ev)
    left = writer.close(timeout=0.5)
    assert left == 40 and sqlite_store.count_events() == 0
    spilled = list(read_events(spill))
    assert sorted(e.id for e in spilled) == sorted(e.id for e in events)

    result = CliRunner().invoke(app, ["events", "import", str(spill)], env={"DISTILLGUARD_STORE__URL": sqlite_url})
    assert result.exit_code == 0, result.stderr
    again = CliRunner().invoke(app, ["events", "import", str(spill)], env={"DISTILLGUARD_STORE__URL": sqlite_url})
    assert again.exit_code == 0
    assert sqlite_store.count_events() == 40  # ids make the import idempotent


def test_refused_event_is_isolated_logged_and_spilled(sqlite_store, make_event, tmp_path, caplog):
    class PickyStore(FlakyStore):
        def write_events(self, events):
            if any(e.account == "poison" for e in events):
                raise StoreError("value too long for the column")
            super().write_events(events)

    spill = tmp_path / "refused.jsonl"
    writer = EventWriter(PickyStore(sqlite_store), batch_size=32, flush_interval_s=0.02, spill_path=spill)
    for i in range(100):
        writer.submit(make_event(i, account="poison" if i == 37 else "acme"))
    assert writer.close(timeout=10) == 0
    assert sqlite_store.count_events() == 99
    assert writer.rejected == 1 and writer.written == 99
    assert [e.account for e in read_events(spill)] == ["poison"]
    assert any("refused by the store" in r.message for r in caplog.records)


@pytest.mark.postgres
def test_writer_on_postgres(pg_store, make_event):
    writer = EventWriter(pg_store, batch_size=128, flush_interval_s=0.05)
    threads = [threading.Thread(target=lambda t=t: [writer.submit(make_event(t * 1000 + i)) for i in range(300)]) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.close(timeout=30) == 0
    assert pg_store.count_events() == 900
