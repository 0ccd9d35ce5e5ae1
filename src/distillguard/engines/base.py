"""The one interface every model engine implements.

An engine turns a prompt (chat messages or raw text) plus sampling parameters into text and
token usage. Watermarks and countermeasures plug in as per-request *logits processors*: plain
functions over NumPy arrays, so one implementation runs identically on llama.cpp and
transformers:

    processor(input_ids: np.ndarray[int], logits: np.ndarray[float32]) -> np.ndarray[float32]

``input_ids`` holds every token so far (prompt then generated), ``logits`` the next-token scores
for the whole vocabulary. A processor may return new scores, or scores that are ``-inf``
everywhere but one token to force a choice (how a distortion-free sampler is expressed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]

# A prompt is either OpenAI chat messages or raw completion text.
Prompt = list[dict[str, Any]] | str


class EngineError(RuntimeError):
    """The engine could not serve the request (bad parameters it cannot honour)."""


class UpstreamError(EngineError):
    """An upstream engine is down or answered with an error (gateway answers 502)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class UpstreamTimeout(UpstreamError):
    """An upstream engine did not answer in time (gateway answers 504)."""


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    logits_processors: list[LogitsProcessor] = field(default_factory=list)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamChunk:
    """A piece of one choice's text; the last chunk of a choice carries ``finish_reason``."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    # Set on the final chunk of the whole stream (all choices done).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Engine(ABC):
    """A model that generates text. Implementations: llamacpp, hf, openai (upstream)."""

    #: the model id clients pass as ``model``
    model_name: str
    #: whether ``logprobs`` / ``top_logprobs`` can be honoured
    supports_logprobs: bool = False
    #: whether per-request logits processors are applied (False for remote upstreams)
    supports_logits_processors: bool = False
    #: longest context the engine accepts, in tokens
    context_length: int = 2048

    @abstractmethod
    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the prompt will take (chat template applied), used to reserve limits up front."""

    @abstractmethod
    async def generate(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        """Generate ``params.n`` choices."""

    @abstractmethod
    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[StreamChunk]:
        """Yield chunks as tokens are produced; the last chunk carries usage."""

    def tokenizer_id(self) -> str:
        """Something that identifies the tokenizer, to refuse mixing incompatible ones."""
        return self.model_name

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP clients, model memory)."""

    def info(self) -> dict[str, Any]:
        return {"engine": type(self).__name__, "model": self.model_name}


def ensure_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; return (text, stopped)."""
    cut = None
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1 and (cut is None or i < cut):
                cut = i
    return (text, False) if cut is None else (text[:cut], True)
