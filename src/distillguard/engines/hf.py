"""The transformers engine: a float model with logits, for training, audits and tests.

    engine = HFEngine("path/to/hf_folder")                      # any local causal-LM folder
    engine = HFEngine(smollm2_gguf())                           # a GGUF file, dequantised to float32
    engine.model, engine.tokenizer                              # for training code
    engine.logits("some text")                                  # [T, vocab] next-token scores

Decoding is a plain loop over the KV cache with NumPy sampling (``sampling.sample``) rather
than ``model.generate``: the request's logits processors see exactly the scores that are
sampled from, seeded runs are reproducible (a ``numpy.random.Generator`` per choice), and the
same code path serves streaming and non-streaming.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from distillguard.engines.base import EngineError, Prompt, SamplingParams
from distillguard.engines.local import LocalEngine
from distillguard.engines.sampling import apply_processors, sample
from distillguard.engines.textstream import DiffDetokenizer

_END_MARKERS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


class HFEngine(LocalEngine):
    """transformers ``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local folder or GGUF file.

    Args:
        model_path: an HF model folder, or a ``.gguf`` file (loaded as a float model).
        model_name: the id clients send; defaults to the folder or file stem.
        n_ctx: longest context accepted; defaults to the model's ``max_position_embeddings``.
        n_threads: torch intra-op threads (``torch.set_num_threads``; process-wide).
        dtype: torch dtype name for the weights ("float32" default; "bfloat16" halves memory).
    """

    def __init__(
        self,
        model_path: str | Path,
        model_name: str | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        dtype: str = "float32",
    ):
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        if not path.exists():
            raise EngineError(f"model path {path} does not exist; give an HF model folder or a .gguf file")
        if n_threads:
            torch.set_num_threads(n_threads)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if path.is_file():
            if path.suffix != ".gguf":
                raise EngineError(f"{path} is a file but not a .gguf; give a .gguf file or an HF model folder")
            folder, kwargs["gguf_file"] = path.parent, path.name
        else:
            if not (path / "config.json").is_file():
                raise EngineError(f"{path} has no config.json; it is not a transformers model folder")
            folder = path
        self.model_path = path
        self.model_name = model_name or path.stem
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **kwargs)
        self.model.eval()
        self._torch = torch
        max_pos = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.context_length = min(n_ctx, max_pos) if n_ctx else max_pos
        self._end_ids = self._collect_end_ids()

    # ---- accessors for training and audits -------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def encode(self, text: str) -> list[int]:
        """Raw text to ids (special tokens added as the tokenizer does for raw completions)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    @overload
    def logits(self, inputs: str | Sequence[int]) -> np.ndarray: ...
    @overload
    def logits(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[np.ndarray]: ...

    def logits(self, inputs: Any) -> np.ndarray | list[np.ndarray]:
        """Next-token scores ``[T, vocab]`` (float32) at every position of a text or id list;
        given a list of texts (or of id lists), a list of such arrays."""
        if not isinstance(inputs, str) and len(inputs) and not isinstance(inputs[0], (int, np.integer)):
            return [self.logits(x) for x in inputs]
        ids = self.encode(inputs) if isinstance(inputs, str) else [int(i) for i in inputs]
        if not ids:
            raise EngineError("logits() needs at least one token")
        torch = self._torch
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]))
        return out.logits[0].float().numpy()

    def completion_logprobs(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> np.ndarray:
        """log p(completion token | everything before it), one value per completion token."""
        ids = list(prompt_ids) + list(completion_ids)
        if not prompt_ids or not completion_ids:
            raise EngineError("completion_logprobs() needs a non-empty prompt and completion")
        torch = self._torch
        with self.lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
        return logp.gather(1, torch.tensor(list(completion_ids))[:, None])[:, 0].numpy()

    # ---- LocalEngine hooks ---------------------------------------------------------------------

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.encode(prompt)
        if not self.tokenizer.chat_template:
            raise EngineError(f"model {self.model_name} has no chat template; use /v1/completions with raw text")
        try:
            text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja errors on malformed messages
            raise EngineError(f"could not apply the chat template to these messages: {exc}") from exc
        # the template writes any BOS itself
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sample_tokens(
        self, prompt_ids: list[int], params: SamplingParams, seed: int, want_scores: bool
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        torch = self._torch
        rng = np.random.default_rng(seed)
        seen = np.empty(self.context_length + 1, dtype=np.intc)
        seen[: len(prompt_ids)] = prompt_ids
        n = len(prompt_ids)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
            while True:
                scores = out.logits[0, -1].float().numpy()
                if params.logits_processors:
                    scores = apply_processors(params.logits_processors, seen[:n], scores)
                token = sample(scores, params.temperature, params.top_p, rng)
                yield token, (scores if want_scores else None)
                seen[n] = token
                n += 1
                out = self.model(
                    input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True
                )

    def _detokenizer(self) -> DiffDetokenizer:
        return DiffDetokenizer(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def is_end_token(self, token_id: int) -> bool:
        return token_id in self._end_ids

    def tokenizer_id(self) -> str:
        return f"{type(self.tokenizer).__name__}:{len(self.tokenizer)}:{self.tokenizer.eos_token}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "path": str(self.model_path), "context_length": self.context_length}

    def _collect_end_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        # Like llama.cpp's end-of-generation list: chat models often end a turn with a marker
        # that is not the configured EOS (SmolLM2 from GGUF: <|im_end|> is, <|endoftext|> is not).
        vocab = self.tokenizer.get_vocab()
        special = set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab())
        ids.update(vocab[t] for t in _END_MARKERS if t in vocab and t in special)
        if not ids:
            raise EngineError(f"model {self.model_name} defines no end-of-sequence token")
        return ids
