"""SqlStore against SQLite (tmp_path) and the real PostgreSQL (marker `postgres`)."""

from __future__ import annotations

import threading
import time

import pytest

from distillguard.store import StoreError, StoreUnavailable, open_store
from distillguard.store.sql import SqlStore, parse_secret

# --- keys ---------------------------------------------------------------------------------------


def test_key_lifecycle(store):
    record, secret = store.create_key("acme", "standard")
    assert secret.startswith(f"dg-{record.key_id}-")
    assert len(secret.split("-", 2)[2]) >= 32
    assert store.get_account("acme").tier == "standard"  # created with the key

    ok = store.authenticate(secret)
    assert ok is not None and ok.key_id == record.key_id and ok.account == "acme" and not ok.revoked

    revoked = store.revoke_key(record.key_id)
    assert revoked.revoked and revoked.revoked_at is not None
    again = store.authenticate(secret)
    assert again is not None and again.revoked  # caller answers "revoked", not "invalid"

    # same key id, different random part: not this key
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert store.authenticate(wrong) is None
    assert store.authenticate("dg-key_000000000000-" + "x" * 40) is None  # unknown key id


@pytest.mark.parametrize("bad", ["", "sk-abc", "dg-", "dg-key_abc", "dg-key_abc-short", "xx-key_abc-" + "a" * 40])
def test_malformed_secrets_do_not_authenticate(sqlite_store, bad):
    assert parse_secret(bad) is None
    assert sqlite_store.authenticate(bad) is None


def test_only_salted_hash_is_stored(tmp_path):
    db = tmp_path / "keys.db"
    store = SqlStore(f"sqlite:///{db}")
    secrets = [store.create_key("acme", "trial")[1] for _ in range(3)]
    assert store.authenticate(secrets[0]) is not None
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("keys.db"))
    for secret in secrets:
        random_part = secret.split("-", 2)[2]
        assert secret.encode() not in raw
        assert random_part.encode() not in raw
    # the key id itself is public and must be there, or the test above proves nothing
    assert parse_secret(secrets[0]).encode() in raw


def test_key_for_missing_account_needs_a_tier(store):
    with pytest.raises(StoreError, match="unknown account"):
        store.create_key("ghost")
    store.create_account("acme", "verified")
    rec, _ = store.create_key("acme")
    assert rec.tier == "verified"  # the account's tier by default
    rec2, _ = store.create_key("acme", "trial")
    assert rec2.tier == "trial"
    assert [k.key_id for k in store.list_keys("acme")] == [rec.key_id, rec2.key_id]
    assert store.list_keys("nobody") == []


def test_revoke_unknown_and_twice(store):
    with pytest.raises(StoreError, match="unknown key id"):
        store.revoke_key("key_ffffffffffff")
    rec, _ = store.create_key("acme", "standard")
    first = store.revoke_key(rec.key_id).revoked_at
    time.sleep(0.01)
    assert store.revoke_key(rec.key_id).revoked_at == first


# --- accounts -----------------------------------------------------------------------------------


def test_accounts_create_update_flags(store):
    acc = store.create_account("acme", "trial")
    assert acc.flags == {} and acc.created_at > 0
    with pytest.raises(StoreError, match="already exists"):
        store.create_account("acme", "trial")
    with pytest.raises(StoreError, match="invalid account"):
        store.create_account(" padded ", "trial")
    store.update_account("acme", flags={"risk": 0.8, "evidence": ["burst"], "verified": True})
    acc = store.update_account("acme", tier="verified", flags={"verified": None, "cluster": "c1"})
    assert acc.tier == "verified"
    assert acc.flags == {"risk": 0.8, "evidence": ["burst"], "cluster": "c1"}
    assert store.get_account("acme").flags == acc.flags  # persisted, not just returned
    with pytest.raises(StoreError, match="unknown account"):
        store.update_account("ghost", tier="trial")
    store.create_account("beta", "standard")
    assert [a.name for a in store.list_accounts()] == ["acme", "beta"]


def test_concurrent_flag_merges_lose_nothing(store):
    store.create_account("acme", "standard")

    def setter(i: int) -> None:
        store.update_account("acme", flags={f"f{i}": i})

    threads = [threading.Thread(target=setter, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_account("acme").flags == {f"f{i}": i for i in range(8)}


# --- events -------------------------------------------------------------------------------------


def test_events_round_trip(store, make_event):
    events = [make_event(i, account="acme" if i % 2 else "beta") for i in range(10)]
    events.append(make_event(99, ts=events[0].ts - 5, ip=None, decision=None, response=None))  # earliest
    events[3].request["messages"][0]["content"] = "nul \x00 and emoji 🦜 survive"
    store.write_events(events[:6])
    store.write_events(events[6:])
    got = list(store.iter_events())
    assert len(got) == 11 == store.count_events()
    assert [e.ts for e in got] == sorted(e.ts for e in events)
    by_id = {e.id: e for e in got}
    assert all(e.id and e.id.startswith("ev_") for e in got)  # ids assigned on write
    for original in events:
        stored = next(e for e in got if e.ts == original.ts)
        assert stored.model_dump(exclude={"id"}) == original.model_dump(exclude={"id"})
    assert len(by_id) == 11

    beta = list(store.iter_events(account="beta"))
    assert {e.account for e in beta} == {"beta"} and len(beta) == 5 == store.count_events("beta")
    since = events[5].ts
    assert [e.ts for e in store.iter_events(since=since)] == [e.ts for e in got if e.ts >= since]
    assert list(store.iter_events(since=since, account="acme")) == [e for e in got if e.ts >= since and e.account == "acme"]


def test_rewriting_an_event_id_is_ignored(store, make_event):
    a = make_event(1, id="ev_fixed")
    store.write_events([a, make_event(2)])
    store.write_events([a.model_copy(update={"status": 500}), make_event(3)])  # a retried batch
    got = list(store.iter_events())
    assert len(got) == 3
    assert next(e for e in got if e.id == "ev_fixed").status == 200


def test_equal_timestamps_keep_insertion_order(store, make_event):
    events = [make_event(i, ts=1000.0, id=f"ev_{9 - i}") for i in range(5)]
    store.write_events(events)
    assert [e.id for e in store.iter_events()] == [e.id for e in events]


def test_many_events_stream(sqlite_store, make_event):
    n = 3000  # more than one yield_per chunk
    sqlite_store.write_events([make_event(i) for i in range(n)])
    count = 0
    last = float("-inf")
    for ev in sqlite_store.iter_events():
        assert ev.ts >= last
        last = ev.ts
        count += 1
    assert count == n


# --- SQLite sharing and failures ----------------------------------------------------------------


def test_sqlite_wal_lets_a_second_process_read_while_writing(sqlite_url, make_event):
    server, cli = SqlStore(sqlite_url), SqlStore(sqlite_url)
    try:
        with server.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        server.write_events([make_event(i) for i in range(2000)])
        stop = threading.Event()
        errors: list[BaseException] = []

        def keep_writing() -> None:
            i = 10_000
            try:
                while not stop.is_set():
                    server.write_events([make_event(i + j) for j in range(50)])
                    i += 50
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=keep_writing)
        t.start()
        try:
            for _ in range(3):
                assert sum(1 for _ in cli.iter_events()) >= 2000
                cli.create_key("acme", "standard")  # the CLI writes too
        finally:
            stop.set()
            t.join()
        assert not errors
    finally:
        server.close()
        cli.close()


def test_unreachable_database_is_store_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
        open_store("postgresql+psycopg://127.0.0.1:1/test")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailable):
        open_store(f"sqlite:///{tmp_path / 'file' / 'sub.db'}")  # parent is a file
    with pytest.raises(StoreUnavailable, match="not a valid"):
        open_store("not a url")


def test_in_memory_sqlite_is_shared_across_threads(make_event):
    store = open_store("sqlite://")
    t = threading.Thread(target=store.write_events, args=([make_event(1)],))
    t.start()
    t.join()
    assert store.count_events() == 1



def test_events_built_without_validation_are_stored(store, make_event):
    """The gateway builds events with model_construct (no validation cost on the request path)."""
    from distillguard.events import Decision, ExchangeEvent, ResponseSummary

    response = ResponseSummary(text="hi", finish_reason="stop", prompt_tokens=3, completion_tokens=1)
    response.error = {"type": "server_error"}  # extra field, allowed by the model
    ev = ExchangeEvent.model_construct(
        id="ev_c1", ts=5.0, account="acme", key="key_0123456789ab", ip="127.0.0.1", user_agent="t",
        endpoint="/v1/completions", request={"prompt": "x"}, response=response, status=502,
        latency_ms=1.5, decision=Decision(action="throttle", reasons=["rpm"]),
    )
    store.write_events([ev])
    (got,) = store.iter_events()
    assert got.status == 502 and got.decision.action == "throttle" and got.response.text == "hi"
    assert got.response.model_extra == {"error": {"type": "server_error"}}
    bad = ExchangeEvent.model_construct(id="ev_bad", ts=6.0, account="acme", request={}, decision=object())
    with pytest.raises(StoreError):
        store.write_events([bad])
