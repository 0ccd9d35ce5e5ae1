"""Send the planned traffic to a live gateway with the official `openai` client.

All conversations of all accounts are merged and released in simulated-time order, at most
``concurrency`` in flight; one account's conversations run one after another (a person or a
script waits for its answer). Each request carries its simulated arrival time (arena mode).
Every client honours 429 Retry-After: the simulated clock of that account moves by the full wait,
the real sleep is bounded. An account that gets 403 (blocked or asked to verify) stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillguard.arena.personas import AccountPlan, Conversation

TIME_HEADER = "X-DistillGuard-Time"
SECRET_HEADER = "X-DistillGuard-Arena-Secret"


@dataclass
class Sent:
    """What the client saw for one HTTP request."""

    account: str
    key: int
    ts: float
    status: int
    completion_tokens: int = 0
    text: str = ""
    error: str = ""
    attempt: int = 0
    cover: bool = False


@dataclass
class AccountRun:
    plan: AccountPlan
    secrets: list[str]
    offset: float = 0.0  # simulated seconds added by Retry-After waits
    stopped: str | None = None  # why the account gave up ("403 ...")
    next_key: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    clients: list[Any] = field(default_factory=list)


@dataclass
class TrafficResult:
    sent: list[Sent]
    skipped: dict[str, int]  # account -> planned requests never sent (blocked or out of time)
    seconds: float
    collected: dict[str, list[dict[str, Any]]]  # attacker persona -> its kept (messages, answer) records


async def run_traffic(base_url: str, model: str, arena_secret: str, accounts: list[AccountRun], *, concurrency: int,
                      max_real_sleep_s: float, budget_s: float, progress: Any = None, timeout_s: float = 300.0) -> TrafficResult:
    import openai

    for a in accounts:
        for secret in a.secrets:
            ip = a.plan.ips[len(a.clients) % len(a.plan.ips)]
            a.clients.append(openai.AsyncOpenAI(
                base_url=base_url, api_key=secret, max_retries=0, timeout=timeout_s,
                default_headers={"User-Agent": a.plan.user_agent, "X-Forwarded-For": ip, SECRET_HEADER: arena_secret},
            ))
    schedule = sorted(((c.ts, i, j) for i, a in enumerate(accounts) for j, c in enumerate(a.plan.conversations)))
    sem = asyncio.Semaphore(concurrency)
    sent: list[Sent] = []
    skipped: dict[str, int] = {}
    collected: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    bars = progress
    tasks: dict[str, Any] = {}
    if bars is not None:
        for a in accounts:
            key = a.plan.persona
            if key not in tasks:
                total = sum(x.plan.planned_requests for x in accounts if x.plan.persona == key)
                tasks[key] = bars.add_task(f"{key} ({'attacker' if a.plan.label else 'benign'})", total=total)

    def advance(a: AccountRun, n: int = 1) -> None:
        if bars is not None:
            bars.update(tasks[a.plan.persona], advance=n)

    async def one_request(a: AccountRun, conv: Conversation, messages: list[dict[str, str]], ts: float) -> Sent:
        attempt = 0
        while True:
            k = a.next_key % len(a.clients)
            a.next_key += 1  # key rotation: every request uses the account's next key
            sim = ts + a.offset
            async with sem:
                try:
                    r = await a.clients[k].chat.completions.create(
                        model=model, messages=messages, extra_headers={TIME_HEADER: f"{sim:.3f}"}, **conv.params)
                    text = r.choices[0].message.content or "" if r.choices else ""
                    return Sent(a.plan.name, k, sim, 200, r.usage.completion_tokens if r.usage else 0, text,
                                attempt=attempt, cover=conv.cover)
                except openai.RateLimitError as exc:
                    wait = _retry_after(exc.response)
                    s = Sent(a.plan.name, k, sim, 429, error=str(exc.message)[:200], attempt=attempt, cover=conv.cover)
                except openai.APIStatusError as exc:
                    return Sent(a.plan.name, k, sim, exc.status_code, error=str(exc.message)[:300], attempt=attempt,
                                cover=conv.cover)
                except openai.APIConnectionError as exc:
                    return Sent(a.plan.name, k, sim, 599, error=f"connection: {exc}"[:200], attempt=attempt, cover=conv.cover)
            sent.append(s)  # the 429 itself is a request the gateway logged
            attempt += 1
            if attempt > a.plan.max_retries:
                return Sent(a.plan.name, k, sim, -429, error="gave up after repeated 429", attempt=attempt, cover=conv.cover)
            a.offset += wait  # the simulated clock waits the full Retry-After
            await asyncio.sleep(min(wait, max_real_sleep_s))

    async def run_conversation(a: AccountRun, conv: Conversation) -> None:
        async with a.lock:
            messages: list[dict[str, str]] = [{"role": "system", "content": conv.system}] if conv.system else []
            ts = conv.ts
            for t, turn in enumerate(conv.turns):
                if t:
                    ts += conv.gaps[t - 1]
                if a.stopped or time.perf_counter() - t0 > budget_s:
                    skipped[a.plan.name] = skipped.get(a.plan.name, 0) + len(conv.turns) - t
                    advance(a, len(conv.turns) - t)
                    return
                messages = messages + [{"role": "user", "content": turn}]
                s = await one_request(a, conv, messages, ts)
                if s.status != -429:
                    sent.append(s)
                advance(a)
                if s.status == 403:
                    a.stopped = f"403: {s.error}"
                if s.status != 200:
                    skipped[a.plan.name] = skipped.get(a.plan.name, 0) + len(conv.turns) - t - 1
                    advance(a, len(conv.turns) - t - 1)
                    return
                if a.plan.collect and not conv.cover:
                    collected.setdefault(a.plan.persona, []).append(
                        {"account": a.plan.name, "ts": s.ts, "messages": messages, "response": s.text,
                         "completion_tokens": s.completion_tokens})
                messages = messages + [{"role": "assistant", "content": s.text}]

    pending: set[asyncio.Task] = set()
    for _, i, j in schedule:
        a = accounts[i]
        # keep the release order close to simulated time: at most a few conversations queued ahead
        while len(pending) >= concurrency * 2:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.result()
        pending.add(asyncio.create_task(run_conversation(a, a.plan.conversations[j])))
    if pending:
        for d in (await asyncio.wait(pending))[0]:
            d.result()
    for a in accounts:
        for c in a.clients:
            await c.close()
    return TrafficResult(sent=sent, skipped=skipped, seconds=time.perf_counter() - t0, collected=collected)


def _retry_after(response: Any) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except (TypeError, ValueError):
        return 1.0


def write_client_log(result: TrafficResult, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for s in result.sent:
            fh.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
