"""Interfaces for everything stateful the gateway keeps: accounts, keys, the exchange log, the bus.

Embedded defaults (SQLite through SQLAlchemy; an in-process bus) need no server. A Postgres URL
or a Redis bus replaces them without touching callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distillguard.events import ExchangeEvent


class StoreError(ValueError):
    """A store operation was refused (unknown account, duplicate name...); the message says why."""


class StoreUnavailable(RuntimeError):
    """The database could not be reached or refused to work (down, locked too long, bad URL).

    Distinct from StoreError so callers can answer 503 / retry instead of blaming the input."""


@dataclass
class Account:
    name: str
    tier: str
    created_at: float
    #: free-form state other areas attach (verified, banned, exempt, risk...); JSON-serialisable
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class KeyRecord:
    key_id: str  # public id, safe to log (events' `key` field)
    account: str
    tier: str  # the key's tier; defaults to the account's
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class Store(ABC):
    """Accounts, API keys and the exchange log. Methods are synchronous (run them off the event
    loop); the gateway's batching writer calls ``write_events`` from a background thread."""

    # accounts
    @abstractmethod
    def create_account(self, name: str, tier: str) -> Account: ...
    @abstractmethod
    def get_account(self, name: str) -> Account | None: ...
    @abstractmethod
    def list_accounts(self) -> list[Account]: ...
    @abstractmethod
    def update_account(self, name: str, *, tier: str | None = None, flags: dict[str, Any] | None = None) -> Account: ...

    # keys: the secret is returned once by create_key and only a salted hash is kept
    @abstractmethod
    def create_key(self, account: str, tier: str | None = None) -> tuple[KeyRecord, str]: ...
    @abstractmethod
    def authenticate(self, secret: str) -> KeyRecord | None:
        """The key record for a secret (revoked ones included, so callers can say 'revoked'),
        or None if no key matches."""
    @abstractmethod
    def revoke_key(self, key_id: str) -> KeyRecord: ...
    @abstractmethod
    def list_keys(self, account: str | None = None) -> list[KeyRecord]: ...

    # exchange log
    @abstractmethod
    def write_events(self, events: list[ExchangeEvent]) -> None: ...
    @abstractmethod
    def iter_events(self, since: float | None = None, account: str | None = None) -> Iterator[ExchangeEvent]:
        """Events in arrival order (by ts)."""
    @abstractmethod
    def count_events(self, account: str | None = None) -> int:
        """All events, or one account's when ``account`` is given."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class EventBus(ABC):
    """Carries exchange events from the gateway to consumers (the detection worker).

    ``publish`` must never block the request path; a subscriber pulls batches at its own pace.
    """

    @abstractmethod
    def publish(self, event: ExchangeEvent) -> None: ...
    @abstractmethod
    def subscribe(self, name: str) -> Subscription: ...
    def close(self) -> None:  # noqa: B027
        pass


class Subscription(ABC):
    @abstractmethod
    def get_batch(self, max_events: int = 256, timeout_s: float = 0.5) -> list[ExchangeEvent]:
        """Up to ``max_events`` events, waiting at most ``timeout_s`` for the first one."""
