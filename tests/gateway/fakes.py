"""A small deterministic Engine for the gateway's fast tests (the gateway is what is under test).

Tokens are whitespace words. The reply cycles through REPLY_WORDS; with ``max_tokens`` smaller than
the reply it stops with finish_reason "length". ``delay_s`` makes each token take that long (for
shutdown and disconnect tests). Logprobs are derived from the token so tests can check shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from distillguard.engines.base import (
    Choice,
    Engine,
    GenerationResult,
    Prompt,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    ensure_stop,
)

REPLY_WORDS = ["Hello", "from", "the", "fake", "engine", "."]


class FakeEngine(Engine):
    supports_logprobs = True
    supports_logits_processors = True

    def __init__(self, model_name: str = "smollm2", delay_s: float = 0.0, context_length: int = 2048) -> None:
        self.model_name = model_name
        self.delay_s = delay_s
        self.context_length = context_length
        self.calls: list[SamplingParams] = []

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        if isinstance(prompt, str):
            return max(1, len(prompt.split()))
        return 3 + sum(len(str(m.get("content", "")).split()) + 1 for m in prompt)

    def _tokens(self, params: SamplingParams) -> tuple[list[str], str]:
        words = [(" " if i else "") + REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(min(params.max_tokens, len(REPLY_WORDS)))]
        text, stopped = ensure_stop("".join(words), params.stop)
        if stopped:
            kept, acc = [], ""
            for w in words:
                if len(acc + w) > len(text):
                    break
                acc += w
                kept.append(w)
            return kept, "stop"
        return words, "stop" if params.max_tokens >= len(REPLY_WORDS) else "length"

    def _lp(self, tok: str, params: SamplingParams) -> TokenLogprob:
        top = [(tok, -0.1)] + [(f"alt{j}", -1.0 - j) for j in range(max(0, params.top_logprobs - 1))]
        return TokenLogprob(token=tok, logprob=-0.1, top=top[: params.top_logprobs])

    async def generate(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        self.calls.append(params)
        choices = []
        total = 0
        for _ in range(params.n):
            toks, finish = self._tokens(params)
            if self.delay_s:
                await asyncio.sleep(self.delay_s * len(toks))
            total += len(toks)
            lps = [self._lp(t, params) for t in toks] if params.logprobs else None
            choices.append(Choice(text="".join(toks), finish_reason=finish, logprobs=lps))
        return GenerationResult(choices=choices, prompt_tokens=self.count_prompt_tokens(prompt), completion_tokens=total)

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[StreamChunk]:
        self.calls.append(params)
        total = 0
        for i in range(params.n):
            toks, finish = self._tokens(params)
            for j, t in enumerate(toks):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                total += 1
                last = j == len(toks) - 1
                chunk = StreamChunk(index=i, text=t, finish_reason=finish if last else None,
                                    logprobs=[self._lp(t, params)] if params.logprobs else None)
                if last and i == params.n - 1:
                    chunk.prompt_tokens = self.count_prompt_tokens(prompt)
                    chunk.completion_tokens = total
                yield chunk
