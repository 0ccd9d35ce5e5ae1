"""The Store on SQLAlchemy 2.0: a SQLite file by default, PostgreSQL by URL.

Tables are created on open (``metadata.create_all``); there is no migration tool yet. SQLite runs
in WAL mode with a busy timeout so the CLI can read and write while the server is running.
API keys are kept as salt + SHA-256(salt + secret): the secrets carry 192 bits of randomness, so a
slow password hash would add latency to every request without adding safety.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from distillguard.events import ExchangeEvent
from distillguard.store.base import Account, KeyRecord, Store, StoreError, StoreUnavailable
from distillguard.store.ids import new_event_id

log = logging.getLogger(__name__)

SECRET_PREFIX = "dg"
#: bytes of randomness in a secret (token_urlsafe(24) -> 32 characters)
SECRET_BYTES = 24
#: SQLite waits this long for another writer before giving up (ms)
SQLITE_BUSY_TIMEOUT_MS = 30_000


def new_key_id() -> str:
    # no '-' inside: the secret is parsed as dg-<key_id>-<random>
    return f"key_{secrets.token_hex(6)}"


def hash_secret(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode()).hexdigest()


def parse_secret(secret: str) -> str | None:
    """The key id inside a well-formed secret, else None."""
    prefix, sep1, rest = secret.partition("-")
    key_id, sep2, random_part = rest.partition("-")
    if prefix != SECRET_PREFIX or not sep1 or not sep2 or not key_id.startswith("key_") or len(random_part) < 32:
        return None
    return key_id


# --- schema -----------------------------------------------------------------------------------

# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres gets a 64-bit identity.
_SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    __tablename__ = "accounts"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    tier: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Double)
    flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def to_account(self) -> Account:
        return Account(name=self.name, tier=self.tier, created_at=self.created_at, flags=dict(self.flags or {}))


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(String(200), ForeignKey("accounts.name"), index=True)
    tier: Mapped[str] = mapped_column(String(200))
    salt: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)

    def to_record(self) -> KeyRecord:
        return KeyRecord(
            key_id=self.key_id, account=self.account, tier=self.tier, created_at=self.created_at, revoked_at=self.revoked_at
        )


class EventRow(Base):
    __tablename__ = "events"
    # seq keeps arrival order among equal timestamps; id makes writes idempotent (retries, re-imports)
    seq: Mapped[int] = mapped_column(_SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[float] = mapped_column(Double, index=True)
    # no length limits: imported logs may carry anything, and one long value must not refuse a batch
    account: Mapped[str] = mapped_column(String)
    key: Mapped[str | None] = mapped_column("key", String, nullable=True)
    ip: Mapped[str | None] = mapped_column(String, nullable=True)
    user_agent: Mapped[str | None] = mapped_column(Text, nullable=True)
    endpoint: Mapped[str] = mapped_column(String)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Double, nullable=True)
    action: Mapped[str | None] = mapped_column(String, nullable=True)
    # the whole event as JSON text: portable, and Postgres' jsonb would refuse a \u0000 in a prompt
    event: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_events_account_ts", "account", "ts"),)


# --- the store --------------------------------------------------------------------------------


class SqlStore(Store):
    """Accounts, keys and the exchange log in one SQL database.

    ``url`` is any SQLAlchemy URL: ``sqlite:///path/to.db`` (default kind), ``sqlite://`` (in
    memory, one process), ``postgresql+psycopg://host:5432/db``. ``schema`` (Postgres only) puts
    the tables in that schema, creating it if needed; tests use it to keep runs apart.
    Raises StoreUnavailable if the database cannot be reached.
    """

    def __init__(self, url: str, *, schema: str | None = None, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreUnavailable(f"store URL {url!r} is not a valid SQLAlchemy URL") from exc
        self.url = url
        self.display_url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        if schema is not None and self.dialect != "postgresql":
            raise StoreError("a schema can only be given for PostgreSQL URLs")
        self.schema = schema
        try:
            self.engine = self._make_engine(parsed, echo)
        except (NoSuchModuleError, ImportError) as exc:
            raise StoreUnavailable(f"no database driver for {self.display_url}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the database file for {self.display_url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self._errors("create tables"):
            with self.engine.begin() as conn:
                if schema is not None:
                    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                Base.metadata.create_all(conn)

    def _make_engine(self, parsed: Any, echo: bool) -> Engine:
        if self.dialect != "sqlite":
            engine = create_engine(parsed, echo=echo, pool_pre_ping=True, future=True)
            if self.schema is not None:
                engine = engine.execution_options(schema_translate_map={None: self.schema})
            return engine
        database = parsed.database
        in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
        kwargs: dict[str, Any] = {
            "echo": echo,
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        }
        if in_memory:
            kwargs["poolclass"] = StaticPool  # one shared connection, or every session sees an empty db
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not in_memory:
                # readers never block the writer and vice versa; NORMAL is crash-safe in WAL mode
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn driver-level failures into StoreUnavailable with a message that names the database."""
        try:
            yield
        except (OperationalError, DisconnectionError) as exc:
            raise StoreUnavailable(f"store {self.display_url} unavailable ({doing}): {_first_line(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"store {self.display_url} connection lost ({doing})") from exc
            raise

    @contextmanager
    def _session(self, doing: str) -> Iterator[Session]:
        with self._errors(doing), self._sessions.begin() as session:
            yield session

    # accounts ---------------------------------------------------------------------------------

    def create_account(self, name: str, tier: str) -> Account:
        _check_name("account", name)
        _check_name("tier", tier)
        with self._session("create account") as s:
            if s.get(AccountRow, name) is not None:
                raise StoreError(f"account {name!r} already exists")
            row = AccountRow(name=name, tier=tier, created_at=time.time(), flags={})
            s.add(row)
        return row.to_account()

    def get_account(self, name: str) -> Account | None:
        with self._session("get account") as s:
            row = s.get(AccountRow, name)
            return row.to_account() if row else None

    def list_accounts(self) -> list[Account]:
        with self._session("list accounts") as s:
            return [r.to_account() for r in s.scalars(select(AccountRow).order_by(AccountRow.name))]

    def update_account(self, name: str, *, tier: str | None = None, flags: dict[str, Any] | None = None) -> Account:
        """Change the tier and/or merge ``flags`` into the account's flags (a None value deletes
        that flag). The merge is atomic against other writers."""
        if tier is not None:
            _check_name("tier", tier)
        with self._session("update account") as s:
            # a no-op UPDATE first takes the row's write lock (SQLite: the database's), so the
            # read-merge-write below cannot interleave with another process doing the same
            s.execute(update(AccountRow).where(AccountRow.name == name).values(name=AccountRow.name))
            row = s.get(AccountRow, name, populate_existing=True)
            if row is None:
                raise StoreError(f"unknown account {name!r}")
            if tier is not None:
                row.tier = tier
            if flags:
                merged = dict(row.flags or {})
                for k, v in flags.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
                row.flags = merged  # a new dict so SQLAlchemy sees the change
            return row.to_account()

    # keys -------------------------------------------------------------------------------------

    def create_key(self, account: str, tier: str | None = None) -> tuple[KeyRecord, str]:
        """A new key for ``account`` and its secret (returned only here). A missing account is
        created with ``tier``; without a tier the account must exist and its tier is used."""
        if tier is not None:
            _check_name("tier", tier)
        key_id = new_key_id()
        secret = f"{SECRET_PREFIX}-{key_id}-{secrets.token_urlsafe(SECRET_BYTES)}"
        salt = secrets.token_hex(16)
        with self._session("create key") as s:
            acc = s.get(AccountRow, account)
            if acc is None:
                if tier is None:
                    raise StoreError(f"unknown account {account!r}; give a tier to create it")
                _check_name("account", account)
                s.add(AccountRow(name=account, tier=tier, created_at=time.time(), flags={}))
                s.flush()  # the key's foreign key needs the account row first
            row = ApiKeyRow(
                key_id=key_id,
                account=account,
                tier=tier or acc.tier,  # type: ignore[union-attr]
                salt=salt,
                hash=hash_secret(salt, secret),
                created_at=time.time(),
                revoked_at=None,
            )
            s.add(row)
        return row.to_record(), secret

    def authenticate(self, secret: str) -> KeyRecord | None:
        key_id = parse_secret(secret)
        if key_id is None:
            return None
        with self._session("authenticate") as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return None
            if not hmac.compare_digest(row.hash, hash_secret(row.salt, secret)):
                return None
            return row.to_record()

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._session("get key") as s:
            row = s.get(ApiKeyRow, key_id)
            return row.to_record() if row else None

    def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a key; revoking twice keeps the first revocation time."""
        with self._session("revoke key") as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise StoreError(f"unknown key id {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = time.time()
            return row.to_record()

    def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        q = select(ApiKeyRow).order_by(ApiKeyRow.account, ApiKeyRow.created_at)
        if account is not None:
            q = q.where(ApiKeyRow.account == account)
        with self._session("list keys") as s:
            return [r.to_record() for r in s.scalars(q)]

    # exchange log -----------------------------------------------------------------------------

    def write_events(self, events: list[ExchangeEvent]) -> None:
        """Insert a batch in one transaction. Events without an id get one; an event whose id is
        already stored is skipped, so retrying a batch (or re-importing a file) never duplicates."""
        if not events:
            return
        try:
            rows = [_event_row(ev) for ev in events]
        except (AttributeError, TypeError, ValueError) as exc:
            # a malformed event (e.g. built with model_construct) fails the same way on every retry
            raise StoreError(f"event cannot be stored: {type(exc).__name__}: {exc}") from exc
        try:
            with self._session("write events") as s:
                s.execute(self._insert_ignoring_duplicates(), rows)
        except (DataError, IntegrityError) as exc:
            # the data, not the database, is at fault: StoreError tells the writer not to retry as is
            raise StoreError(f"events refused by {self.display_url}: {_first_line(exc)}") from exc

    def _insert_ignoring_duplicates(self) -> Any:
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:  # other databases: plain insert (a duplicate id fails the batch)
            return insert(EventRow)
        return dialect_insert(EventRow).on_conflict_do_nothing(index_elements=["id"])

    def iter_events(self, since: float | None = None, account: str | None = None) -> Iterator[ExchangeEvent]:
        """Events in arrival order (ts, then insertion order), streamed in chunks."""
        q = select(EventRow.event).order_by(EventRow.ts, EventRow.seq)
        if since is not None:
            q = q.where(EventRow.ts >= since)
        if account is not None:
            q = q.where(EventRow.account == account)
        with self._errors("read events"), self._sessions() as s:
            for raw in s.execute(q.execution_options(yield_per=1000)).scalars():
                yield ExchangeEvent.model_validate_json(raw)

    def count_events(self, account: str | None = None) -> int:
        q = select(func.count()).select_from(EventRow)
        if account is not None:
            q = q.where(EventRow.account == account)
        with self._session("count events") as s:
            return int(s.scalar(q) or 0)

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlStore({self.display_url!r})"


def _event_row(ev: ExchangeEvent) -> dict[str, Any]:
    if ev.id is None:
        ev = ev.model_copy(update={"id": new_event_id()})
    return {
        "id": ev.id,
        "ts": ev.ts,
        "account": ev.account,
        "key": ev.key,
        "ip": ev.ip,
        "user_agent": ev.user_agent,
        "endpoint": ev.endpoint,
        "status": ev.status,
        "latency_ms": ev.latency_ms,
        "action": _action(ev.decision),
        "event": orjson.dumps(ev.model_dump(mode="json", exclude_none=True)).decode(),
    }


def _action(decision: Any) -> str | None:
    if decision is None:
        return None
    return decision.get("action") if isinstance(decision, dict) else decision.action


def _check_name(what: str, value: str) -> None:
    if not value or len(value) > 200 or value != value.strip() or any(ord(c) < 32 for c in value):
        raise StoreError(f"invalid {what} name {value!r}: use 1-200 printable characters, no surrounding spaces")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
