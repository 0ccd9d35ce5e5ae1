"""Everything stateful: accounts, API keys, the exchange log (SQL) and the event bus.

    store = open_store(settings.store.url)             # SqlStore: SQLite file or Postgres
    writer = EventWriter(store, settings.store.batch_size, settings.store.flush_interval_s)
    bus = build_bus(settings.store.bus_url)            # InProcessBus or RedisBus

SQLAlchemy is imported only when a store is opened, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distillguard.store.base import (
    Account,
    EventBus,
    KeyRecord,
    Store,
    StoreError,
    StoreUnavailable,
    Subscription,
)
from distillguard.store.bus import InProcessBus, RedisBus, build_bus
from distillguard.store.ids import new_event_id
from distillguard.store.writer import EventWriter, WriterStats

if TYPE_CHECKING:
    from distillguard.store.sql import SqlStore

__all__ = [
    "Account",
    "EventBus",
    "EventWriter",
    "InProcessBus",
    "KeyRecord",
    "RedisBus",
    "SqlStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "WriterStats",
    "build_bus",
    "new_event_id",
    "open_store",
]


def open_store(url: str, **kwargs: Any) -> Store:
    """The store for a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``);
    tables are created if missing. Raises StoreUnavailable if the database cannot be reached."""
    from distillguard.store.sql import SqlStore

    return SqlStore(url, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "SqlStore":
        from distillguard.store.sql import SqlStore

        return SqlStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
