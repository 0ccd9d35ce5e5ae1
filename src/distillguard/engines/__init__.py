"""Model engines behind one interface (see base.py).

    build_engine(settings.engine)            factory.py: kind = llamacpp | hf | openai
    LlamaCppEngine(model_path=None, model_name="smollm2", n_ctx=2048, n_threads=None)
    HFEngine(model_path, model_name=None, n_ctx=None, n_threads=None, dtype="float32")
    OpenAIUpstreamEngine(base_url, api_key=None, model=..., timeout_s=120, model_name=None)
    make_tiny_model(out_dir) -> folder for HFEngine           tiny.py: fast tests, offline

For callers:
- ``await engine.generate(prompt, params)`` / ``async for chunk in engine.stream(...)``; a prompt
  is OpenAI chat messages (chat template applied) or raw text. Bad parameters raise
  ``EngineError`` (on the first ``__anext__`` for streams, before any chunk).
- Logits processors go in ``SamplingParams.logits_processors``: ``f(input_ids, scores) ->
  scores`` over NumPy (int32 ids of prompt + generated so far; float32 scores over the whole
  vocabulary), applied in order before temperature/top-p. Only the local engines run them
  (``supports_logits_processors``); the upstream engine raises ``EngineError`` rather than
  ignore them. A processor that raises fails the request with its own exception.
- Local engines serialise all model work on one worker thread per engine, so the event loop is
  never blocked and concurrent requests queue; ``generate_sync`` is the blocking form for
  scripts. Streams that the consumer closes early stop at the next token.
- Usage: ``prompt_tokens == count_prompt_tokens(prompt)`` on local engines; streams carry it on
  the last chunk (``chunk.prompt_tokens is not None``). ``completion_tokens`` counts every sampled
  token except the end-of-sequence one, including tokens of a stop string that was cut off.
- Logprobs are log-softmax of the processed scores, before temperature and top-p.
"""

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
