"""JSON Lines text: split on "\\n" only.

``str.splitlines()`` also breaks on U+2028, U+2029, U+0085, form feed and a few other
characters that ``json.dumps(..., ensure_ascii=False)`` leaves unescaped inside strings, so a
model answer containing one of them would tear its record in two. Every JSONL reader that
holds the whole text in memory goes through :func:`lines`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def lines(text: str) -> Iterator[str]:
    """The lines of a JSONL text (``\\r\\n`` endings tolerated), without their line ends; like
    iterating over a file, no empty line after the last newline."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    for line in parts:
        yield line[:-1] if line.endswith("\r") else line


def loads(text: str) -> list[Any]:
    """Every non-blank line of a JSONL text, parsed."""
    return [json.loads(line) for line in lines(text) if line.strip()]
