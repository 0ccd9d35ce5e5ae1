import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distillguard.distill.collect import collect, load_records
from distillguard.distill.config import CollectConfig, DistillConfig, PromptSource, TeacherConfig
from distillguard.distill.teachers import EngineTeacher, OpenAITeacher, TeacherError, split_reasoning


class CountingTeacher:
    """Counts the questions that reach the real (tiny) teacher; can simulate going down."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls, self.name = inner, fail_after, 0, inner.name

    async def answer(self, messages, cfg):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise TeacherError("teacher down (simulated)")
        self.calls += 1
        return await self.inner.answer(messages, cfg)

    async def aclose(self):
        pass


@pytest.fixture(scope="module")
def engine_teacher(tiny_teacher):
    from distillguard.engines.hf import HFEngine

    return EngineTeacher(HFEngine(tiny_teacher, model_name="tiny", n_threads=1), "tiny")


def _cfg(tmp_path: Path, prompts: Path, n: int, **collect_kw) -> DistillConfig:
    return DistillConfig(
        workdir=tmp_path,
        collect=CollectConfig(sources=[PromptSource(path=prompts, field="prompt", limit=n)], max_tokens=4, **collect_kw),
    )


def test_resume_does_not_reask(tmp_path, prompt_file, engine_teacher):
    cfg = _cfg(tmp_path, prompt_file, 6)
    first = CountingTeacher(engine_teacher, fail_after=3)
    with pytest.raises(TeacherError, match="3 answers are saved.*rerun"):
        collect(cfg, teacher=first, progress=False)
    assert len(load_records(cfg.dataset_path())) == 3

    # a run killed mid-write leaves a torn last line: it is cut, not fatal
    with cfg.dataset_path().open("a") as fh:
        fh.write('{"id": "torn", "resp')
    second = CountingTeacher(engine_teacher)
    s = collect(cfg, teacher=second, progress=False)
    assert second.calls == 3 and s.already == 3 and s.asked == 3
    recs = load_records(cfg.dataset_path())
    assert len({r["id"] for r in recs}) == len(recs) == 6

    third = CountingTeacher(engine_teacher)
    collect(cfg, teacher=third, progress=False)
    assert third.calls == 0


def test_dataset_loads_with_datasets(collected):
    import datasets

    ds = datasets.load_dataset("json", data_files=str(collected.dataset_path()), split="train")
    assert len(ds) == 12
    assert {"id", "messages", "response", "logprobs", "heldout"} <= set(ds.column_names)
    assert ds[0]["logprobs"][0]["top"][0]["token"]  # top-k captured from the local engine


class FlakyOpenAI(BaseHTTPRequestHandler):
    """A loopback OpenAI-compatible server that answers 429 (Retry-After) ``fail_first`` times."""

    fail_first = 0
    status = 429
    retry_after = "0"
    calls = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with FlakyOpenAI.lock:
            FlakyOpenAI.calls += 1
            n = FlakyOpenAI.calls
        if n <= FlakyOpenAI.fail_first:
            self.send_response(FlakyOpenAI.status)
            self.send_header("Retry-After", FlakyOpenAI.retry_after)
            self.end_headers()
            self.wfile.write(b'{"error": "slow down"}')
            return
        prompt = body["messages"][-1]["content"]
        data = {
            "choices": [{
                "message": {"role": "assistant", "content": f"<think>about {prompt}</think>Answer to {prompt}",
                            "reasoning_content": "plan first"},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "Answer", "logprob": -0.1,
                                          "top_logprobs": [{"token": "Answer", "logprob": -0.1}, {"token": "A", "logprob": -2.5}]}]},
            }],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5},
        }
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *a):  # keep test output clean
        pass


@pytest.fixture
def flaky_server():
    FlakyOpenAI.calls, FlakyOpenAI.fail_first, FlakyOpenAI.retry_after, FlakyOpenAI.status = 0, 0, "0", 429
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FlakyOpenAI)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_openai_teacher_backs_off_on_429(tmp_path, prompt_file, flaky_server):
    FlakyOpenAI.fail_first, FlakyOpenAI.retry_after = 3, "0.25"
    cfg = _cfg(tmp_path, prompt_file, 4, concurrency=1, backoff_initial_s=0.001, top_logprobs=2)
    cfg.teacher = TeacherConfig(kind="openai", url=flaky_server, model="remote")
    t0 = time.perf_counter()
    s = collect(cfg, progress=False)
    elapsed = time.perf_counter() - t0
    assert s.asked == 4 and s.retries == 3
    assert elapsed >= 3 * 0.25 * 0.95  # Retry-After honoured, not just the tiny exponential delay
    recs = load_records(cfg.dataset_path())
    assert recs[0]["response"].startswith("Answer to")
    assert recs[0]["reasoning"].startswith("plan first") and "about" in recs[0]["reasoning"]
    assert recs[0]["logprobs"][0]["top"][1] == {"token": "A", "logprob": -2.5}
    assert recs[0]["teacher"] == "remote"


def test_openai_teacher_down_fails_clearly(tmp_path, prompt_file):
    cfg = _cfg(tmp_path, prompt_file, 2, max_retries=2, backoff_initial_s=0.001)
    cfg.teacher = TeacherConfig(kind="openai", url="http://127.0.0.1:9/v1")
    with pytest.raises(TeacherError, match=r"failed after 3 attempts .*ConnectError.*rerun the same command"):
        collect(cfg, progress=False)


def test_openai_client_error_is_not_retried(tmp_path, prompt_file, flaky_server):
    FlakyOpenAI.fail_first, FlakyOpenAI.status = 5, 401
    cfg = _cfg(tmp_path, prompt_file, 2, concurrency=1, backoff_initial_s=0.001)
    cfg.teacher = TeacherConfig(kind="openai", url=flaky_server)
    with pytest.raises(TeacherError, match="answered 401"):
        collect(cfg, progress=False)
    assert FlakyOpenAI.calls == 1  # a bad key will not get better by asking again


def test_split_reasoning():
    assert split_reasoning("<think>a</think> b") == ("b", "a")
    assert split_reasoning("plain", "r") == ("plain", "r")
    assert split_reasoning("<think>unfinished") == ("", "unfinished")
