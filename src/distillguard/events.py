"""Exchange events: the one record every part of DistillGuard shares.

The format is fixed by ``shared/spec/events.md``: one JSON object per line, required fields
``ts``, ``account`` and ``request``; unknown fields are ignored. The gateway produces these, the
store keeps them, ``events export`` prints them, and detection replays them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Decision(BaseModel):
    """What the policy decided for one request, and why."""

    model_config = ConfigDict(extra="allow")
    action: str = "allow"
    reasons: list[str] = Field(default_factory=list)


class ResponseSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ExchangeEvent(BaseModel):
    """One API exchange, exactly as ``shared/spec/events.md`` describes it."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    ts: float
    account: str
    key: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    endpoint: str = "/v1/chat/completions"
    request: dict[str, Any]
    response: ResponseSummary | None = None
    status: int = 200
    latency_ms: float | None = None
    decision: Decision | None = None

    def to_json(self) -> str:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True)).decode()

    def prompt_text(self) -> str:
        """The user-visible prompt: all message contents for chat, the prompt for completions."""
        return prompt_text(self.request)

    def messages(self) -> list[dict[str, Any]]:
        msgs = self.request.get("messages")
        return msgs if isinstance(msgs, list) else []


def prompt_text(request: dict[str, Any]) -> str:
    msgs = request.get("messages")
    if isinstance(msgs, list):
        parts = []
        for m in msgs:
            if isinstance(m, dict):
                c = m.get("content")
                if isinstance(c, str):
                    parts.append(c)
                elif isinstance(c, list):  # OpenAI content parts
                    parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "\n".join(parts)
    p = request.get("prompt")
    if isinstance(p, list):
        return "\n".join(x for x in p if isinstance(x, str))
    return p if isinstance(p, str) else ""


@dataclass
class ReadReport:
    """Counts from reading an events file; ``skipped`` lists (line number, reason)."""

    read: int = 0
    skipped: list[tuple[int, str]] | None = None

    def __post_init__(self) -> None:
        if self.skipped is None:
            self.skipped = []


def read_events(
    source: Path | str | TextIO | Iterable[str],
    report: ReadReport | None = None,
    warn: TextIO | None = sys.stderr,
) -> Iterator[ExchangeEvent]:
    """Yield valid events from JSONL, reporting bad lines by number and skipping them.

    The spec says a bad line must not stop the run; the caller reads ``report.skipped`` at the end.
    """
    report = report if report is not None else ReadReport()
    if isinstance(source, (str, Path)):
        fh: Iterable[str] = open(source, encoding="utf-8")
        close = True
    else:
        fh, close = source, False
    try:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                _skip(report, warn, lineno, f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                _skip(report, warn, lineno, "not a JSON object")
                continue
            try:
                ev = ExchangeEvent.model_validate(obj)
            except ValidationError as exc:
                fields = ", ".join(".".join(str(p) for p in e["loc"]) or "?" for e in exc.errors())
                _skip(report, warn, lineno, f"missing or invalid field(s): {fields}")
                continue
            report.read += 1
            yield ev
    finally:
        if close:
            fh.close()  # type: ignore[union-attr]


def _skip(report: ReadReport, warn: TextIO | None, lineno: int, why: str) -> None:
    report.skipped.append((lineno, why))  # type: ignore[union-attr]
    if warn is not None:
        print(f"line {lineno}: skipped, {why}", file=warn)


def write_events(events: Iterable[ExchangeEvent], out: TextIO) -> int:
    n = 0
    for ev in events:
        out.write(ev.to_json())
        out.write("\n")
        n += 1
    return n


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
