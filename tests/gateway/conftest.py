"""Fixtures: a live gateway on loopback (uvicorn in a thread), a SQLite store, keys."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillguard.config import Settings, TierLimits  # noqa: E402

ADMIN_TOKEN = "admin-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yield its base URL (http://127.0.0.1:PORT)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def make_settings(tmp_path: Any, **tiers: TierLimits) -> Settings:
    s = Settings()
    s.store.url = f"sqlite:///{tmp_path}/gw.db"
    s.store.flush_interval_s = 0.05
    s.server.admin_token = ADMIN_TOKEN
    s.server.max_body_bytes = 20_000
    if tiers:
        s.limits.tiers.update(tiers)
    return s


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Any]:
    from distillguard.store import open_store

    st = open_store(settings.store.url)
    yield st
    st.close()


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny random Llama with SmolLM2's tokenizer, behind the real HF engine, served as
    "smollm2" (built once per session; a few seconds)."""
    import torch

    torch.set_num_threads(1)
    from distillguard.engines.hf import HFEngine
    from distillguard.engines.tiny import make_tiny_model

    return HFEngine(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny"), model_name="smollm2")
