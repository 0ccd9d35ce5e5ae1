"""Gateway overhead: what DistillGuard adds in front of an upstream that answers instantly.

Set-up (every server in its own process):
  stub     python -m distillguard.gateway.stub  (canned OpenAI-compatible answers, raw ASGI)
  gateway  distillguard serve, engine kind "openai" -> stub, with auth, rate limits (memory) and
           the exchange log (SQLite file, batched writer) all on
  litellm  (--litellm) the LiteLLM proxy, one worker, no database, -> the same stub
  extra    (--target NAME=URL[,KEY]) any other OpenAI-compatible endpoint in front of the stub

Load: an open-loop generator (requests start on a fixed schedule whatever the answers do, and
latency is measured from the scheduled start, so a slow server cannot hide its queueing) over
persistent HTTP/1.1 connections, with a minimal asyncio client so the client costs little CPU.
For each rate, every target is measured in turn; "added" latency = target percentile minus the
direct-to-stub percentile at the same rate. Then the maximum requests/s of each target with a
closed loop of --concurrency workers.

    .venv/bin/python bench/gateway_overhead.py                      # ~2 minutes
    .venv/bin/python bench/gateway_overhead.py --litellm            # + LiteLLM side by side
    .venv/bin/python bench/gateway_overhead.py --rates 50,200 --duration 5 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}


@dataclass
class Target:
    name: str
    base_url: str  # ending in /v1
    api_key: str | None = None
    pid: int | None = None  # the server process, to measure its CPU time per request


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc), robust to other load on the machine."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_request(pid: int | None, before: float | None, n: int) -> float | None:
    after = cpu_seconds(pid)
    if before is None or after is None or n == 0:
        return None
    return round((after - before) * 1000.0 / n, 3)


# ---- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}; log: {log}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up; log: {log}")


@contextmanager
def process(cmd: list[str], probe: str, workdir: Path, name: str):
    log = workdir / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_http(probe, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def stub_server(workdir: Path):
    port = free_port()
    with process([PY, "-m", "distillguard.gateway.stub", "--port", str(port)], f"http://127.0.0.1:{port}/v1/models", workdir, "stub") as proc:
        yield f"http://127.0.0.1:{port}/v1", proc.pid


@contextmanager
def distillguard_gateway(upstream: str, workdir: Path):
    """`distillguard serve` in front of ``upstream`` with auth, limits and logging on."""
    from distillguard.store import open_store

    db = workdir / "gateway.db"
    store = open_store(f"sqlite:///{db}")
    _, secret = store.create_key("bench", "bench")
    store.close()
    port = free_port()
    cfg = workdir / "gateway.toml"
    cfg.write_text(
        f"""
[server]
port = {port}
[engine]
kind = "openai"
model_name = "smollm2"
upstream_url = "{upstream}"
upstream_model = "stub"
[store]
url = "sqlite:///{db}"
[limits]
storage_url = "memory://"
[limits.tiers.bench]
key_rpm = 10000000
key_tpm = 1000000000
account_rpm = 10000000
account_tpm = 1000000000
max_tokens = 64
"""
    )
    with process([PY, "-m", "distillguard.cli", "serve", "--config", str(cfg)], f"http://127.0.0.1:{port}/health", workdir, "gateway") as proc:
        yield f"http://127.0.0.1:{port}/v1", secret, db, proc.pid


# ---- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------


class Pool:
    """Persistent connections to one host; POSTs one fixed JSON body to one path."""

    def __init__(self, target: Target, body: dict[str, Any]) -> None:
        u = urlsplit(target.base_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        payload = json.dumps(body).encode()
        auth = f"Authorization: Bearer {target.api_key}\r\n" if target.api_key else ""
        self.request = (
            f"POST {u.path.rstrip('/')}/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"User-Agent: distillguard-bench\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self) -> int:
        if self.idle:
            try:
                return await self._post(self.idle.pop())
            except (OSError, asyncio.IncompleteReadError):
                pass  # the server closed this idle connection (keep-alive timeout): a new one
        return await self._post(await asyncio.open_connection(self.host, self.port))

    async def _post(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        reader, writer = conn
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        self.idle.append(conn)
        return status

    def close(self) -> None:
        for _, w in self.idle:
            w.close()
        self.idle.clear()


def pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[i]


async def open_loop(target: Target, rate: float, duration: float, warmup: float = 1.0) -> dict[str, Any]:
    """Start requests at ``rate``/s for ``duration`` s (after ``warmup`` s not counted)."""
    pool = Pool(target, BODY)
    latencies: list[float] = []
    errors: dict[int, int] = {}  # status (0: connection error) -> count
    tasks = []

    async def one(scheduled: float, counted: bool) -> None:
        try:
            status = await pool.post()
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        if counted:
            if status == 200:
                latencies.append((time.perf_counter() - scheduled) * 1000.0)
            else:
                errors[status] = errors.get(status, 0) + 1

    # time.perf_counter, not loop.time(): uvloop's clock has millisecond resolution
    total = int((warmup + duration) * rate)
    cpu0: float | None = None
    t0 = time.perf_counter() + 0.05
    for i in range(total):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        if i == int(warmup * rate):
            cpu0 = cpu_seconds(target.pid)
        tasks.append(asyncio.ensure_future(one(at, i >= warmup * rate)))
    await asyncio.gather(*tasks)
    n_counted = total - int(warmup * rate)
    wall = time.perf_counter() - t0
    pool.close()
    lat = sorted(latencies)
    return {
        "rate": rate,
        "requests": len(lat) + sum(errors.values()),
        "errors": errors,
        "p50_ms": round(pct(lat, 0.50), 3),
        "p90_ms": round(pct(lat, 0.90), 3),
        "p99_ms": round(pct(lat, 0.99), 3),
        "max_ms": round(lat[-1], 3) if lat else None,
        "mean_ms": round(sum(lat) / len(lat), 3) if lat else None,
        "wall_s": round(wall, 2),
        "server_cpu_ms_per_request": cpu_ms_per_request(target.pid, cpu0, n_counted),
    }


async def closed_loop(target: Target, concurrency: int, duration: float) -> dict[str, Any]:
    """Maximum throughput: ``concurrency`` workers, each sending its next request on an answer."""
    pool = Pool(target, BODY)
    done = errors = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + duration

    async def worker() -> None:
        nonlocal done, errors
        while loop.time() < end:
            try:
                ok = await pool.post() == 200
            except (OSError, asyncio.IncompleteReadError):
                ok = False
            done += ok
            errors += not ok

    t = loop.time()
    cpu0 = cpu_seconds(target.pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = loop.time() - t
    pool.close()
    return {"concurrency": concurrency, "requests": done, "errors": errors, "rps": round(done / wall, 1),
            "server_cpu_ms_per_request": cpu_ms_per_request(target.pid, cpu0, done + errors)}


# ---- the run -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def ver(p: str) -> str | None:
        try:
            return importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": ver("torch"),
        "uvicorn": ver("uvicorn"),
        "uvloop": ver("uvloop"),
        "httptools": ver("httptools"),
        "fastapi": ver("fastapi"),
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="DistillGuard gateway overhead against an instant stub upstream.")
    ap.add_argument("--rates", default="50,100,200,400", help="open-loop request rates (req/s), comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per rate and target")
    ap.add_argument("--concurrency", type=int, default=64, help="closed-loop workers for the max-throughput run")
    ap.add_argument("--max-duration", type=float, default=8.0, help="seconds of the max-throughput run")
    ap.add_argument("--litellm", action="store_true", help="also measure the LiteLLM proxy (needs .bench-venv)")
    ap.add_argument("--target", action="append", default=[], metavar="NAME=URL[,KEY]",
                    help="another OpenAI-compatible endpoint (base URL ending in /v1) in front of the stub")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway_overhead.json")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rates = [float(r) for r in args.rates.split(",") if r]

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        workdir = Path(tmp)
        stub, stub_pid = stack.enter_context(stub_server(workdir))
        gw_url, secret, db, gw_pid = stack.enter_context(distillguard_gateway(stub, workdir))
        targets = [Target("direct", stub, pid=stub_pid), Target("distillguard", gw_url, secret, pid=gw_pid)]
        if args.litellm:
            sys.path.insert(0, str(ROOT / "bench"))
            from litellm_target import litellm_proxy, litellm_version

            url, key = stack.enter_context(litellm_proxy(stub, model="smollm2"))
            targets.append(Target("litellm", url, key))
            print(f"litellm version: {litellm_version()}", flush=True)
        for spec in args.target:
            name, _, rest = spec.partition("=")
            url, _, key = rest.partition(",")
            targets.append(Target(name, url, key or None))

        print(f"targets: {', '.join(t.name for t in targets)}", flush=True)
        for t in targets:  # warm up connections, caches, JITs
            asyncio.run(open_loop(t, 50, 1.0, warmup=0.0))

        by_rate: list[dict[str, Any]] = []
        for rate in rates:
            row: dict[str, Any] = {"rate": rate, "targets": {}}
            for t in targets:
                r = asyncio.run(open_loop(t, rate, args.duration))
                row["targets"][t.name] = r
                print(f"{rate:6.0f} req/s  {t.name:14s} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
                      f"server CPU {r['server_cpu_ms_per_request']} ms/req  errors {r['errors']}", flush=True)
            direct = row["targets"]["direct"]
            row["added_ms"] = {
                name: {"p50": round(r["p50_ms"] - direct["p50_ms"], 3), "p99": round(r["p99_ms"] - direct["p99_ms"], 3)}
                for name, r in row["targets"].items()
                if name != "direct"
            }
            by_rate.append(row)

        max_rps: dict[str, Any] = {}
        for t in targets:
            max_rps[t.name] = asyncio.run(closed_loop(t, args.concurrency, args.max_duration))
            m = max_rps[t.name]
            print(f"max  {t.name:14s} {m['rps']:8.1f} req/s  server CPU {m['server_cpu_ms_per_request']} ms/req  (errors {m['errors']})", flush=True)

        for log in sorted(workdir.glob("*.log")):  # anything the servers complained about
            bad = [ln for ln in log.read_text(errors="replace").splitlines() if any(w in ln for w in ("ERROR", "WARNING", "Error"))]
            if bad:
                print(f"{log.name}: {len(bad)} warning/error lines, last ones:", *bad[-10:], sep="\n  ")

        from distillguard.store import open_store

        time.sleep(1.0)  # the writer's last batch
        store = open_store(f"sqlite:///{db}")
        events_logged = store.count_events()
        store.close()

    at200 = next((r for r in by_rate if r["rate"] == 200), None)
    dg = max_rps["distillguard"]["rps"]
    lite = next((v["rps"] for k, v in max_rps.items() if k.startswith("litellm")), None)
    result = {
        "benchmark": "gateway_overhead",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "setup": {
            "request": BODY,
            "gateway": "distillguard serve, engine=openai -> stub, auth + limits (memory://) + exchange log (SQLite) on",
            "duration_s_per_rate": args.duration,
            "latency": "from the scheduled start (open loop), persistent HTTP/1.1 connections",
        },
        "open_loop": by_rate,
        "max_throughput": max_rps,
        "distillguard_events_logged": events_logged,
        "goals": {
            "p99_added_ms_at_200rps": at200["added_ms"]["distillguard"]["p99"] if at200 else None,
            "p99_added_ms_at_200rps_goal": 5.0,
            "max_rps_distillguard": dg,
            "max_rps_litellm": lite,
            "max_rps_ratio_vs_litellm": round(dg / lite, 2) if lite else None,
            "max_rps_ratio_goal": 5.0,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
