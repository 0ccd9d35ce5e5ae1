"""Event buses: the in-process default and Redis Streams (marker `redis`, real server)."""

from __future__ import annotations

import threading
import time

import pytest

from distillguard.store import InProcessBus, RedisBus, StoreUnavailable, build_bus

# --- in process ---------------------------------------------------------------------------------


def test_in_process_fan_out_and_batches(make_event):
    bus = build_bus("memory")
    assert isinstance(bus, InProcessBus)
    worker, audit = bus.subscribe("worker"), bus.subscribe("audit")
    assert bus.subscribe("worker") is worker  # one name, one queue
    for i in range(10):
        bus.publish(make_event(i))
    assert [e.ts for e in worker.get_batch(max_events=4)] == [make_event(i).ts for i in range(4)]
    assert len(worker.get_batch(max_events=100)) == 6
    assert len(audit.get_batch(max_events=100)) == 10
    t0 = time.monotonic()
    assert worker.get_batch(timeout_s=0.1) == []
    assert 0.08 <= time.monotonic() - t0 < 2


def test_in_process_get_batch_wakes_on_publish(make_event):
    bus = InProcessBus()
    sub = bus.subscribe("worker")
    timer = threading.Timer(0.1, bus.publish, args=(make_event(1),))
    timer.start()
    t0 = time.monotonic()
    batch = sub.get_batch(timeout_s=5)
    assert len(batch) == 1 and time.monotonic() - t0 < 2


def test_in_process_full_queue_drops_oldest_and_counts(make_event):
    bus = InProcessBus(max_queue=5)
    sub = bus.subscribe("slow")
    for i in range(12):
        bus.publish(make_event(i))
    assert sub.dropped == 7 and bus.dropped == 7
    assert [e.ts for e in sub.get_batch(100)] == [make_event(i).ts for i in range(7, 12)]


def test_build_bus_rejects_unknown_urls():
    with pytest.raises(ValueError, match="unknown event bus"):
        build_bus("kafka://x")


# --- Redis --------------------------------------------------------------------------------------


@pytest.fixture
def make_bus(redis_url, redis_stream):
    made: list[RedisBus] = []

    def make(**kw) -> RedisBus:
        bus = build_bus(redis_url, stream=redis_stream, **kw)
        assert isinstance(bus, RedisBus)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


@pytest.mark.redis
def test_redis_delivers_in_order_in_batches(make_bus, make_event):
    bus = make_bus()
    sub = bus.subscribe("worker")
    events = [make_event(i) for i in range(20)]
    for i, ev in enumerate(events):
        ev.id = f"ev_{i:03d}"
        bus.publish(ev)
    assert bus.flush(timeout=5)
    got = sub.get_batch(max_events=8, timeout_s=1)
    assert len(got) == 8
    while len(got) < 20:
        batch = sub.get_batch(max_events=8, timeout_s=1)
        assert batch, "events went missing"
        got += batch
    assert got == events  # full round trip through JSON, in publish order
    assert sub.get_batch(timeout_s=0.05) == []


@pytest.mark.redis
def test_redis_groups_fan_out_and_wait_for_events(make_bus, make_event):
    bus = make_bus()
    a, b = bus.subscribe("detect"), bus.subscribe("audit")
    threading.Timer(0.2, bus.publish, args=(make_event(1),)).start()
    t0 = time.monotonic()
    assert len(a.get_batch(timeout_s=5)) == 1
    assert time.monotonic() - t0 < 4
    assert len(b.get_batch(timeout_s=5)) == 1


@pytest.mark.redis
def test_redis_unacked_batch_is_redelivered_after_restart(make_bus, make_event):
    bus = make_bus()
    sub = bus.subscribe("worker", consumer="w1")
    for i in range(5):
        bus.publish(make_event(i))
    bus.flush()
    first = sub.get_batch(timeout_s=1)
    assert len(first) == 5
    # the worker dies before asking for the next batch: nothing was acknowledged
    restarted = make_bus().subscribe("worker", consumer="w1")
    assert restarted.get_batch(timeout_s=1) == first
    assert restarted.get_batch(timeout_s=0.1) == []  # acked by asking again
    assert make_bus().subscribe("worker", consumer="w1").get_batch(timeout_s=0.1) == []


@pytest.mark.redis
def test_redis_stream_is_capped(make_bus, make_event, redis_url, redis_stream):
    import redis

    bus = make_bus(maxlen=100)
    ev = make_event(1)
    for _ in range(2000):
        bus.publish(ev)
    assert bus.flush(timeout=10)
    length = redis.Redis.from_url(redis_url).xlen(redis_stream)
    assert 100 <= length < 1000  # MAXLEN ~ trims whole nodes, so a little over 100


@pytest.mark.redis
def test_redis_outage_buffers_publishes_and_retries(make_bus, make_event):
    import redis

    bus = make_bus()
    sub = bus.subscribe("worker")
    good_client = bus.client
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Redis "down"
    bus.client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    for i in range(50):
        bus.publish(make_event(i))  # must neither raise nor wait
    deadline = time.monotonic() + 5
    while bus.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.failed >= 1 and bus.sent == 0
    bus.client = good_client  # Redis is back
    assert bus.flush(timeout=10)
    got = []
    while batch := sub.get_batch(timeout_s=0.5):
        got += batch
    assert [e.ts for e in got] == [make_event(i).ts for i in range(50)]
    assert bus.dropped == 0


def test_redis_unreachable_is_store_unavailable():
    with pytest.raises(StoreUnavailable, match="unreachable"):
        build_bus("redis://127.0.0.1:1/0")
