import json
from pathlib import Path

import pytest

from distillguard.distill.config import PromptSource
from distillguard.distill.prompts import PromptFileError, get_field, is_heldout, prompt_id, read_all, read_prompts


def _write(p: Path, rows: list[object]) -> Path:
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_field_selection(tmp_path):
    f = _write(tmp_path / "mt.jsonl", [{"turns": ["first turn", "second"]}, {"turns": ["another"]}])
    items = read_prompts(PromptSource(path=f, field="turns[0]"))
    assert [i.messages[-1]["content"] for i in items] == ["first turn", "another"]
    assert items[0].source == "mt.jsonl:1"
    assert get_field({"a": {"b": [1, 2]}}, "a.b.1") == 2


def test_reference_task_limit_offset_and_system(tmp_path):
    f = _write(tmp_path / "g.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)])
    items = read_prompts(PromptSource(path=f, field="question", answer_field="answer", task="gsm8k", limit=2, offset=1), "sys")
    assert [i.messages[-1]["content"] for i in items] == ["q1", "q2"]
    assert items[0].reference == "#### 1" and items[0].task == "gsm8k"
    assert items[0].messages[0] == {"role": "system", "content": "sys"}


def test_interleaves_and_dedupes(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"prompt": "x"}, {"prompt": "y"}])
    b = _write(tmp_path / "b.jsonl", [{"prompt": "x"}, {"prompt": "z"}])
    items = read_all([PromptSource(path=a), PromptSource(path=b)])
    assert [i.messages[-1]["content"] for i in items] == ["x", "y", "z"]


def test_empty_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    with pytest.raises(PromptFileError, match="no rows"):
        read_prompts(PromptSource(path=f))


def test_malformed_line_number(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "ok"}, "{not json"])
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: not valid JSON"):
        read_prompts(PromptSource(path=f))


def test_missing_and_empty_field(tmp_path):
    f = _write(tmp_path / "f.jsonl", [{"question": "ok"}, {"other": 1}])
    with pytest.raises(PromptFileError, match=r"f.jsonl:2: no field 'question' \(row has: other\)"):
        read_prompts(PromptSource(path=f, field="question"))
    g = _write(tmp_path / "g.jsonl", [{"prompt": "  "}])
    with pytest.raises(PromptFileError, match="g.jsonl:1: field 'prompt' is empty"):
        read_prompts(PromptSource(path=g))
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(PromptSource(path=tmp_path / "nope.jsonl"))


def test_heldout_split_is_stable():
    ids = [prompt_id([{"role": "user", "content": f"p{i}"}]) for i in range(2000)]
    held = [i for i in ids if is_heldout(i, 0.1)]
    assert 120 < len(held) < 280  # ~10%
    assert held == [i for i in ids if is_heldout(i, 0.1)]
