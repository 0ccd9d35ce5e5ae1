"""Start `distillguard serve` for the arena: config file, keys, watermark key, a free port."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from distillguard.arena.scenario import Scenario


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, body in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None]
        out.append("")
    return "\n".join(out)


@dataclass
class ArenaServer:
    url: str  # http://127.0.0.1:PORT
    admin_token: str
    arena_secret: str
    store_url: str
    watermark_key: str
    model_path: Path | None
    config_path: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    def admin(self, path: str, method: str = "GET", **kw: Any) -> Any:
        r = httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def watermark_config(self) -> Any:
        """The served watermark settings, read back from the server's config file."""
        import tomllib

        from distillguard.watermark.config import WatermarkConfig

        return WatermarkConfig.model_validate(tomllib.loads(self.config_path.read_text())["watermark"])

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM: the gateway finishes in-flight requests and writes every event to the store."""
        p = self.proc
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(10)


def write_config(sc: Scenario, out: Path, model_path: Path | None) -> ArenaServer:
    port = free_port()
    admin_token = secrets.token_hex(16)
    arena_secret = secrets.token_hex(16)
    from distillguard.watermark.config import WatermarkConfig
    from distillguard.watermark.keys import new_secret

    wm_key = new_secret()
    key_file = out / "watermark.key"
    key_file.write_text(wm_key + "\n")
    key_file.chmod(0o600)
    # every run starts from an empty store: an earlier run's accounts, risk flags and events in the
    # same DIR would otherwise leak into this one (flagged accounts refused at their first request,
    # old events counted in the new metrics)
    db = (out / "arena.db").resolve()
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    store_url = f"sqlite:///{db}"
    engine: dict[str, Any] = {"kind": "llamacpp" if sc.model == "smollm2" else "hf", "model_name": "smollm2",
                              "n_ctx": 2048, "n_threads": sc.engine_threads}
    if model_path is not None:
        engine["model_path"] = str(model_path)
    std = sc.standard_rpm
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port, "admin_token": admin_token, "arena_secret": arena_secret,
                   "shutdown_grace_s": 20.0},
        "engine": engine,
        "limits": {"default_tier": "standard"},
        "limits.tiers.standard": {"key_rpm": std, "key_tpm": std * 2000, "account_rpm": std * 2,
                                  "account_tpm": std * 4000, "max_tokens": 2048},
        "limits.tiers.trial": {"key_rpm": 20, "key_tpm": 20000, "account_rpm": 20, "account_tpm": 20000, "max_tokens": 512},
        "limits.tiers.verified": {"key_rpm": 600, "key_tpm": 1000000, "account_rpm": 1200, "account_tpm": 2000000,
                                  "max_tokens": 4096},
        "store": {"url": store_url, "flush_interval_s": 0.2},
        "detect": {"enabled": True, "embeddings": sc.embeddings, "link_every_events": sc.link_every_events,
                   "link_min_requests": 4, "default_threshold": sc.detect_threshold or 0.9},
        # the scheme is written out so the server and the arena's own detection and audit read
        # the very same settings from this file (see ArenaServer.watermark_config)
        "watermark": {"enabled": True, "key_env": "DISTILLGUARD_WATERMARK_KEY", "scheme": WatermarkConfig().scheme},
        "policy": {"enabled": True},
    }
    cfg = out / "server.toml"
    cfg.write_text("# written by `distillguard arena run`; the watermark key is passed in the environment\n"
                   + to_toml(tables))
    return ArenaServer(url=f"http://127.0.0.1:{port}", admin_token=admin_token, arena_secret=arena_secret,
                       store_url=store_url, watermark_key=wm_key, model_path=model_path, config_path=cfg,
                       log_path=out / "server.log")


def start(server: ArenaServer, probe_key: str, timeout_s: float = 300.0) -> None:
    env = dict(os.environ, DISTILLGUARD_WATERMARK_KEY=server.watermark_key, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(server.log_path, "w")
    server.proc = subprocess.Popen([sys.executable, "-m", "distillguard.cli", "serve", "--config", str(server.config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.proc.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-800:]
            raise RuntimeError(f"the gateway exited with code {server.proc.returncode}; its log ends:\n{tail}")
        try:
            r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {probe_key}"}, timeout=5)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the gateway did not answer within {timeout_s:.0f} s; see {server.log_path}")
