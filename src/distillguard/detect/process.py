"""Run the online detector in a child process, fed from the gateway's event bus.

Embedding prompts and scoring accounts is CPU work in Python and torch; inside the gateway's
process it competes with request handling for the GIL and the cores (measured: about 6 ms of CPU
per request at 50 req/s, enough to push the gateway's p99 latency up). Here the gateway's only
job is a pump thread that moves event batches from its bus subscription into a pipe; the child
owns the detector, scores, and writes risk, evidence and cluster into the store's account flags,
where the policy's RiskBoard (refreshed every couple of seconds) and `accounts show` read them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
from typing import Any

from distillguard.events import ExchangeEvent

log = logging.getLogger(__name__)

_STOP = None  # sentinel on the pipe: the gateway is shutting down


class DetectionProcess:
    """``start()`` spawns the child and the pump; ``stop()`` drains what was pumped and joins."""

    def __init__(self, settings: Any, subscription: Any, *, max_batches_queued: int = 1024) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent has threads and an event loop
        self._queue = ctx.Queue(maxsize=max_batches_queued)
        self._process = ctx.Process(
            target=_child_main, args=(settings.model_dump(mode="json"), self._queue),
            name="distillguard-detect", daemon=True,
        )
        self._subscription = subscription
        self._halt = threading.Event()
        self._pump = threading.Thread(target=self._run_pump, name="distillguard-detect-pump", daemon=True)
        self.dropped = 0

    def start(self) -> None:
        self._process.start()
        self._pump.start()

    def _run_pump(self) -> None:
        while not self._halt.is_set():
            try:
                batch = self._subscription.get_batch(256, 0.25)
                if not batch:
                    continue
                lines = [ev.to_json() for ev in batch]
                try:
                    self._queue.put(lines, timeout=1.0)
                except queue.Full:  # the detector fell far behind: never block the gateway
                    self.dropped += len(lines)
                    log.warning("detection process is behind; dropped %d events (%d in all)", len(lines), self.dropped)
            except Exception:  # noqa: BLE001 - the pump must outlive one bad batch
                log.exception("detection pump failed on a batch")

    def stop(self, timeout_s: float = 10.0) -> None:
        self._halt.set()
        self._pump.join(timeout_s)
        if self._process.is_alive():
            try:
                self._queue.put(_STOP, timeout=1.0)
            except queue.Full:
                pass
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(2.0)

    @property
    def alive(self) -> bool:
        return self._process.is_alive()


class _QueueSubscription:
    """A store.base.Subscription over the pipe from the gateway (used inside the child)."""

    def __init__(self, q: Any) -> None:
        self.q = q
        self.closed = False

    def get_batch(self, max_events: int = 256, timeout_s: float = 0.5) -> list[ExchangeEvent]:
        try:
            lines = self.q.get(timeout=timeout_s)
        except queue.Empty:
            return []
        if lines is _STOP:
            self.closed = True
            return []
        return [ExchangeEvent.model_validate_json(line) for line in lines]


def _child_main(settings_dict: dict[str, Any], q: Any) -> None:
    from distillguard.config import Settings
    from distillguard.detect.online import DetectionWorker, build_detector, store_flags_callback
    from distillguard.store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**settings_dict)
    store = open_store(settings.store.url)
    detector = build_detector(settings.detect)
    sub = _QueueSubscription(q)
    worker = DetectionWorker(detector, sub, on_update=store_flags_callback(store), relink_idle_s=5.0)
    # run the worker loop in this (the child's main) thread until the gateway says stop
    stopper = threading.Thread(target=_stop_when_closed, args=(sub, worker), daemon=True)
    stopper.start()
    try:
        worker.run()
    finally:
        store.close()


def _stop_when_closed(sub: _QueueSubscription, worker: Any) -> None:
    """Stop the worker when the gateway says so, or when the gateway is gone without a word (killed,
    crashed): an orphaned detector would otherwise run on, holding the store and a core."""
    import time

    parent = mp.parent_process()
    while not sub.closed:
        if parent is not None and not parent.is_alive():
            log.warning("the gateway process is gone; detection stops")
            break
        time.sleep(0.1)
    worker.stop(join_timeout=None)  # not started as a thread: this only tells run() to return
