"""`distillguard serve` as a real process: start-up, and SIGTERM under load loses no logged exchange."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from distillguard.gateway.stub import make_stub_app

from .conftest import ADMIN_TOKEN, free_port, live_server

CLI = [sys.executable, "-m", "distillguard.cli"]


def _config(tmp_path: Path, upstream: str, port: int) -> Path:
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
admin_token = "{ADMIN_TOKEN}"
shutdown_grace_s = 20

[engine]
kind = "openai"
model_name = "smollm2"
upstream_url = "{upstream}/v1"
upstream_model = "stub"

[store]
url = "sqlite:///{tmp_path}/serve.db"
flush_interval_s = 0.5
"""
    )
    return cfg


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not come up")


def test_sigterm_under_load_keeps_every_served_exchange(tmp_path: Path) -> None:
    from distillguard.store import open_store

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with live_server(make_stub_app(delay_s=0.25)) as stub:
        cfg = _config(tmp_path, stub, port)
        store = open_store(f"sqlite:///{tmp_path}/serve.db")
        _, secret = store.create_key("acme", "verified")
        store.close()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            _wait_up(url, proc)
            served: list[tuple[str, float]] = []  # (response id, time it completed)
            lock = threading.Lock()
            stop = threading.Event()

            def worker(w: int) -> None:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as c:
                    i = 0
                    while not stop.is_set():
                        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"marker w{w} r{i}"}], "max_tokens": 8}
                        try:
                            r = c.post("/v1/chat/completions", json=body)
                        except httpx.HTTPError:
                            return  # the server stopped accepting
                        if r.status_code == 200:
                            with lock:
                                served.append((r.json()["id"], time.time()))
                        i += 1

            threads = [threading.Thread(target=worker, args=(w,)) for w in range(12)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            sigterm_at = time.time()
            proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(30)
            stop.set()
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "serving model 'smollm2'" in out
    after = [s for s in served if s[1] >= sigterm_at]
    assert after, "no request was in flight at SIGTERM; the test proves nothing"
    store = open_store(f"sqlite:///{tmp_path}/serve.db")
    logged = {ev.id for ev in store.iter_events() if ev.status == 200}
    store.close()
    missing = [rid for rid, _ in served if "ev_" + rid.removeprefix("chatcmpl-") not in logged]
    assert not missing, f"{len(missing)} of {len(served)} served exchanges are not in the log"


def test_serve_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[engine]\nkind = "openai"\n')
    r = subprocess.run([*CLI, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "upstream_url is not set" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*CLI, "serve", "--config", str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: config file") and len(r.stderr.strip().splitlines()) == 1
