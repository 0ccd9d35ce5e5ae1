"""The real SmolLM2-135M-Instruct on llama.cpp behind the gateway (the default `serve` set-up)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from distillguard.gateway.app import create_app

from .conftest import live_server

pytestmark = pytest.mark.slow


def test_smollm2_through_the_gateway(settings: Any, store: Any) -> None:
    pytest.importorskip("llama_cpp")
    settings.engine.n_threads = 2
    _, secret = store.create_key("acme", "standard")
    app = create_app(settings, store=store)  # engine built from settings: llamacpp + SmolLM2 GGUF
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16, temperature=0, seed=1)
        text = r.choices[0].message.content or ""
        assert text.strip() and r.usage is not None
        assert r.usage.prompt_tokens > 10 and 1 <= r.usage.completion_tokens <= 16
        assert "paris" in text.lower()
        # same request streamed at temperature 0: same text, usage at the end
        stream = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16, temperature=0, seed=1,
                                                stream=True, stream_options={"include_usage": True})
        streamed, usage = "", None
        for chunk in stream:
            usage = chunk.usage or usage
            streamed += "".join(c.delta.content or "" for c in chunk.choices)
        assert streamed == text and usage is not None and usage.completion_tokens == r.usage.completion_tokens
        lp = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, logprobs=True, top_logprobs=2)
        assert lp.choices[0].logprobs is not None and lp.choices[0].logprobs.content
        assert all(t.logprob <= 0 for t in lp.choices[0].logprobs.content)
        assert app.state.writer.flush(10)
    evs = list(store.iter_events())
    assert len(evs) == 3 and all(e.status == 200 for e in evs) and evs[0].response.text == text
