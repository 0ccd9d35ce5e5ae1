"""Synthetic API traffic for benchmarks and the arena: benign personas, hard benign cases and
distillation attackers, as spec events (shared/spec/events.md) with simulated timestamps.

Prompts come from the public corpora in ``../shared/datasets`` (each corpus split in two halves by
a hash of the item, so tuning and reporting never share an item); where that folder is absent the
small built-in prompt lists are used. Timing, parameters, IPs and user agents follow simple
behavioural models (people in sessions during their day, apps following their users, scripts on a
clock, orchestrators driving many accounts in lock-step).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DAY = 86_400.0
T0 = 1_763_596_800.0  # 2025-11-20 00:00 UTC

COMMON_UAS = [
    ("OpenAI/Python 1.54.0", 30), ("OpenAI/Python 1.51.2", 12), ("OpenAI/JS 4.67.0", 10),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36", 15),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15", 10),
    ("python-requests/2.32.3", 6), ("langchain-openai/0.2.3", 5), ("curl/8.5.0", 3), ("httpx/0.27.2", 4),
]

# Elicitation wrappers an attacker pipeline uses (fixed per account).
ATTACK_TEMPLATES = [
    "{q}\nLet's think step by step.",
    "Solve the following problem. Show your complete reasoning before giving the final answer.\n\n{q}",
    "Question: {q}\nWrite out your full thought process, then state the answer after '####'.",
    "You are a careful math tutor. Reason through the problem below in detail and explain every step.\n{q}",
    "Problem:\n{q}\n\nThink carefully. Put your step-by-step reasoning inside <think></think> tags, then the final answer.",
]
CODE_TEMPLATES = [
    "Complete the following Python function. Explain your approach step by step before the code.\n\n{q}",
    "{q}\n# Think through the algorithm step by step in comments, then implement it.",
    "Implement this function and walk through your reasoning for each design choice:\n```python\n{q}```",
    "Write a detailed solution with a chain of thought for the task below.\n{q}",
]
# Paraphrased elicitations, written separately from the reasoning classifier's training phrasings
# so the benchmark measures how the classifier generalises.
PARAPHRASES = [
    "Talk me through how you'd crack this one, every little step.",
    "Unpack the logic piece by piece before you commit to an answer.",
    "I want to see the whole derivation, not just the result.",
    "Narrate your problem-solving as you go.",
    "Spell out each inference you make along the way.",
    "Don't skip any steps in the explanation.",
    "Please lay bare the full line of reasoning.",
    "Explain exactly how the answer is obtained, one move at a time.",
    "Give a thorough worked solution.",
    "Show the calculation chain that leads to the answer.",
    "Be explicit about every intermediate result.",
    "Reason it out from first principles and show me how.",
    "Before the answer, write the reasoning you used.",
    "Go slowly and justify each move.",
    "Write your working out in full.",
    "I need the full rationale, step after step.",
]
FRAMINGS = ["{q}", "Problem: {q}", "Here's a question for you: {q}", "Q: {q}", "Can you solve this? {q}",
            "Try this one.\n{q}", "{q}\n", "Homework question: {q}", "Math puzzle - {q}"]
GENERATOR_TEMPLATE = (
    "Come up with {k} new, diverse task instructions for training a language model. Here are examples:\n"
    "1. {a}\n2. {b}\n3. {c}\nWrite each new task with a detailed, high-quality response that explains its reasoning.\n"
    "Domain: {domain}. Difficulty: {level}."
)
DOMAINS = ["mathematics", "programming", "biology", "law", "finance", "history", "chemistry", "writing",
           "physics", "economics", "medicine", "logic puzzles", "geography", "music", "psychology", "statistics"]
LEVELS = ["easy", "medium", "hard", "expert"]
RAG_TEMPLATE = ("Answer the customer's question using only the context below. If the answer is not in the "
                "context, say you don't know.\n\nContext:\n{ctx}\n\nQuestion: {q}\nAnswer:")
TUTOR_SUFFIXES = ["", "", "Can you explain it step by step?", "I don't get how to do this, please show the steps.",
                  "What's the answer?", "Is the answer 12?", "", "Explain please"]
EVAL_COT = "Q: {q}\nA: Let's think step by step."
EVAL_PLAIN = "Question: {q}\nAnswer with only the final number."


# ---------------------------------------------------------------------------------- corpora
def _half(key: str) -> str:
    return "tune" if hashlib.blake2b(key.encode(), digest_size=2).digest()[0] & 1 == 0 else "report"


@dataclass
class Corpora:
    split: str
    nq: list[str] = field(default_factory=list)
    gsm8k: list[str] = field(default_factory=list)
    humaneval: list[str] = field(default_factory=list)
    instructions: list[tuple[str, str, str]] = field(default_factory=list)  # (app, instruction, input)
    chats: list[list[str]] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)
    builtin: bool = False


def default_datasets_dir() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def _jsonl(p: Path) -> Iterator[dict]:
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_corpora(split: str, root: Path | None = None) -> Corpora:
    """One half ("tune" or "report") of every corpus; built-in prompts if the folder is absent."""
    if split not in ("tune", "report"):
        raise ValueError("split must be 'tune' or 'report'")
    root = root or default_datasets_dir()
    c = Corpora(split=split)
    if not (root / "gsm8k_train.jsonl").is_file():
        return _builtin_corpora(split)
    for r in _jsonl(root / "nq_open_dev.jsonl"):
        if _half("nq" + r["question"]) == split:
            c.nq.append(r["question"])
    for r in _jsonl(root / "gsm8k_train.jsonl"):
        if _half("gsm" + r["question"]) == split:
            c.gsm8k.append(r["question"])
    for r in _jsonl(root / "humaneval.jsonl"):
        if _half(r["task_id"]) == split:
            c.humaneval.append(r["prompt"])
    for name in ("self_instruct_user_oriented.jsonl", "self_instruct_seed_tasks.jsonl"):
        for r in _jsonl(root / name):
            if _half(r["id"]) != split:
                continue
            app = r.get("motivation_app") or r.get("name", "tool")
            for inst in r.get("instances", [])[:3]:
                c.instructions.append((app, r["instruction"], inst.get("input", "")))
                if len(inst.get("output", "")) > 120:
                    c.passages.append(inst["output"][:600])
    for name in ("mt_bench_questions.jsonl", "vicuna_bench_questions.jsonl"):
        for r in _jsonl(root / name):
            if _half(f"{name}{r['question_id']}") == split:
                c.chats.append(list(r["turns"]))
    return c


def _builtin_corpora(split: str) -> Corpora:
    from distillguard.detect.reasoning import BASE_QUESTIONS
    from distillguard.detect.reference import builtin_reference_prompts

    ref = builtin_reference_prompts()
    part = [p for p in ref if _half(p) == split] or ref
    maths = [q for q in BASE_QUESTIONS if any(ch.isdigit() for ch in q)]
    return Corpora(split=split, nq=part, gsm8k=maths, humaneval=[q for q in BASE_QUESTIONS if "function" in q or "Python" in q],
                   instructions=[("app", p, "") for p in part], chats=[[p, "Tell me more."] for p in part],
                   passages=part, builtin=True)


# ---------------------------------------------------------------------------------- timing
def human_times(rng: random.Random, n: int, start: float, days: float, tz: float) -> list[float]:
    """People: sessions during their waking day, bursts of requests a minute or two apart."""
    out: list[float] = []
    while len(out) < n:
        day = math.floor(rng.random() * days)
        hour = min(23.9, max(7.0, rng.gauss(14.5, 3.5)))
        t = start + day * DAY + (hour - tz) * 3600 + rng.random() * 600
        for _ in range(min(n - len(out), 1 + int(rng.expovariate(1 / 3)))):
            out.append(t)
            t += rng.expovariate(1 / 100) + 5
    return sorted(out)


def app_times(rng: random.Random, n: int, start: float, days: float, tz: float, night: float = 0.15) -> list[float]:
    """An app serving its users: daytime-heavy Poisson traffic, some from other time zones."""
    out = []
    for _ in range(n):
        day = math.floor(rng.random() * days)
        hour = rng.uniform(0, 24) if rng.random() < night else min(23.99, max(6.0, rng.gauss(14, 3.5)))
        out.append(start + day * DAY + (hour - tz) * 3600 + rng.random() * 60)
    return sorted(out)


def script_times(rng: random.Random, n: int, start: float, interval: float, jitter: float) -> list[float]:
    """A script on a clock: fixed interval with jitter, runs round the clock."""
    out, t = [], start
    for _ in range(n):
        out.append(t)
        t += max(0.5, interval * (1 + rng.uniform(-jitter, jitter)))
    return out


def poisson_times(rng: random.Random, n: int, start: float, rate_per_s: float) -> list[float]:
    out, t = [], start
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------- events
@dataclass
class Persona:
    account: str
    kind: str
    label: int  # 1 = distillation campaign
    group: str | None = None  # hydra id for linkage scoring


class TrafficBuilder:
    def __init__(self, corpora: Corpora, seed: int = 0, days: float = 14.0) -> None:
        self.c = corpora
        self.rng = random.Random(seed)
        self.days = days
        self.events: list[dict[str, Any]] = []
        self.personas: list[Persona] = []
        self._ev = 0
        self.nat_pool = [self._ip() for _ in range(25)]

    # -- helpers
    def _ip(self) -> str:
        r = self.rng
        return f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def _ua(self) -> str:
        uas, w = zip(*COMMON_UAS, strict=True)
        return self.rng.choices(uas, weights=w)[0]

    def _account_ips(self, k: int) -> list[str]:
        # some benign customers sit behind shared corporate / cloud NAT addresses
        return [self.rng.choice(self.nat_pool) if self.rng.random() < 0.08 else self._ip() for _ in range(k)]

    def _emit(self, p: Persona, ts: float, request: dict[str, Any], ip: str, ua: str, key: str,
              completion: int | None = None) -> None:
        self._ev += 1
        text_len = sum(len(m.get("content", "")) for m in request.get("messages", [])) + len(request.get("prompt", ""))
        ct = completion if completion is not None else self.rng.randint(20, min(800, request.get("max_tokens") or 800))
        self.events.append({
            "id": f"ev_{self._ev:09d}", "ts": round(ts, 3), "account": p.account, "key": key, "ip": ip,
            "user_agent": ua, "endpoint": "/v1/completions" if "prompt" in request else "/v1/chat/completions",
            "request": request,
            "response": {"text": "…", "finish_reason": "stop", "prompt_tokens": max(1, text_len // 4),
                         "completion_tokens": ct},
            "status": 200, "latency_ms": round(ct * 9.5 + self.rng.uniform(30, 120), 1),
            "decision": {"action": "allow", "reasons": []},
        })

    def _chat(self, content: str, system: str | None = None, **params: Any) -> dict[str, Any]:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return {"model": "smollm2", "messages": msgs, **{k: v for k, v in params.items() if v is not None}}

    def _human_params(self) -> dict[str, Any]:
        r = self.rng
        return r.choice([{}, {"temperature": 0.7}, {"max_tokens": r.choice([256, 512, 1024])},
                         {"temperature": r.choice([0.2, 0.7, 1.0]), "max_tokens": r.choice([256, 512])}])

    def _start(self, span_days: float) -> float:
        return T0 + self.rng.random() * max(0.0, self.days - span_days) * DAY

    def _new(self, kind: str, label: int, group: str | None = None) -> Persona:
        prefix = group or f"{kind}-{self.c.split}"
        idx = sum(1 for x in self.personas if (x.group == group if group else x.kind == kind))
        p = Persona(f"{prefix}-{idx:04d}", kind, label, group)
        self.personas.append(p)
        return p

    # -- benign personas
    def searcher(self) -> None:
        p, r = self._new("searcher", 0), self.rng
        n = max(2, int(r.lognormvariate(2.3, 0.9)))
        ips, ua, params = self._account_ips(r.randint(1, 3)), self._ua(), self._human_params()
        for ts in human_times(r, min(n, 150), T0, self.days, r.uniform(-8, 9)):
            self._emit(p, ts, self._chat(r.choice(self.c.nq), **params), r.choice(ips), ua, f"key_{p.account}")

    def app_user(self) -> None:
        """A small app built on the API: a few instructions (its features) with varying inputs."""
        p, r = self._new("app", 0), self.rng
        apps = sorted({a for a, _, _ in self.c.instructions})
        app = r.choice(apps)
        tasks = [t for t in self.c.instructions if t[0] == app] or self.c.instructions
        system = r.choice([None, f"You are the assistant inside {app}. Be helpful and brief."])
        n = max(5, int(r.lognormvariate(3.3, 1.0)))
        ips, ua = self._account_ips(r.randint(1, 2)), self._ua()
        params = {"temperature": r.choice([0.2, 0.5, 0.7]), "max_tokens": r.choice([256, 512])}
        for ts in app_times(r, min(n, 600), T0, self.days, r.uniform(-8, 9), night=0.05):
            _, inst, inp = r.choice(tasks)
            text = f"{inst}\n\n{inp}".strip() if inp else inst
            self._emit(p, ts, self._chat(text, system, **params), r.choice(ips), ua, f"key_{p.account}")

    def chatter(self) -> None:
        """Multi-turn chat: follow-ups carry the conversation so far."""
        p, r = self._new("chatter", 0), self.rng
        n_conv = max(1, int(r.lognormvariate(1.3, 0.8)))
        ips, ua, params = self._account_ips(r.randint(1, 3)), self._ua(), self._human_params()
        times = human_times(r, n_conv, T0, self.days, r.uniform(-8, 9))
        for t in times:
            turns = list(r.choice(self.c.chats))
            if r.random() < 0.5:
                turns.append(r.choice(["Thanks! Can you make it shorter?", "Why?", "Give me another example.",
                                       "Can you explain that part again?", "Great, now in bullet points."]))
            msgs: list[dict[str, str]] = []
            for k, turn in enumerate(turns):
                msgs = msgs + [{"role": "user", "content": turn}]
                req = {"model": "smollm2", "messages": list(msgs), **params}
                self._emit(p, t, req, r.choice(ips), ua, f"key_{p.account}")
                msgs = msgs + [{"role": "assistant", "content": "(answer)"}]
                t += r.uniform(20, 240) * (k + 1)

    def tutor(self) -> None:
        """A student with maths homework: sometimes asks for the steps."""
        p, r = self._new("student", 0), self.rng
        n = r.randint(3, 30)
        ips, ua, params = self._account_ips(r.randint(1, 2)), self._ua(), self._human_params()
        for ts in human_times(r, n, T0, self.days, r.uniform(-8, 9)):
            q = r.choice(self.c.gsm8k) if r.random() < 0.7 else r.choice(self.c.nq)
            text = f"{q} {r.choice(TUTOR_SUFFIXES)}".strip()
            self._emit(p, ts, self._chat(text, **params), r.choice(ips), ua, f"key_{p.account}")

    def coder(self) -> None:
        p, r = self._new("coder", 0), self.rng
        n = r.randint(3, 40)
        ips, ua = self._account_ips(1), r.choice(["OpenAI/Python 1.54.0", "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"])
        for ts in human_times(r, n, T0, self.days, r.uniform(-8, 9)):
            text = (f"Can you help me finish this function?\n{r.choice(self.c.humaneval)}" if r.random() < 0.4
                    else r.choice(self.c.nq if r.random() < 0.5 else [i for _, i, _ in self.c.instructions]))
            self._emit(p, ts, self._chat(text, temperature=0.2), r.choice(ips), ua, f"key_{p.account}")

    # -- hard benign
    def rag_app(self) -> None:
        """A business app: one fixed RAG template and system prompt at high volume, all day."""
        p, r = self._new("rag-app", 0), self.rng
        kb = r.sample(self.c.passages, min(40, len(self.c.passages)))
        system = f"You are the support assistant for {r.choice(['Northwind', 'Contoso', 'Fabrikam', 'Globex'])}."
        per_day = r.randint(60, 150)
        ips = [self._ip() for _ in range(3)]
        n = int(per_day * self.days)
        for ts in app_times(r, n, T0, self.days, r.uniform(-8, 9), night=0.3):
            text = RAG_TEMPLATE.format(ctx=r.choice(kb), q=r.choice(self.c.nq))
            self._emit(p, ts, self._chat(text, system, temperature=0.0, max_tokens=400), r.choice(ips),
                       "python-requests/2.32.3", f"key_{p.account}")

    def researcher(self) -> None:
        """One benchmark pass, once: a harness at a steady rate for an hour or two, then silence."""
        p, r = self._new("researcher", 0), self.rng
        bench = r.choice(["gsm8k", "gsm8k", "humaneval", "chat"])
        if bench == "gsm8k":
            items = r.sample(self.c.gsm8k, min(len(self.c.gsm8k), r.randint(100, 300)))
            tmpl = EVAL_COT if r.random() < 1 / 3 else EVAL_PLAIN
            prompts = [tmpl.format(q=q) for q in items]
        elif bench == "humaneval":
            prompts = list(self.c.humaneval)
        else:
            prompts = [t[0] for t in self.c.chats]
        ip, ua = self._ip(), r.choice(["python-requests/2.32.3", "OpenAI/Python 1.54.0", "httpx/0.27.2"])
        times = script_times(r, len(prompts), self._start(1), r.uniform(2, 8), 0.3)
        for ts, text in zip(times, prompts, strict=True):
            req = ({"model": "smollm2", "prompt": text, "max_tokens": 512, "temperature": 0.0} if bench == "humaneval"
                   else self._chat(text, temperature=0.0, max_tokens=512))
            self._emit(p, ts, req, ip, ua, f"key_{p.account}")

    # -- attackers
    def _attack_params(self, harvest: bool) -> dict[str, Any]:
        r = self.rng
        params: dict[str, Any] = {"temperature": r.choice([0.7, 0.8, 1.0]), "max_tokens": r.choice([1024, 2048, 2048])}
        if harvest:
            params.update(logprobs=True, top_logprobs=r.choice([5, 10, 20]))
        return params

    def _attack_clock(self, n: int) -> list[float]:
        r = self.rng
        style = r.choice(["script", "poisson", "poisson"])
        rate = r.uniform(0.004, 0.03)  # 15-110 requests per hour
        start = self._start(n / rate / DAY)
        if style == "script":
            return script_times(r, n, start, 1 / rate, 0.25)
        return poisson_times(r, n, start, rate)

    def gsm8k_sweep(self) -> None:
        p, r = self._new("attack-gsm8k", 1), self.rng
        n = r.randint(600, 1500)
        tmpl, params = r.choice(ATTACK_TEMPLATES), self._attack_params(r.random() < 0.5)
        items = r.sample(self.c.gsm8k, len(self.c.gsm8k))
        ips, ua = [self._ip() for _ in range(r.randint(1, 4))], self._ua()
        for i, ts in enumerate(self._attack_clock(n)):
            self._emit(p, ts, self._chat(tmpl.format(q=items[i % len(items)]), **params), r.choice(ips), ua,
                       f"key_{p.account}", completion=r.randint(150, 600))

    def code_sweep(self) -> None:
        p, r = self._new("attack-code", 1), self.rng
        pairs = [(t, q) for q in self.c.humaneval for t in CODE_TEMPLATES]
        r.shuffle(pairs)
        n = min(len(pairs), r.randint(250, 400))
        params = self._attack_params(r.random() < 0.5)
        ips, ua = [self._ip() for _ in range(2)], self._ua()
        for (t, q), ts in zip(pairs[:n], self._attack_clock(n), strict=True):
            self._emit(p, ts, self._chat(t.format(q=q), **params), r.choice(ips), ua, f"key_{p.account}")

    def template_generator(self) -> None:
        """Self-instruct style data generation: seed tasks in, new tasks with responses out."""
        p, r = self._new("attack-generator", 1), self.rng
        n = r.randint(500, 1200)
        insts = [i for _, i, _ in self.c.instructions]
        params = self._attack_params(False)
        params["temperature"] = 1.0
        ips, ua = [self._ip()], self._ua()
        for ts in self._attack_clock(n):
            a, b, c = r.sample(insts, 3)
            text = GENERATOR_TEMPLATE.format(k=r.choice([5, 8, 10]), a=a, b=b, c=c, domain=r.choice(DOMAINS),
                                             level=r.choice(LEVELS))
            self._emit(p, ts, self._chat(text, **params), r.choice(ips), ua, f"key_{p.account}")

    def slow_and_low(self) -> None:
        """Under every per-account limit: a few dozen requests a day, human-like sessions."""
        p, r = self._new("attack-slow", 1), self.rng
        n = r.randint(250, 500)
        tmpl = r.choice(ATTACK_TEMPLATES)
        code = r.random() < 0.3
        items = r.sample(self.c.humaneval if code else self.c.gsm8k, len(self.c.humaneval if code else self.c.gsm8k))
        ips, ua = [self._ip()], self._ua()
        for i, ts in enumerate(human_times(r, n, T0, self.days, r.uniform(-8, 9))):
            q = items[i % len(items)]
            text = r.choice(CODE_TEMPLATES).format(q=q) if code else tmpl.format(q=q)
            self._emit(p, ts, self._chat(text, **self._human_params()), r.choice(ips), ua, f"key_{p.account}")

    def paraphraser(self) -> None:
        """Every prompt reworded: new framing, new elicitation phrase, varying parameters."""
        p, r = self._new("attack-paraphrase", 1), self.rng
        n = r.randint(400, 1000)
        items = r.sample(self.c.gsm8k, len(self.c.gsm8k))
        ips, ua = [self._ip() for _ in range(3)], self._ua()
        for i, ts in enumerate(self._attack_clock(n)):
            q = r.choice(FRAMINGS).format(q=items[i % len(items)])
            e = r.choice(PARAPHRASES)
            text = f"{e}\n{q}" if r.random() < 0.5 else f"{q}\n{e}"
            params = {"temperature": round(r.uniform(0.3, 1.0), 2), "max_tokens": r.choice([512, 768, 1024, 1500])}
            self._emit(p, ts, self._chat(text, **params), r.choice(ips), ua, f"key_{p.account}")

    def with_cover(self) -> None:
        """Attack traffic mixed 50/50 with ordinary-looking requests."""
        p, r = self._new("attack-cover", 1), self.rng
        n = r.randint(500, 1200)
        tmpl = r.choice(ATTACK_TEMPLATES)
        items = r.sample(self.c.gsm8k, len(self.c.gsm8k))
        ips, ua = [self._ip() for _ in range(2)], self._ua()
        params = self._attack_params(False)
        for i, ts in enumerate(self._attack_clock(n)):
            if r.random() < 0.5:
                text = tmpl.format(q=items[i % len(items)])
                req = self._chat(text, **params)
            else:
                pool = r.choice([self.c.nq, [t[0] for t in self.c.chats], [t[1] for t in self.c.instructions]])
                req = self._chat(r.choice(pool), **self._human_params())
            self._emit(p, ts, req, r.choice(ips), ua, f"key_{p.account}")

    def hydra(self, members: int = 24, source: str = "gsm8k") -> None:
        """One operator, many accounts: one prompt source split without overlap, shared templates,
        a shared proxy pool, driven in lock-step by one orchestrator."""
        r = self.rng
        gid = f"hydra-{self.c.split}-{len({x.group for x in self.personas if x.group})}"
        accts = [self._new("attack-hydra", 1, gid) for _ in range(members)]
        if source == "gsm8k":
            items = r.sample(self.c.gsm8k, len(self.c.gsm8k))
            tmpls = r.sample(ATTACK_TEMPLATES, 2)
        else:
            items = [q for q in self.c.humaneval] * 4
            r.shuffle(items)
            tmpls = r.sample(CODE_TEMPLATES, 2)
        proxies = [self._ip() for _ in range(members * 2)]
        ua = self._ua()
        windows = sorted(self._start(3) + r.random() * 3 * DAY for _ in range(30))
        params = self._attack_params(False)
        cursor = 0
        for a in accts:
            own_ips = r.sample(proxies, 2)
            tmpl = r.choice(tmpls)
            n = r.randint(25, 45)
            ws = sorted(r.sample(windows, min(len(windows), max(8, n // 2))))
            times = sorted(w + r.uniform(0, 540) for w in (ws * 3)[:n])
            for ts in times:
                q = items[cursor % len(items)]
                cursor += 1
                self._emit(a, ts, self._chat(tmpl.format(q=q), **params), r.choice(own_ips), ua, f"key_{a.account}")

    # -- output
    def sorted_events(self) -> list[dict[str, Any]]:
        return sorted(self.events, key=lambda e: (e["ts"], e["id"]))

    def labels(self) -> dict[str, dict[str, Any]]:
        return {p.account: {"label": p.label, "kind": p.kind, "group": p.group} for p in self.personas}


@dataclass
class Mix:
    """How many accounts of each persona."""

    searcher: int = 700
    app_user: int = 250
    chatter: int = 300
    tutor: int = 120
    coder: int = 100
    rag_app: int = 5
    researcher: int = 20
    gsm8k_sweep: int = 8
    code_sweep: int = 6
    template_generator: int = 6
    slow_and_low: int = 8
    paraphraser: int = 8
    with_cover: int = 8
    hydras: tuple[tuple[int, str], ...] = ((24, "gsm8k"), (20, "code"))
    benign_only: bool = False

    def scaled(self, f: float) -> Mix:
        def s(x: int) -> int:
            return max(1, int(round(x * f))) if x else 0
        return Mix(s(self.searcher), s(self.app_user), s(self.chatter), s(self.tutor), s(self.coder), s(self.rag_app),
                   s(self.researcher), s(self.gsm8k_sweep), s(self.code_sweep), s(self.template_generator),
                   s(self.slow_and_low), s(self.paraphraser), s(self.with_cover),
                   tuple((max(20, m), src) for m, src in self.hydras), self.benign_only)


def build_traffic(corpora: Corpora, mix: Mix, seed: int = 0, days: float = 14.0) -> TrafficBuilder:
    b = TrafficBuilder(corpora, seed=seed, days=days)
    for name in ("searcher", "app_user", "chatter", "tutor", "coder", "rag_app", "researcher"):
        for _ in range(getattr(mix, name)):
            getattr(b, name)()
    if not mix.benign_only:
        for name in ("gsm8k_sweep", "code_sweep", "template_generator", "slow_and_low", "paraphraser", "with_cover"):
            for _ in range(getattr(mix, name)):
                getattr(b, name)()
        for members, src in mix.hydras:
            b.hydra(members, src)
    return b


def write_jsonl(events: list[dict[str, Any]], path: Path | str) -> None:
    import orjson

    with open(path, "wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e))
            fh.write(b"\n")
