"""The benign reference sample the topic signals compare accounts against.

Where it comes from, in order: the prompts stored in a calibration file (sampled from the
operator's own benign traffic by ``distillguard detect calibrate``), or the small built-in corpus
``distillguard/data/detect_reference_prompts.jsonl`` (ordinary requests written for this project).
"""

from __future__ import annotations

import json
from pathlib import Path

from distillguard import jsonl

BUILTIN = "detect_reference_prompts.jsonl"


def builtin_reference_prompts() -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "data" / BUILTIN).read_text(encoding="utf-8")
    return [row["prompt"] for row in jsonl.loads(text)]


def load_calibration(path: Path | str) -> dict:
    """Read a calibration file; raise ValueError with what to fix."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"threshold file {p} does not exist (create it with `distillguard detect calibrate`)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"threshold file {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("threshold"), (int, float)):
        raise ValueError(f"threshold file {p} has no numeric 'threshold' field; re-run `distillguard detect calibrate`")
    return data
