"""HFEngine on the tiny random model: the request semantics every local engine shares."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from distillguard.engines.base import EngineError, SamplingParams

from .conftest import CHAT, collect, run


def gen(engine: Any, prompt: Any = CHAT, **kw: Any) -> Any:
    return run(engine.generate(prompt, SamplingParams(**kw)))


def test_generate_reports_usage_and_length(tiny: Any) -> None:
    r = gen(tiny, max_tokens=6, seed=1)
    (c,) = r.choices
    assert r.prompt_tokens == tiny.count_prompt_tokens(CHAT) == len(tiny.encode_prompt(CHAT))
    assert c.finish_reason == "length" and r.completion_tokens == 6 and len(c.token_ids) == 6
    assert c.text == tiny.tokenizer.decode(c.token_ids, skip_special_tokens=True) and c.text


def test_chat_template_is_applied(tiny: Any) -> None:
    ids = tiny.encode_prompt(CHAT)
    text = tiny.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert CHAT[0]["content"] in text
    assert tiny.count_prompt_tokens("plain text") == len(tiny.encode("plain text"))


def test_seeded_sampling_is_deterministic(tiny: Any) -> None:
    a = gen(tiny, max_tokens=12, seed=7)
    b = gen(tiny, max_tokens=12, seed=7)
    c = gen(tiny, max_tokens=12, seed=8)
    assert a.choices[0].token_ids == b.choices[0].token_ids
    assert a.choices[0].token_ids != c.choices[0].token_ids


def test_n_choices_use_seed_plus_i(tiny: Any) -> None:
    r = gen(tiny, max_tokens=8, seed=3, n=3)
    ids = [c.token_ids for c in r.choices]
    assert len(ids) == 3 and len({tuple(x) for x in ids}) == 3
    assert r.completion_tokens == 24
    # choice i is exactly what a single request with seed + i gives
    assert gen(tiny, max_tokens=8, seed=5).choices[0].token_ids == ids[2]


def test_greedy_ignores_the_seed(tiny: Any) -> None:
    a = gen(tiny, max_tokens=8, seed=1, temperature=0)
    b = gen(tiny, max_tokens=8, seed=2, temperature=0)
    assert a.choices[0].token_ids == b.choices[0].token_ids
    assert a.choices[0].token_ids[0] == int(np.argmax(tiny.logits(tiny.encode_prompt(CHAT))[-1]))


def test_stop_string_cuts_text_and_finishes_with_stop(tiny: Any) -> None:
    full = gen(tiny, max_tokens=30, seed=11).choices[0]
    # a stop string spanning the middle of the text (usually across a token boundary)
    mid = len(full.text) // 2
    stop = full.text[mid - 2 : mid + 2]
    cut = full.text.find(stop)
    r = gen(tiny, max_tokens=30, seed=11, stop=[stop, "never-appears"])
    (c,) = r.choices
    assert c.finish_reason == "stop" and c.text == full.text[:cut]
    assert c.token_ids == full.token_ids[: len(c.token_ids)] and len(c.token_ids) < len(full.token_ids)
    # usage counts every sampled token, including those that made up the stop string
    assert len(c.token_ids) < r.completion_tokens <= 30


def test_end_token_finishes_with_stop(tiny: Any) -> None:
    prompt_len = tiny.count_prompt_tokens(CHAT)
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def end_after_three(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if len(ids) >= prompt_len + 3:
            scores = np.full_like(scores, -np.inf)
            scores[im_end] = 0.0
        return scores

    r = gen(tiny, max_tokens=20, seed=1, logits_processors=[end_after_three])
    assert r.choices[0].finish_reason == "stop" and r.completion_tokens == 3 and len(r.choices[0].token_ids) == 3


def test_forcing_logits_processor_is_obeyed(tiny: Any) -> None:
    seen: list[int] = []
    forced = tiny.tokenizer.encode(" blue", add_special_tokens=False)[0]

    def force(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen.append(len(ids))
        assert scores.dtype == np.float32 and scores.shape == (tiny.vocab_size,)
        out = np.full_like(scores, -np.inf)
        out[forced] = 0.0
        return out

    r = gen(tiny, max_tokens=4, seed=2, temperature=1.5, logits_processors=[force])
    assert r.choices[0].token_ids == [forced] * 4 and r.choices[0].text == " blue" * 4
    p = r.prompt_tokens
    assert seen == [p, p + 1, p + 2, p + 3]  # input_ids = prompt + everything generated so far


def test_processors_chain_in_order(tiny: Any) -> None:
    a, b = 100, 200

    def first(ids: np.ndarray, s: np.ndarray) -> np.ndarray:
        s = s.copy()
        s[a] += 1000.0
        return s

    def second(ids: np.ndarray, s: np.ndarray) -> np.ndarray:
        s = s.copy()
        s[b] += 2000.0
        return s

    r = gen(tiny, max_tokens=2, temperature=0, logits_processors=[first, second])
    assert r.choices[0].token_ids == [b, b]


def test_logprobs_shape_and_values(tiny: Any) -> None:
    r = gen(tiny, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    (c,) = r.choices
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) == 5
    for tok_id, lp in zip(c.token_ids, c.logprobs, strict=True):
        assert lp.token == tiny.token_text(tok_id) and lp.logprob <= 0
        assert len(lp.top) == 3 and [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.top[0] == (lp.token, pytest.approx(lp.logprob))  # greedy picks the top token
    # the same numbers from a full forward pass (no KV cache)
    full = tiny.completion_logprobs(tiny.encode_prompt(CHAT), c.token_ids)
    np.testing.assert_allclose(full, [lp.logprob for lp in c.logprobs], atol=1e-4)
    assert gen(tiny, max_tokens=3, seed=1).choices[0].logprobs is None


def test_logprobs_are_of_the_processed_scores(tiny: Any) -> None:
    def halve_vocab(ids: np.ndarray, s: np.ndarray) -> np.ndarray:
        s = s.copy()
        s[1::2] = -np.inf  # odd ids impossible
        return s

    r = gen(tiny, max_tokens=6, seed=4, logprobs=True, top_logprobs=5, logits_processors=[halve_vocab])
    assert all(t % 2 == 0 for t in r.choices[0].token_ids)
    for lp in r.choices[0].logprobs:
        assert all(np.isfinite(v) for _, v in lp.top)


@pytest.mark.parametrize("kw", [{"seed": 5}, {"seed": 5, "n": 2, "logprobs": True, "top_logprobs": 2}])
def test_stream_matches_generate(tiny: Any, kw: dict[str, Any]) -> None:
    params = dict(max_tokens=16, **kw)
    r = gen(tiny, **params)
    chunks = run(collect(tiny.stream(CHAT, SamplingParams(**params))))
    for i, choice in enumerate(r.choices):
        mine = [c for c in chunks if c.index == i]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine][-1] == choice.finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])
        assert len(mine) > 3  # it streamed, not one lump
        if kw.get("logprobs"):
            assert [lp for c in mine for lp in c.logprobs or []] == choice.logprobs
    assert [c.index for c in chunks] == sorted(c.index for c in chunks)
    last = chunks[-1]
    assert (last.prompt_tokens, last.completion_tokens) == (r.prompt_tokens, r.completion_tokens)
    assert all(c.prompt_tokens is None for c in chunks[:-1])


def test_stream_with_stop_matches_generate(tiny: Any) -> None:
    full = gen(tiny, max_tokens=24, seed=21).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    r = gen(tiny, max_tokens=24, seed=21, stop=[stop])
    chunks = run(collect(tiny.stream(CHAT, SamplingParams(max_tokens=24, seed=21, stop=[stop]))))
    assert "".join(c.text for c in chunks) == r.choices[0].text and stop not in r.choices[0].text
    assert chunks[-1].finish_reason == "stop"


def test_stream_yields_before_generation_ends(tiny: Any) -> None:
    async def first_chunk_then_leave() -> tuple[str, Any]:
        stream = tiny.stream(CHAT, SamplingParams(max_tokens=2000, seed=1))
        first = await stream.__anext__()
        await stream.aclose()  # the client went away: the worker must stop and free the model
        return first.text, await tiny.generate(CHAT, SamplingParams(max_tokens=3, seed=1))

    text, after = asyncio.run(asyncio.wait_for(first_chunk_then_leave(), timeout=60))
    assert text and after.completion_tokens == 3


def test_concurrent_requests_are_serialised(tiny: Any) -> None:
    async def both() -> list[Any]:
        return await asyncio.gather(*(tiny.generate(CHAT, SamplingParams(max_tokens=6, seed=s)) for s in range(4)))

    together = run(both())
    alone = [gen(tiny, max_tokens=6, seed=s) for s in range(4)]
    assert [r.choices[0].token_ids for r in together] == [r.choices[0].token_ids for r in alone]


@pytest.mark.parametrize(
    "kw, fix",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n must"),
        ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ],
)
def test_bad_parameters_raise_engine_error(tiny: Any, kw: dict[str, Any], fix: str) -> None:
    with pytest.raises(EngineError, match=fix):
        gen(tiny, **kw)
    with pytest.raises(EngineError, match=fix):
        run(collect(tiny.stream(CHAT, SamplingParams(**kw))))


def test_prompt_longer_than_context(tiny_dir: Any) -> None:
    from distillguard.engines.hf import HFEngine

    small = HFEngine(tiny_dir, n_ctx=16)
    assert small.context_length == 16
    with pytest.raises(EngineError, match="context"):
        run(small.generate(CHAT, SamplingParams(max_tokens=4)))
    # a prompt that fits but leaves less room than max_tokens ends with "length" at the context
    r = run(small.generate("one two three", SamplingParams(max_tokens=100, seed=0)))
    assert r.choices[0].finish_reason == "length" and r.prompt_tokens + r.completion_tokens == 16


def test_logits_accessor(tiny: Any) -> None:
    ids = tiny.encode("The sky is blue")
    logits = tiny.logits(ids)
    assert logits.shape == (len(ids), tiny.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(tiny.logits("The sky is blue"), logits)
    batch = tiny.logits(["The sky is blue", "Grass"])
    assert len(batch) == 2 and batch[1].shape == (len(tiny.encode("Grass")), tiny.vocab_size)
    np.testing.assert_allclose(batch[0], logits)
    np.testing.assert_allclose(tiny.logits([ids, ids[:2]])[1], logits[:2], atol=1e-5)
    with pytest.raises(EngineError):
        tiny.logits([])


def test_missing_or_wrong_model_path(tmp_path: Any) -> None:
    from distillguard.engines.hf import HFEngine

    with pytest.raises(EngineError, match="does not exist"):
        HFEngine(tmp_path / "nope")
    with pytest.raises(EngineError, match="config.json"):
        HFEngine(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(EngineError, match=".gguf"):
        HFEngine(tmp_path / "weights.bin")


def test_a_failing_processor_fails_the_request(tiny: Any) -> None:
    def broken(ids: np.ndarray, s: np.ndarray) -> np.ndarray:
        raise RuntimeError("processor bug")

    with pytest.raises(RuntimeError, match="processor bug"):
        gen(tiny, max_tokens=3, logits_processors=[broken])
    with pytest.raises(ValueError, match="shape"):
        gen(tiny, max_tokens=3, logits_processors=[lambda ids, s: s[:10]])
    assert gen(tiny, max_tokens=2, seed=0).completion_tokens == 2  # the engine still works
