"""Personas as plans: each account gets a list of timestamped conversations to send.

Timing models and attack wrappers come from detect/traffic.py (the same behavioural models the
detection benchmark uses); prompts come from the built-in corpora in distillguard/data/ or, with
``corpora = "auto"``, from ../shared/datasets (its "report" half: never the half detection tuned on).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from distillguard import jsonl
from distillguard.arena.scenario import PersonaSpec, Scenario
from distillguard.detect import traffic as tr

FOLLOWUPS = ["Thanks! Can you make it shorter?", "Why is that?", "Can you give me another example?",
             "Can you explain that part again?", "Great, now as bullet points please."]
ELICIT_MATHS = tr.ATTACK_TEMPLATES
ELICIT_CODE = tr.CODE_TEMPLATES


@dataclass
class Corpora:
    general: list[str]
    maths: list[str]
    coding: list[str]
    instructions: list[tuple[str, str, str]]  # (app, instruction, input)
    source: str = "builtin"

    def get(self, name: str) -> list[str]:
        if name == "instructions":
            return [f"{i}\n\n{x}".strip() for _, i, x in self.instructions]
        if name in ("general", "maths", "coding"):
            return getattr(self, name)
        p = Path(name)
        if not p.is_file():
            raise ValueError(f"corpus {name!r} is neither general/maths/coding/instructions nor a JSONL file")
        out = []
        for line in jsonl.lines(p.read_text(encoding="utf-8")):
            if line.strip():
                row = json.loads(line)
                out.append(next(str(row[k]) for k in ("prompt", "question", "instruction", "text") if k in row))
        if not out:
            raise ValueError(f"corpus file {p} has no rows with a prompt/question/instruction/text field")
        return out


def _data_rows(name: str) -> list[dict[str, Any]]:
    text = resources.files("distillguard.data").joinpath(name).read_text(encoding="utf-8")
    return jsonl.loads(text)


def builtin_corpora() -> Corpora:
    return Corpora(
        general=[r["prompt"] for r in _data_rows("arena_general.jsonl")],
        maths=[r["question"] for r in _data_rows("arena_maths.jsonl")],
        coding=[r["prompt"] for r in _data_rows("arena_coding.jsonl")],
        instructions=[(r["app"], r["instruction"], r["input"]) for r in _data_rows("arena_instructions.jsonl")],
    )


def load_corpora(mode: str) -> Corpora:
    if mode == "auto" and (tr.default_datasets_dir() / "gsm8k_train.jsonl").is_file():
        c = tr.load_corpora("report")
        return Corpora(general=c.nq, maths=c.gsm8k, coding=c.humaneval, instructions=c.instructions,
                       source=str(tr.default_datasets_dir()))
    return builtin_corpora()


@dataclass
class Conversation:
    ts: float
    turns: list[str]  # first user turn, then follow-ups (each sent with the answers so far)
    gaps: list[float]  # simulated seconds before each follow-up
    params: dict[str, Any]
    system: str | None = None
    cover: bool = False


@dataclass
class AccountPlan:
    name: str
    persona: str
    kind: str
    label: int  # 1 = distillation campaign
    tier: str
    keys: int
    user_agent: str
    ips: list[str]
    group: str | None = None
    collect: bool = False
    max_retries: int = 3
    conversations: list[Conversation] = field(default_factory=list)

    @property
    def planned_requests(self) -> int:
        return sum(len(c.turns) for c in self.conversations)


def _times(spec: PersonaSpec, rng: random.Random, n: int, t0: float, days: float) -> list[float]:
    tz = rng.uniform(-8, 9)
    if spec.timing == "human":
        return tr.human_times(rng, n, t0, days, tz)
    if spec.timing == "app":
        return tr.app_times(rng, n, t0, days, tz)
    rate = spec.rate_per_hour / 3600.0
    start = t0 + rng.random() * max(0.0, days * tr.DAY - n / rate) * 0.5
    if spec.timing == "script":
        return tr.script_times(rng, n, start, 1 / rate, 0.25)
    return tr.poisson_times(rng, n, start, rate)


def _ip(rng: random.Random) -> str:
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _ua(rng: random.Random) -> str:
    uas, w = zip(*tr.COMMON_UAS, strict=True)
    return rng.choices(uas, weights=w)[0]


def _attack_prompt(spec: PersonaSpec, rng: random.Random, items: list[str], i: int, tmpl: str,
                   instructions: list[str]) -> str:
    if spec.kind == "generator":
        a, b, c = rng.sample(instructions, 3)
        return tr.GENERATOR_TEMPLATE.format(k=rng.choice([3, 5]), a=a, b=b, c=c, domain=rng.choice(tr.DOMAINS),
                                            level=rng.choice(tr.LEVELS))
    q = items[i % len(items)]
    if spec.paraphrase:
        framed = rng.choice(tr.FRAMINGS).format(q=q)
        e = rng.choice(tr.PARAPHRASES)
        return f"{e}\n{framed}" if rng.random() < 0.5 else f"{framed}\n{e}"
    return tmpl.format(q=q) if spec.elicit else q


def plan_persona(spec: PersonaSpec, corpora: Corpora, rng: random.Random, t0: float, days: float) -> list[AccountPlan]:
    items = list(corpora.get(spec.corpus))
    rng.shuffle(items)
    params = {"max_tokens": spec.max_tokens, "temperature": spec.temperature}
    if not spec.attacker:
        return [_benign_account(spec, corpora, items, rng, t0, days, k, params) for k in range(spec.accounts)]

    # One operator: one prompt stream, one elicitation template, split over its accounts.
    n_acc = spec.hydra or 1
    group = spec.name if spec.hydra else None
    ua = _ua(rng)
    proxies = [_ip(rng) for _ in range(max(2, n_acc * 2))]
    tmpl = rng.choice(ELICIT_CODE if spec.kind == "code_sweep" else ELICIT_MATHS)
    accounts = [AccountPlan(name=f"{spec.name}-{k:02d}", persona=spec.name, kind=spec.kind, label=1, tier=spec.tier,
                            keys=spec.keys_per_account, user_agent=ua, ips=rng.sample(proxies, 2 if spec.hydra else 1),
                            group=group, collect=spec.collect, max_retries=spec.max_retries)
                for k in range(n_acc)]
    cover_pool = corpora.general + [i for _, i, _ in corpora.instructions]
    instructions = [i for _, i, _ in corpora.instructions]
    for i, ts in enumerate(_times(spec, rng, spec.requests, t0, days)):
        acct = accounts[i % n_acc]  # round robin: the hydra moves in lock-step
        if spec.cover and rng.random() < spec.cover:
            acct.conversations.append(Conversation(ts, [rng.choice(cover_pool)], [],
                                                   {"max_tokens": min(spec.max_tokens, 64), "temperature": 0.7}, cover=True))
            continue
        acct.conversations.append(Conversation(ts, [_attack_prompt(spec, rng, items, i, tmpl, instructions)], [], dict(params)))
    return accounts


def _benign_account(spec: PersonaSpec, corpora: Corpora, items: list[str], rng: random.Random, t0: float,
                    days: float, k: int, params: dict[str, Any]) -> AccountPlan:
    acct = AccountPlan(name=f"{spec.name}-{k:02d}", persona=spec.name, kind=spec.kind, label=0, tier=spec.tier,
                       keys=spec.keys_per_account, user_agent=_ua(rng), ips=[_ip(rng) for _ in range(rng.randint(1, 2))],
                       max_retries=spec.max_retries)
    system = None
    tasks = items
    if spec.kind == "app":  # an app: a few features (instructions) with its users' inputs, fixed system prompt
        app = rng.choice(sorted({a for a, _, _ in corpora.instructions}))
        tasks = [f"{i}\n\n{x}".strip() for a, i, x in corpora.instructions if a == app] or items
        system = f"You are the assistant inside a {app}. Be helpful and brief."
    # people vary how many requests they send; the spec gives the mean
    n = max(1, int(round(spec.requests * rng.uniform(0.6, 1.4))))
    sent = 0
    times = _times(spec, rng, n, t0, days)
    for ts in times:
        if sent >= n:
            break
        first = rng.choice(tasks)
        if spec.kind == "tutor" and rng.random() < 0.5:
            first = f"{rng.choice(corpora.maths)} {rng.choice(tr.TUTOR_SUFFIXES)}".strip()
        turns, gaps = [first], []
        if spec.followup and rng.random() < spec.followup and sent + 1 < n:
            turns.append(rng.choice(FOLLOWUPS))
            gaps.append(rng.uniform(20, 240))
        p = dict(params)
        if rng.random() < 0.3:  # people do not all use the same settings
            p["temperature"] = rng.choice([0.2, 0.7, 1.0])
        acct.conversations.append(Conversation(ts, turns, gaps, p, system=system))
        sent += len(turns)
    return acct


def plan_scenario(sc: Scenario, corpora: Corpora) -> list[AccountPlan]:
    rng = random.Random(sc.seed)
    out: list[AccountPlan] = []
    for spec in sc.personas:
        out.extend(plan_persona(spec, corpora, random.Random(rng.random()), tr.T0, sc.days))
    return out
