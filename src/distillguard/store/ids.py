"""Event ids, shared by the store and the writer without importing SQLAlchemy."""

from __future__ import annotations

import secrets
import time


def new_event_id() -> str:
    """A unique, roughly time-ordered event id: ``ev_`` + 12 hex digits of milliseconds + 16 random."""
    return f"ev_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
