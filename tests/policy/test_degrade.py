"""degrade: reasoning withheld/summarised (also across chunk boundaries), logprobs capped and noised,
answers capped in length."""

from __future__ import annotations

import math
import random

import pytest

from distillguard.policy.degrade import (
    WITHHELD,
    DegradePlan,
    LogprobsRefused,
    StreamDegrader,
    ThinkFilter,
    apply_to_response,
    cap_max_tokens,
    cap_request,
    noise_seed,
    strip_reasoning,
    summarise,
)

PLAN = DegradePlan()
TEXT = "Sure.<think>First, 3 + 4 = 7. Then 7 * 2 = 14. So the answer is 14.</think>The answer is 14."


def test_strip_reasoning_withholds_think_blocks() -> None:
    out = strip_reasoning(TEXT, PLAN)
    assert out == f"Sure.<think>{WITHHELD}</think>The answer is 14."
    assert strip_reasoning("no reasoning here", PLAN) == "no reasoning here"
    assert strip_reasoning(TEXT, DegradePlan(reasoning="keep")) == TEXT
    # an unclosed block is withheld to the end
    assert strip_reasoning("A<think>secret steps", PLAN) == f"A<think>{WITHHELD}</think>"
    # tags are matched case-insensitively, several blocks each replaced
    assert strip_reasoning("<THINK>x</THINK>a<think>y</think>b", PLAN) == f"<think>{WITHHELD}</think>a<think>{WITHHELD}</think>b"


def test_summarise_is_extractive_and_bounded() -> None:
    plan = DegradePlan(reasoning="summarise", summary_words=12)
    out = strip_reasoning(TEXT, plan)
    assert "First, 3 + 4 = 7." in out and "Then 7 * 2" not in out and out.endswith("</think>The answer is 14.")
    long = " ".join(f"word{i}" for i in range(200)) + "."
    assert len(summarise(long, 10).split()) <= 10 + 5


@pytest.mark.parametrize("seed", range(25))
def test_think_filter_across_random_chunk_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    text = "Intro <" + TEXT + " and <thin not a tag> <think>more\nsteps</thi" + "nk> end <"
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 25)))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]
    f = ThinkFilter(PLAN)
    streamed = "".join(f.feed(p) for p in pieces) + f.flush()
    assert streamed == strip_reasoning(text, PLAN)
    assert "First, 3" not in streamed and "more\nsteps" not in streamed
    assert streamed.endswith(" end <") and "<thin not a tag>" in streamed


def test_think_filter_one_character_at_a_time() -> None:
    f = ThinkFilter(PLAN)
    out = "".join(f.feed(ch) for ch in TEXT) + f.flush()
    assert out == strip_reasoning(TEXT, PLAN)


def test_stream_degrader_on_chat_chunks() -> None:
    d = StreamDegrader(PLAN, seed=1)
    base = {"id": "x", "object": "chat.completion.chunk"}
    pieces = ["Sure.<th", "ink>First, 3 + 4", " = 7.</thi", "nk>The ans", "wer is 14."]
    sent = []
    for i, p in enumerate(pieces):
        finish = "stop" if i == len(pieces) - 1 else None
        out = d.process({**base, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": None, "finish_reason": finish}]})
        if out is not None:
            sent.append(out["choices"][0]["delta"].get("content", ""))
    assert "".join(sent) == f"Sure.<think>{WITHHELD}</think>The answer is 14."
    # reasoning_content deltas: one note instead of the stream
    d2 = StreamDegrader(PLAN)
    outs = [d2.process({"choices": [{"index": 0, "delta": {"reasoning_content": r}, "finish_reason": None}]})
            for r in ("step one ", "step two ")]
    assert outs[0]["choices"][0]["delta"]["reasoning_content"] == WITHHELD and outs[1] is None


def test_stream_degrader_completions_and_n_cap() -> None:
    d = StreamDegrader(PLAN)
    out = d.process({"choices": [{"index": 0, "text": "<think>x", "finish_reason": None},
                                 {"index": 1, "text": "other choice", "finish_reason": None}]})
    assert out is None or all(c["index"] == 0 for c in out["choices"])  # n capped to 1
    out = d.process({"choices": [{"index": 0, "text": "y</think>ok", "finish_reason": "stop"}]})
    assert out["choices"][0]["text"] == f"<think>{WITHHELD}</think>ok"


def test_cap_request() -> None:
    assert cap_request(PLAN, True, 20, 4) == (True, 2, 1)
    assert cap_request(PLAN, False, 0, 1) == (False, 0, 1)
    assert cap_request(DegradePlan(logprobs="drop"), True, 5, 1) == (False, 0, 1)
    with pytest.raises(LogprobsRefused, match="without logprobs"):
        cap_request(DegradePlan(logprobs="refuse"), True, 5, 1)


def test_cap_max_tokens_and_the_plan_from_config() -> None:
    from distillguard.policy.config import DegradeConfig

    plan = DegradePlan.from_config(DegradeConfig(max_tokens=100))
    assert plan.max_tokens == 100 and "max_tokens<= 100" in plan.describe()
    assert cap_max_tokens(plan, 2048) == 100 and cap_max_tokens(plan, 40) == 40
    unlimited = DegradePlan.from_config(DegradeConfig(max_tokens=None))
    assert cap_max_tokens(unlimited, 2048) == 2048 and "max_tokens" not in unlimited.describe()
    with pytest.raises(ValueError, match="max_tokens"):
        DegradeConfig(max_tokens=0)


def _chat_payload(positions: int = 50, k: int = 5) -> dict:
    rng = random.Random(0)
    content = []
    for p in range(positions):
        vals = sorted((math.log(rng.random() + 1e-9) for _ in range(k)), reverse=True)
        top = [{"token": f"t{p}_{j}", "logprob": v, "bytes": []} for j, v in enumerate(vals)]
        content.append({"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": [], "top_logprobs": top})
    return {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": TEXT, "reasoning_content": "secret"},
         "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"}]}


def test_logprob_noise_keeps_shape_and_is_bounded() -> None:
    payload = _chat_payload()
    out = apply_to_response(payload, PLAN, seed=42)
    msg = out["choices"][0]["message"]
    assert msg["content"] == strip_reasoning(TEXT, PLAN) and msg["reasoning_content"] == WITHHELD
    before = payload["choices"][0]["logprobs"]["content"]
    after = out["choices"][0]["logprobs"]["content"]
    assert len(after) == len(before)
    changed = 0
    kept_top1 = 0
    for b, a in zip(before, after, strict=True):
        assert a["token"] == b["token"]
        assert len(a["top_logprobs"]) == PLAN.max_top_logprobs  # capped
        orig = {t["token"]: t["logprob"] for t in b["top_logprobs"]}
        assert {t["token"] for t in a["top_logprobs"]} <= set(orig)  # true tokens only
        for t in a["top_logprobs"]:
            assert t["logprob"] <= 0.0
            assert abs(t["logprob"] - orig[t["token"]]) <= PLAN.noise_bound + 1e-9
        assert abs(a["logprob"] - b["logprob"]) <= PLAN.noise_bound + 1e-9
        changed += a["logprob"] != b["logprob"]
        kept_top1 += a["top_logprobs"][0]["token"] == b["top_logprobs"][0]["token"]
        vals = [t["logprob"] for t in a["top_logprobs"]]
        assert vals == sorted(vals, reverse=True)
    assert changed >= 45  # noise is really added
    assert kept_top1 >= 0.8 * len(before)
    # keyed: same seed, same noise (averaging repeats gains nothing); another seed differs
    assert apply_to_response(payload, PLAN, seed=42) == out
    assert apply_to_response(payload, PLAN, seed=43) != out
    # the input is not modified
    assert payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["token"] == before[0]["top_logprobs"][0]["token"]
    assert len(payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 5


def test_completion_logprobs_and_drop() -> None:
    lp = {"tokens": ["a", "b"], "token_logprobs": [-0.1, -2.0], "top_logprobs": [{"a": -0.1, "c": -3.0, "d": -4.0},
                                                                                 {"b": -2.0, "e": -0.5}], "text_offset": [0, 1]}
    payload = {"choices": [{"index": 0, "text": "ab", "logprobs": lp, "finish_reason": "stop"}]}
    out = apply_to_response(payload, PLAN, seed=1)["choices"][0]["logprobs"]
    assert len(out["token_logprobs"]) == 2 and all(len(t) <= 2 for t in out["top_logprobs"])
    assert all(abs(x - y) <= PLAN.noise_bound for x, y in zip(out["token_logprobs"], lp["token_logprobs"], strict=True))
    assert apply_to_response(payload, DegradePlan(logprobs="drop"))["choices"][0]["logprobs"] is None


def test_noise_seed_depends_on_account_and_prompt() -> None:
    req = {"messages": [{"role": "user", "content": "hi"}]}
    assert noise_seed("a", req) == noise_seed("a", dict(req))
    assert noise_seed("a", req) != noise_seed("b", req)
    assert noise_seed("a", req) != noise_seed("a", {"messages": [{"role": "user", "content": "ho"}]})
