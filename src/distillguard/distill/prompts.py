"""Prompts from JSONL files, with errors that name the file and line to fix."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from distillguard.distill.config import PromptSource


class PromptFileError(ValueError):
    """A prompt file is missing, empty or malformed; the message names file and line."""


@dataclass
class PromptItem:
    messages: list[dict[str, str]]
    source: str  # "file:line"
    reference: str | None = None
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return prompt_id(self.messages)


def prompt_id(messages: list[dict[str, str]]) -> str:
    """Stable key of a prompt: the resume key of collect and the held-out split."""
    canon = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:24]


def is_heldout(pid: str, fraction: float) -> bool:
    """Deterministic split by hash: the same prompt is held out in collect, train and eval."""
    return int(pid[:8], 16) / 0xFFFFFFFF < fraction


_INDEX = re.compile(r"\[(\d+)\]")


def get_field(row: Any, dotted: str) -> Any:
    """``turns.0`` / ``turns[0]`` / ``a.b`` lookups into nested JSON."""
    cur = row
    for part in _INDEX.sub(r".\1", dotted).split("."):
        if part == "":
            continue
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise KeyError(dotted)
            cur = cur[int(part)]
        elif isinstance(cur, dict):
            if part not in cur:
                raise KeyError(dotted)
            cur = cur[part]
        else:
            raise KeyError(dotted)
    return cur


def builtin_prompts_path() -> Path:
    """A small built-in prompt set (authored for this project) for demos without shared data."""
    return Path(str(resources.files("distillguard") / "data" / "distill_prompts.jsonl"))


def read_prompts(src: PromptSource, system_prompt: str | None = None) -> list[PromptItem]:
    path = Path(src.path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    items: list[PromptItem] = []
    seen_rows = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            seen_rows += 1
            if seen_rows <= src.offset:
                continue
            try:
                text = get_field(row, src.field)
            except KeyError:
                keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                raise PromptFileError(
                    f"{path}:{lineno}: no field {src.field!r} (row has: {keys}); set the source's field"
                ) from None
            if not isinstance(text, str) or not text.strip():
                raise PromptFileError(f"{path}:{lineno}: field {src.field!r} is empty or not a string")
            reference = None
            if src.answer_field:
                try:
                    reference = str(get_field(row, src.answer_field))
                except KeyError:
                    raise PromptFileError(f"{path}:{lineno}: no answer field {src.answer_field!r}") from None
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages.append({"role": "user", "content": text.strip()})
            items.append(PromptItem(messages, f"{path.name}:{lineno}", reference, src.task))
            if src.limit is not None and len(items) >= src.limit:
                break
    if seen_rows == 0:
        raise PromptFileError(f"{path}: the file has no rows; give a JSONL file with one JSON object per line")
    return items


def read_all(sources: Iterable[PromptSource], system_prompt: str | None = None) -> list[PromptItem]:
    """All sources interleaved round-robin (so any prefix is a mix), duplicates dropped."""
    per_source = [read_prompts(src, system_prompt) for src in sources]
    out: list[PromptItem] = []
    seen: set[str] = set()
    for i in range(max((len(x) for x in per_source), default=0)):
        for items in per_source:
            if i < len(items) and items[i].id not in seen:
                seen.add(items[i].id)
                out.append(items[i])
    return out
