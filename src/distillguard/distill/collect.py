"""`distill collect`: ask the teacher every prompt once and append its answers to a JSONL dataset.

The dataset is append-only and keyed by prompt hash, so an interrupted run resumes where it
stopped: prompts already answered are never asked again. Each line is one record::

    {"id", "messages", "prompt", "response", "reasoning", "finish_reason", "prompt_tokens",
     "completion_tokens", "teacher", "source", "task", "reference", "logprobs", "heldout"}

It loads with ``datasets.load_dataset("json", data_files=path)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distillguard import jsonl
from distillguard.distill.config import DistillConfig
from distillguard.distill.prompts import PromptItem, is_heldout, read_all
from distillguard.distill.teachers import Teacher, TeacherError, build_teacher


class DatasetError(ValueError):
    """The dataset file is malformed; the message names the line."""


@dataclass
class CollectSummary:
    total: int
    already: int
    asked: int
    failed: int
    output: Path
    seconds: float
    completion_tokens: int
    retries: int = 0
    #: collect.max_minutes ran out before every prompt was answered (a rerun resumes)
    stopped_by_time: bool = False


def load_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Read the dataset; a torn last line (a run killed mid-write) is dropped, or cut with ``repair``."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        if repair:
            with path.open("r+b") as fh:
                fh.truncate(cut)
        raw = raw[:cut]
    records = []
    for lineno, line in enumerate(jsonl.lines(raw.decode("utf-8")), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg}); delete that line and rerun") from exc
        if not isinstance(rec, dict) or "id" not in rec or "response" not in rec:
            raise DatasetError(f"{path}:{lineno}: not a distill record (needs 'id' and 'response')")
        records.append(rec)
    return records


def make_record(item: PromptItem, ans: Any, teacher_name: str, heldout_fraction: float) -> dict[str, Any]:
    pid = item.id
    return {
        "id": pid,
        "messages": item.messages,
        "prompt": item.messages[-1]["content"],
        "response": ans.text,
        "reasoning": ans.reasoning,
        "finish_reason": ans.finish_reason,
        "prompt_tokens": ans.prompt_tokens,
        "completion_tokens": ans.completion_tokens,
        "teacher": teacher_name,
        "source": item.source,
        "task": item.task,
        "reference": item.reference,
        "logprobs": ans.logprobs,
        "heldout": is_heldout(pid, heldout_fraction),
    }


async def collect_async(cfg: DistillConfig, teacher: Teacher | None = None, progress: bool = True) -> CollectSummary:
    c = cfg.collect
    if not c.sources:
        raise ValueError("collect.sources is empty; add at least one prompt file ([[distill.collect.sources]] path=..., field=...)")
    items = read_all(c.sources, c.system_prompt)
    if c.max_prompts is not None:
        items = items[: c.max_prompts]
    out = cfg.dataset_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["id"] for r in load_records(out, repair=True)}
    todo = [it for it in items if it.id not in done]
    already = len(items) - len(todo)

    own_teacher = teacher is None
    if teacher is None:
        teacher = build_teacher(cfg.teacher, c)
    # A local engine answers one prompt at a time; more in flight would only queue.
    width = c.concurrency if cfg.teacher.kind == "openai" else 1
    sem = asyncio.Semaphore(width)
    failed = 0
    asked = 0
    tokens = 0
    abort: list[BaseException] = []
    t0 = time.perf_counter()
    stopped = False

    def out_of_time() -> bool:
        """The time budget is spent: start nothing new (what is in flight still lands)."""
        nonlocal stopped
        stopped = stopped or (c.max_minutes is not None and time.perf_counter() - t0 > 60 * c.max_minutes)
        return stopped

    bar = Progress(
        TextColumn("collect"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tok]} tok"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress,
    )
    with bar, out.open("a", encoding="utf-8") as fh:
        task = bar.add_task("collect", total=len(items), completed=already, tok=0)

        async def one(item: PromptItem) -> None:
            nonlocal failed, asked, tokens
            async with sem:
                if abort or out_of_time():
                    return
                try:
                    ans = await teacher.answer(item.messages, c)
                except TeacherError as exc:
                    failed += 1
                    abort.append(exc)  # the teacher is down or refusing: stop, keep what we have
                    return
                rec = make_record(item, ans, teacher.name, cfg.heldout_fraction)
                # One write per record, flushed: a kill leaves at most one torn last line.
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                asked += 1
                tokens += ans.completion_tokens
                bar.update(task, advance=1, tok=tokens)

        async def batched(items: list[PromptItem]) -> None:
            """A batched local teacher: prompts of similar length together (less padding)."""
            nonlocal failed, asked, tokens
            assert teacher is not None
            order = sorted(items, key=lambda it: len(teacher.prompt_ids(it.messages)))  # type: ignore[attr-defined]
            size = teacher.batch_size  # type: ignore[attr-defined]
            chunks = [order[i : i + size] for i in range(0, len(order), size)]
            # Batches in a seeded random order, not shortest first: a collection cut short (time
            # budget, kill) is then a fair sample of the prompts, not only the short ones.
            random.Random(c.seed).shuffle(chunks)
            for n, chunk in enumerate(chunks):
                if n and out_of_time():
                    return
                try:
                    answers = await teacher.answer_batch([it.messages for it in chunk], c)  # type: ignore[attr-defined]
                except TeacherError as exc:
                    failed += len(chunk)
                    abort.append(exc)
                    return
                for item, ans in zip(chunk, answers):
                    fh.write(json.dumps(make_record(item, ans, teacher.name, cfg.heldout_fraction), ensure_ascii=False) + "\n")
                    asked += 1
                    tokens += ans.completion_tokens
                fh.flush()  # a kill loses at most the batch in flight
                bar.update(task, advance=len(chunk), tok=tokens)

        try:
            if hasattr(teacher, "answer_batch"):
                await batched(todo)
            else:
                await asyncio.gather(*(one(it) for it in todo))
        finally:
            os.fsync(fh.fileno())
            if own_teacher:
                await teacher.aclose()
    summary = CollectSummary(
        total=len(items), already=already, asked=asked, failed=failed,
        output=out, seconds=time.perf_counter() - t0, completion_tokens=tokens,
        retries=getattr(teacher, "retries", 0), stopped_by_time=stopped,
    )
    if abort:
        n = len({r["id"] for r in load_records(out)})
        raise TeacherError(f"{abort[0]} — {n} answers are saved in {out}; rerun the same command to resume")
    return summary


def collect(cfg: DistillConfig, teacher: Teacher | None = None, progress: bool = True) -> CollectSummary:
    return asyncio.run(collect_async(cfg, teacher, progress))
