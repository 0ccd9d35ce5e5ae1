"""Start the LiteLLM proxy (one worker, no database) in front of an OpenAI-compatible upstream,
for side-by-side gateway benchmarks. It runs from its own virtualenv, `.bench-venv`
(`make bench-setup`), so its pinned dependencies never mix with DistillGuard's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LITELLM = ROOT / ".bench-venv" / "bin" / "litellm"
MASTER_KEY = "sk-bench-litellm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def litellm_version() -> str | None:
    if not LITELLM.exists():
        return None
    out = subprocess.run([str(LITELLM), "--version"], capture_output=True, text=True,
                         env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    if out.returncode != 0:
        return None
    # prints e.g. "LiteLLM: Current Version = 1.106.2"
    last = (out.stdout + out.stderr).strip().splitlines()[-1]
    return last.rsplit("=", 1)[-1].strip()


@contextmanager
def litellm_proxy(upstream_base_url: str, model: str = "smollm2", startup_timeout_s: float = 120.0):
    """Yield (base_url, api_key) of a running LiteLLM proxy that forwards `model` to the upstream."""
    if not LITELLM.exists():
        raise RuntimeError("LiteLLM is not installed: run `make bench-setup` first")
    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream_base_url}\n"
        "      api_key: stub\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  set_verbose: false\n"
    )
    cfg.close()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "DISABLE_SCHEMA_UPDATE": "True"}
    env.pop("DATABASE_URL", None)
    log = open(tempfile.NamedTemporaryFile(suffix=".litellm.log", delete=False).name, "w")
    proc = subprocess.Popen(
        [str(LITELLM), "--config", cfg.name, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"LiteLLM exited with {proc.returncode}; log: {log.name}")
            try:
                r = httpx.get(f"{base}/health/liveliness", timeout=1.0)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"LiteLLM did not start in {startup_timeout_s}s; log: {log.name}")
            time.sleep(0.5)
        yield f"{base}/v1", MASTER_KEY
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(cfg.name)
