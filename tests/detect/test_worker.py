import time

from distillguard.detect.embed import HashingEmbedder
from distillguard.detect.online import DetectionWorker, OnlineDetector, store_flags_callback
from distillguard.events import ExchangeEvent
from distillguard.store.base import Account


class FakeSubscription:
    def __init__(self, events):
        self.events = list(events)

    def get_batch(self, max_events=256, timeout_s=0.5):
        if not self.events:
            time.sleep(0.01)
            return []
        out, self.events = self.events[:max_events], self.events[max_events:]
        return out


class FakeStore:
    def __init__(self, names):
        self.accounts = {n: Account(n, "standard", 0.0, {"verified": True}) for n in names}

    def get_account(self, name):
        return self.accounts.get(name)

    def update_account(self, name, *, tier=None, flags=None):
        self.accounts[name].flags = flags
        return self.accounts[name]


def test_worker_consumes_bus_and_pushes_risk_into_account_flags(small_traffic):
    raw, labels = small_traffic
    events = [ExchangeEvent.model_validate(e) for e in raw[:2000]]
    names = sorted({e.account for e in events})
    store = FakeStore(names[:-1])  # one account unknown to the store: skipped, not an error
    det = OnlineDetector(embedder=HashingEmbedder(), threshold=0.8)
    w = DetectionWorker(det, FakeSubscription(events), on_update=store_flags_callback(store), batch=300)
    w.start()
    deadline = time.time() + 60
    while w.processed < len(events) and time.time() < deadline:
        time.sleep(0.05)
    w.stop()
    assert w.processed == len(events) and w.errors == 0
    flags = store.accounts[names[0]].flags
    assert {"risk", "evidence", "cluster", "verified"} <= set(flags)
    assert 0 <= flags["risk"] <= 1


def test_idle_worker_relinks_thin_live_traffic(small_traffic):
    raw, labels = small_traffic
    hydra = [ExchangeEvent.model_validate(e) for e in raw if labels[e["account"]]["group"]]
    det = OnlineDetector(embedder=HashingEmbedder(), threshold=0.8)
    assert len(hydra) < det.config.link_every_events  # too few events to trigger the periodic relink
    w = DetectionWorker(det, FakeSubscription(hydra), batch=100, timeout_s=0.05, relink_idle_s=0.2)
    w.start()
    deadline = time.time() + 60
    while not det.clusters() and time.time() < deadline:
        time.sleep(0.05)
    w.stop()
    assert det.clusters(), "the idle worker should have linked the hydra"
