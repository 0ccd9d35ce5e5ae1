"""JSONL records whose strings hold characters str.splitlines() breaks on (U+2028 and friends).

The full arena died here: a SmolLM2 answer carried U+2028, json.dumps(ensure_ascii=False) left it
raw, and the dataset reader split the record in two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard import jsonl
from distillguard.arena.attacker import control_prompts, write_records
from distillguard.distill.collect import load_records

ODD = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("ch", ODD)
def test_lines_split_on_newline_only(ch: str) -> None:
    rows = [{"text": f"a{ch}b"}, {"text": "plain"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert jsonl.loads(text) == rows
    assert list(jsonl.lines("x\r\ny\n")) == ["x", "y"]
    assert list(jsonl.lines("x\n\ny")) == ["x", "", "y"]


def test_arena_dataset_with_line_separator_round_trips(tmp_path: Path) -> None:
    answer = "Step 1: 6 blue balls.\u2028Step 2: 4 red balls.\x85Total: 38."
    collected = {"maths-sweep": [
        {"messages": [{"role": "user", "content": f"question {i}"}], "response": answer, "completion_tokens": 20}
        for i in range(3)]}
    path = tmp_path / "collected.jsonl"
    assert write_records(collected, path, 0.1) == 3
    recs = load_records(path)
    assert [r["response"] for r in recs] == [answer] * 3


def test_control_prompts_read_the_dataset_written_by_the_attacker(tmp_path: Path) -> None:
    """The control student's prompt file (the full scenario died here after the U+2028 fix: the
    reader choked on the empty string after the last newline)."""
    collected = {"hydra": [
        {"messages": [{"role": "user", "content": f"write code {i}\u2028please"}], "response": "ok", "completion_tokens": 2}
        for i in range(3)]}
    dataset = tmp_path / "collected.jsonl"
    write_records(collected, dataset, 0.1)
    out = control_prompts(dataset, tmp_path / "control_prompts.jsonl")
    assert [r["prompt"] for r in jsonl.loads(out.read_text(encoding="utf-8"))] == [
        f"write code {i}\u2028please" for i in range(3)]
