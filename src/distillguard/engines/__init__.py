"""Model engines behind one interface (see base.py)."""

from distillguard.engines.base import (
    Choice,
    Engine,
    EngineError,
    GenerationResult,
    LogitsProcessor,
    Prompt,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "Choice",
    "Engine",
    "EngineError",
    "GenerationResult",
    "LogitsProcessor",
    "Prompt",
    "SamplingParams",
    "StreamChunk",
    "TokenLogprob",
    "UpstreamError",
    "UpstreamTimeout",
]
