"""Where the gateway's CPU goes: CPU time per request of the gateway process with three engines.

  fake         the tests' in-process FakeEngine: auth + validation + policy + limits + logging +
               HTTP serving, and nothing else (the gateway's own cost)
  openai       OpenAIUpstreamEngine -> stub upstream, as shipped (aiohttp ClientSession pool)
  openai-httpx the same engine on httpx's default pool (httpx.AsyncHTTPTransport()), which is
               what the engine shipped before it moved to aiohttp
  openai-httpx-tuned  httpx with every pooled connection kept alive (max_keepalive = max
               connections = 100) and HTTP/1.1 only: the best plain httpx can do here
  openai-lean  the engine given a minimal keep-alive HTTP/1.1 transport (defined below;
               an experiment, not product code): a floor for any HTTP client

CPU time (user + system of this process, getrusage) is measured rather than latency, so the
numbers hold on a machine shared with other work. Load: a closed loop of --concurrency workers
in a separate process (bench/gateway_overhead.py's client) for --seconds.

    .venv/bin/python bench/gateway_cpu_split.py [--concurrency 8,64] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from gateway_overhead import free_port, machine  # noqa: E402


class LeanTransport(httpx.AsyncBaseTransport):
    """Experiment: persistent HTTP/1.1 connections over asyncio streams; Content-Length bodies only."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[Any]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = (request.url.host, request.url.port or 80)
        pool = self.idle.setdefault(key, [])
        reader, writer = pool.pop() if pool else await asyncio.open_connection(*key)
        body = await request.aread()
        head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
        head += "".join(f"{k.decode()}: {v.decode()}\r\n" for k, v in request.headers.raw) + "\r\n"
        writer.write(head.encode() + body)
        raw = await reader.readuntil(b"\r\n\r\n")
        headers, length = [], 0
        for line in raw.split(b"\r\n")[1:]:
            if line:
                k, _, v = line.partition(b":")
                headers.append((k, v.strip()))
                if k.lower() == b"content-length":
                    length = int(v)
        content = await reader.readexactly(length)
        pool.append((reader, writer))
        return httpx.Response(int(raw[9:12]), headers=headers, content=content)


def run(mode: str, concurrency: int, seconds: float, stub_url: str) -> dict[str, Any]:
    import uvicorn

    from distillguard.config import Settings, TierLimits
    from distillguard.engines.openai_upstream import OpenAIUpstreamEngine
    from distillguard.gateway.app import create_app
    from distillguard.store import open_store

    tmp = tempfile.mkdtemp(prefix="dg-cpu-")
    s = Settings()
    s.store.url = f"sqlite:///{tmp}/g.db"
    s.limits.tiers["bench"] = TierLimits(key_rpm=10**7, key_tpm=10**9, account_rpm=10**7, account_tpm=10**9, max_tokens=64)
    store = open_store(s.store.url)
    _, secret = store.create_key("bench", "bench")
    if mode == "fake":
        sys.path.insert(0, str(ROOT))
        from tests.gateway.fakes import FakeEngine

        engine: Any = FakeEngine()
    else:
        transports: dict[str, Any] = {
            "openai": lambda: None,
            "openai-httpx": lambda: httpx.AsyncHTTPTransport(),
            "openai-httpx-tuned": lambda: httpx.AsyncHTTPTransport(
                http1=True, http2=False,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=15)),
            "openai-lean": LeanTransport,
        }
        engine = OpenAIUpstreamEngine(stub_url, model="stub", model_name="smollm2", transport=transports[mode]())
    app = create_app(s, engine=engine, store=store)
    port = free_port()
    client = (
        "import asyncio, json, sys, time\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import gateway_overhead as g\n"
        "import uvloop; uvloop.install()\n"
        f"t = g.Target('gw', 'http://127.0.0.1:{port}/v1', {secret!r})\n"
        f"asyncio.run(g.open_loop(t, 50, 1.0, warmup=0.0))\n"  # warm-up
        "print('GO', flush=True)\n"
        f"print(json.dumps(asyncio.run(g.closed_loop(t, {concurrency}, {seconds}))), flush=True)\n"
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    proc = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "GO"
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    load = json.loads(proc.stdout.readline())
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    proc.wait()
    server.should_exit = True
    thread.join(30)
    if mode != "fake":
        asyncio.run(engine.aclose())  # the engine was passed in, so the app does not close it
    store.close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"mode": mode, "concurrency": concurrency, "requests": load["requests"], "errors": load["errors"],
            "rps": load["rps"], "gateway_cpu_ms_per_request": round(cpu * 1000 / max(load["requests"], 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="8,64")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--modes", default="fake,openai,openai-httpx,openai-httpx-tuned,openai-lean")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway_cpu_split.json")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "distillguard.gateway.stub", "--port", str(port)])
    try:
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        rows = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            for mode in args.modes.split(","):
                row = run(mode, c, args.seconds, f"http://127.0.0.1:{port}/v1")
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stub.terminate()
    result = {
        "benchmark": "gateway_cpu_split",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "note": "CPU ms per request of the gateway process (auth + limits + logging on); "
                "1000 / cpu_ms is the request rate one core could sustain",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
