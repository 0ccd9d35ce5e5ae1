"""Store costs the gateway pays: key authentication latency, EventWriter.submit cost, and how many
events per second the writer gets into the database (SQLite file, and Postgres if reachable).

    .venv/bin/python bench/store_throughput.py [--events 20000] [--pg postgresql+psycopg://127.0.0.1:5432/test]

Writes bench/results/store_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from rich.progress import track

from distillguard.events import ExchangeEvent
from distillguard.store import EventWriter
from distillguard.store.sql import SqlStore


def event(i: int) -> ExchangeEvent:
    return ExchangeEvent.model_validate(
        {
            "ts": 1_763_712_000.0 + i / 100,
            "account": f"acct{i % 50}",
            "key": "key_0123456789ab",
            "ip": "198.51.100.7",
            "user_agent": "OpenAI/Python 1.54.0",
            "request": {"model": "smollm2", "messages": [{"role": "user", "content": "Explain photosynthesis " * 20}], "max_tokens": 256},
            "response": {"text": "Plants convert light " * 60, "finish_reason": "stop", "prompt_tokens": 90, "completion_tokens": 240},
            "latency_ms": 812.4,
            "decision": {"action": "allow", "reasons": []},
        }
    )


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(store: SqlStore, n_events: int, label: str) -> dict:
    _, secret = store.create_key("bench", "standard")
    auth = []
    for _ in track(range(2000), description=f"{label}: authenticate"):
        t0 = time.perf_counter()
        assert store.authenticate(secret) is not None
        auth.append((time.perf_counter() - t0) * 1e3)

    events = [event(i) for i in range(n_events)]
    writer = EventWriter(store, batch_size=256, flush_interval_s=0.25)
    submit = []
    t_start = time.perf_counter()
    for ev in events:
        t0 = time.perf_counter()
        writer.submit(ev)
        submit.append((time.perf_counter() - t0) * 1e6)
    left = writer.close(timeout=600)
    elapsed = time.perf_counter() - t_start
    assert left == 0
    return {
        "authenticate_ms": {"p50": statistics.median(auth), "p99": pct(auth, 0.99)},
        "submit_us": {"p50": statistics.median(submit), "p99": pct(submit, 0.99)},
        "events": n_events,
        "event_json_bytes": len(events[0].to_json()),
        "write_events_per_s": n_events / elapsed,
        "write_failures": writer.failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--pg", default="postgresql+psycopg://127.0.0.1:5432/test")
    args = ap.parse_args()

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{Path(tmp) / 'bench.db'}")
        results["sqlite"] = measure(store, args.events, "sqlite")
        store.close()
    if args.pg:
        schema = f"dg_bench_{uuid.uuid4().hex[:8]}"
        try:
            store = SqlStore(args.pg, schema=schema)
        except Exception as exc:  # noqa: BLE001
            results["postgres"] = {"skipped": str(exc)}
        else:
            try:
                results["postgres"] = measure(store, args.events, "postgres")
            finally:
                with store.engine.begin() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                store.close()

    import sqlalchemy

    out = {
        "command": " ".join([sys.executable, *sys.argv]),
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
        },
        "results": results,
    }
    path = Path(__file__).parent / "results" / "store_throughput.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
