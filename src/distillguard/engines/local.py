"""What the in-process engines (llama.cpp, transformers) share: the decode loop around one model.

A subclass supplies four things: how to turn a prompt into token ids, a blocking generator of
sampled tokens (with the processed scores when logprobs are wanted), a detokenizer, and which
ids end generation. Everything request-shaped lives here, once: ``n`` choices with seeds
``seed + i``, stop strings, ``max_tokens`` and finish reasons, logprobs, usage, and the bridge
from the model's thread to asyncio.

Threading: the model is not thread-safe, so all model work runs on one dedicated worker thread
(a single-thread executor) and, for callers that use the sync API directly, under ``self.lock``.
Waiting requests queue on that executor, not on the event loop or asyncio's default pool.
"""

from __future__ import annotations

import asyncio
import random
import threading
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from distillguard.engines.base import (
    Choice,
    Engine,
    EngineError,
    GenerationResult,
    Prompt,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
)
from distillguard.engines.sampling import log_softmax, token_logprob, validate
from distillguard.engines.textstream import (
    ByteDetokenizer,
    DiffDetokenizer,
    StopScanner,
)


@dataclass
class Piece:
    """One step of one choice: text that became safe to emit, and the tokens behind it."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0  # set on a finishing piece: tokens sampled for this choice


class LocalEngine(Engine):
    supports_logprobs = True
    supports_logits_processors = True

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)

    # ---- what a subclass provides -------------------------------------------------------

    @abstractmethod
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of the prompt, chat template applied to message lists."""

    @abstractmethod
    def _sample_tokens(
        self, prompt_ids: list[int], params: SamplingParams, seed: int, want_scores: bool
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """Yield sampled token ids forever (the caller stops it), each with the scores after the
        request's logits processors when ``want_scores``. Called with ``self.lock`` held."""

    @abstractmethod
    def _detokenizer(self) -> ByteDetokenizer | DiffDetokenizer: ...

    @abstractmethod
    def token_text(self, token_id: int) -> str: ...

    @abstractmethod
    def is_end_token(self, token_id: int) -> bool: ...

    # ---- the Engine interface ------------------------------------------------------------

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    async def generate(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._generate_sync, prompt, params, cancelled)
        except asyncio.CancelledError:
            cancelled.set()  # the worker stops at the next token and frees the model
            raise

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[StreamChunk]:
        validate(params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Piece | GenerationResult | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed: nobody is listening any more
                cancelled.set()

        def produce() -> None:
            try:
                if not cancelled.is_set():
                    put(self._run(prompt, params, cancelled, on_piece=put))
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        loop.run_in_executor(self._executor, produce)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, GenerationResult):
                    return
                chunk = StreamChunk(
                    index=item.index, text=item.text, finish_reason=item.finish_reason, logprobs=item.logprobs
                )
                if item.finish_reason is not None and item.index == params.n - 1:
                    # the last choice's finishing chunk ends the stream and carries usage
                    result = await queue.get()
                    if isinstance(result, BaseException):
                        raise result
                    assert isinstance(result, GenerationResult)
                    chunk.prompt_tokens = result.prompt_tokens
                    chunk.completion_tokens = result.completion_tokens
                    yield chunk
                    return
                yield chunk
        finally:
            cancelled.set()

    def generate_sync(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        """Blocking generation, for scripts, benchmarks and training code (not the event loop)."""
        return self._generate_sync(prompt, params, threading.Event())

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the decode loop -------------------------------------------------------------------

    def _generate_sync(self, prompt: Prompt, params: SamplingParams, cancelled: threading.Event) -> GenerationResult:
        return self._run(prompt, params, cancelled, on_piece=None)

    def _run(self, prompt: Prompt, params: SamplingParams, cancelled: threading.Event, on_piece) -> GenerationResult:
        validate(params)
        prompt_ids = self.encode_prompt(prompt)
        if len(prompt_ids) >= self.context_length:
            raise EngineError(
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {self.context_length} tokens"
            )
        base_seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**31)
        choices: list[Choice] = []
        completion_tokens = 0
        with self.lock:
            for i in range(params.n):
                texts: list[str] = []
                ids: list[int] = []
                lps: list[TokenLogprob] | None = [] if params.logprobs else None
                finish = "length"
                sampled = 0
                for piece in self._choice(prompt_ids, params, i, base_seed + i, cancelled):
                    texts.append(piece.text)
                    ids.extend(piece.token_ids)
                    if lps is not None and piece.logprobs:
                        lps.extend(piece.logprobs)
                    if piece.finish_reason is not None:
                        finish, sampled = piece.finish_reason, piece.completion_tokens
                    if on_piece is not None:
                        on_piece(piece)
                    if cancelled.is_set():
                        raise asyncio.CancelledError()
                completion_tokens += sampled
                choices.append(Choice(text="".join(texts), finish_reason=finish, token_ids=ids, logprobs=lps))
        return GenerationResult(choices=choices, prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens)

    def _choice(
        self, prompt_ids: list[int], params: SamplingParams, index: int, seed: int, cancelled: threading.Event
    ) -> Iterator[Piece]:
        budget = min(params.max_tokens, self.context_length - len(prompt_ids))
        detok = self._detokenizer()
        scanner = StopScanner(params.stop)
        # tokens not yet handed out, with the text offset where each one starts
        held: list[tuple[int, int, TokenLogprob | None]] = []
        sampled = 0
        finish = "length"

        def release(upto: int) -> tuple[list[int], list[TokenLogprob] | None]:
            nonlocal held
            out = [h for h in held if h[0] < upto]
            held = held[len(out) :]
            lps = [h[2] for h in out if h[2] is not None] if params.logprobs else None
            return [h[1] for h in out], lps

        steps = self._sample_tokens(prompt_ids, params, seed, want_scores=params.logprobs)
        try:
            for token, scores in steps:
                if cancelled.is_set() or self.is_end_token(token):
                    finish = "stop"
                    break
                sampled += 1
                lp = None
                if params.logprobs and scores is not None:
                    lp = token_logprob(log_softmax(scores), token, params.top_logprobs, self.token_text)
                held.append((len(scanner.text), token, lp))
                text = scanner.feed(detok.add(token))
                if scanner.stopped:
                    finish = "stop"
                    break
                if text:
                    ids, lps = release(scanner.emitted)
                    yield Piece(index=index, text=text, token_ids=ids, logprobs=lps)
                if sampled >= budget:
                    break
        finally:
            steps.close()
        tail = "" if scanner.stopped else scanner.feed(detok.flush())
        if not scanner.stopped:
            tail += scanner.flush()
        else:
            finish = "stop"
        # after a stop, tokens that start inside the cut-off stop string are not part of the text
        ids, lps = release(scanner.emitted if scanner.stopped else len(scanner.text) + 1)
        yield Piece(
            index=index, text=tail, token_ids=ids, logprobs=lps, finish_reason=finish, completion_tokens=sampled
        )
