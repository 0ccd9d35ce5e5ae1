"""API-key authentication without a database read per request.

Each secret's lookup (key record + account) is cached in memory. After ``ttl_s`` (default 2 s) an
entry is stale: the next request still uses it but starts a refresh in the background, so a key
revoked with the CLI stops working within about ``ttl_s`` plus one request, while the request path
never waits for the database. After ``max_stale_s`` an entry is dropped and the request waits for
a fresh lookup. Revocation through the admin API drops the key's entries at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from distillguard.gateway.errors import APIError
from distillguard.store.base import Account, KeyRecord, Store


@dataclass
class Principal:
    """Who is calling: the key and its account, as of the last lookup."""

    key: KeyRecord
    account: Account


@dataclass
class _Entry:
    principal: Principal | None  # None: no such key (cached too, so guessing costs no DB reads)
    fetched_at: float
    refreshing: bool = False


class KeyCache:
    def __init__(self, store: Store, ttl_s: float = 2.0, max_stale_s: float = 60.0, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.max_entries = max_entries
        self._entries: dict[bytes, _Entry] = {}
        self._tasks: set[asyncio.Task] = set()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller for an ``Authorization: Bearer <secret>`` header, or a 401 APIError."""
        if not authorization:
            raise APIError(
                401,
                "Missing API key: send it as 'Authorization: Bearer <key>' (create one with `distillguard keys create`).",
                code="invalid_api_key",
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise APIError(401, "Malformed Authorization header: use 'Authorization: Bearer <key>'.", code="invalid_api_key")
        principal = await self._lookup(secret)
        if principal is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if principal.key.revoked:
            raise APIError(401, f"API key {principal.key.key_id} has been revoked.", code="invalid_api_key")
        return principal

    async def _lookup(self, secret: str) -> Principal | None:
        # the secret itself is not kept as a dict key; its digest is
        h = hashlib.sha256(secret.encode()).digest()
        entry = self._entries.get(h)
        now = time.monotonic()
        if entry is not None:
            age = now - entry.fetched_at
            if age < self.ttl_s:
                return entry.principal
            if age < self.max_stale_s:
                if not entry.refreshing:
                    entry.refreshing = True
                    task = asyncio.get_running_loop().create_task(self._refresh(h, secret, entry))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                return entry.principal
        principal = await run_in_threadpool(self._fetch, secret)
        self._put(h, principal)
        return principal

    async def _refresh(self, h: bytes, secret: str, entry: _Entry) -> None:
        try:
            self._put(h, await run_in_threadpool(self._fetch, secret))
        except Exception:  # noqa: BLE001 - database trouble: keep serving the stale entry for now
            entry.refreshing = False

    def _fetch(self, secret: str) -> Principal | None:
        key = self.store.authenticate(secret)
        if key is None:
            return None
        account = self.store.get_account(key.account)
        if account is None:  # a key whose account vanished is as good as no key
            return None
        return Principal(key=key, account=account)

    def _put(self, h: bytes, principal: Principal | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded: a flood of random keys cannot grow memory
        self._entries[h] = _Entry(principal, time.monotonic())

    def invalidate(self, key_id: str | None = None, account: str | None = None) -> None:
        """Forget cached lookups for a key or an account (everything when both are None)."""
        if key_id is None and account is None:
            self._entries.clear()
            return
        for h, e in list(self._entries.items()):
            p = e.principal
            if p is not None and (p.key.key_id == key_id or p.account.name == account):
                del self._entries[h]
