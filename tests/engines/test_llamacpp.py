"""LlamaCppEngine on the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from distillguard.engines.base import EngineError, SamplingParams

from .conftest import collect, run

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_short_generation(smollm2: Any) -> None:
    r = run(smollm2.generate("The capital of France is", SamplingParams(max_tokens=8, temperature=0)))
    assert r.choices[0].text.startswith(" Paris")


def test_chat_matches_llama_cpp_python(smollm2: Any) -> None:
    # same chat template, same tokens, same greedy text as the library's own chat completion
    r = run(smollm2.generate(QUESTION, SamplingParams(max_tokens=20, temperature=0)))
    (c,) = r.choices
    with smollm2.lock:
        ref = smollm2.llm.create_chat_completion(QUESTION, max_tokens=20, temperature=0)
    assert c.text == ref["choices"][0]["message"]["content"]
    assert r.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert r.prompt_tokens == smollm2.count_prompt_tokens(QUESTION) == 37
    assert 0 < r.completion_tokens <= 20 and c.finish_reason in ("stop", "length")
    short = run(smollm2.generate(QUESTION, SamplingParams(max_tokens=3, temperature=0)))
    assert short.choices[0].finish_reason == "length" and short.completion_tokens == 3
    assert c.text.startswith(short.choices[0].text)


def test_prompt_tokens_match_the_hf_tokenizer(smollm2: Any, tiny: Any) -> None:
    # the tiny model carries SmolLM2's tokenizer: both engines must agree token for token
    for prompt in (QUESTION, "Once upon a time", "naïve café 🙂 <|im_end|>"):
        assert smollm2.encode_prompt(prompt) == tiny.encode_prompt(prompt)


def test_stream_matches_generate(smollm2: Any) -> None:
    params = dict(max_tokens=16, temperature=0.8, seed=3, n=2)
    r = run(smollm2.generate(QUESTION, SamplingParams(**params)))
    chunks = run(collect(smollm2.stream(QUESTION, SamplingParams(**params))))
    for i, choice in enumerate(r.choices):
        mine = [c for c in chunks if c.index == i]
        assert "".join(c.text for c in mine) == choice.text and len(mine) > 3
        assert mine[-1].finish_reason == choice.finish_reason
    assert r.choices[0].text != r.choices[1].text  # seed + i
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (r.prompt_tokens, r.completion_tokens)


def test_forcing_logits_processor_is_obeyed(smollm2: Any) -> None:
    forced = smollm2.encode_prompt(" Lyon")[0]
    calls: list[int] = []

    def force(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        calls.append(len(ids))
        assert scores.shape == (smollm2.llm.n_vocab(),) and scores.dtype == np.float32
        out = np.full_like(scores, -np.inf)
        out[forced] = 0.0
        return out

    r = run(smollm2.generate(QUESTION, SamplingParams(max_tokens=3, temperature=1.0, seed=1, logits_processors=[force])))
    assert r.choices[0].token_ids == [forced] * 3
    assert calls == [37, 38, 39]


def test_logprobs(smollm2: Any) -> None:
    r = run(smollm2.generate(QUESTION, SamplingParams(max_tokens=6, temperature=0, logprobs=True, top_logprobs=4)))
    (c,) = r.choices
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) == r.completion_tokens
    for lp in c.logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 4
        assert lp.top[0] == (lp.token, pytest.approx(lp.logprob))  # greedy = top token
    probs = np.exp([v for _, v in c.logprobs[0].top])
    assert probs.sum() <= 1.0 + 1e-5
    # asking for logprobs does not change what is sampled
    plain = run(smollm2.generate(QUESTION, SamplingParams(max_tokens=6, temperature=0)))
    assert plain.choices[0].token_ids == c.token_ids


def test_missing_model_file(tmp_path: Any) -> None:
    from distillguard.engines.llamacpp import LlamaCppEngine

    with pytest.raises(EngineError, match="does not exist"):
        LlamaCppEngine(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(EngineError, match="could not load"):
        LlamaCppEngine(bad)


def test_a_failing_processor_is_not_silently_skipped(smollm2: Any) -> None:
    # exceptions cannot cross llama.cpp's C callback; the engine must re-raise, not sample raw
    def broken(ids: np.ndarray, s: np.ndarray) -> np.ndarray:
        raise RuntimeError("processor bug")

    with pytest.raises(RuntimeError, match="processor bug"):
        run(smollm2.generate(QUESTION, SamplingParams(max_tokens=3, logits_processors=[broken])))
    with pytest.raises(ValueError, match="shape"):
        run(smollm2.generate(QUESTION, SamplingParams(max_tokens=3, logits_processors=[lambda ids, s: s[:10]])))
    assert run(smollm2.generate(QUESTION, SamplingParams(max_tokens=2, seed=0))).completion_tokens == 2


def test_prefix_cache_does_not_change_seeded_results(smollm2: Any) -> None:
    params = SamplingParams(max_tokens=6, seed=9, logprobs=True, top_logprobs=2)
    outputs = []
    for before in ([{"role": "user", "content": "What is the capital of Spain?"}], QUESTION, "unrelated"):
        run(smollm2.generate(before, SamplingParams(max_tokens=1, seed=1)))  # leaves its KV cache behind
        r = run(smollm2.generate(QUESTION, params)).choices[0]
        outputs.append((r.token_ids, [lp.logprob for lp in r.logprobs]))
    assert smollm2.reuse_prefix and outputs[0] == outputs[1] == outputs[2]
