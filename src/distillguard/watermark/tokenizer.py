"""The tokenizer detection needs: text -> the token ids the serving engine would have produced.

Detection must see the same ids the generator saw, so it uses the served model's own tokenizer.
For the default GGUF we load only its vocabulary through llama.cpp (milliseconds, no weights);
for an HF folder we use its transformers tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


@dataclass
class _LlamaVocab:
    name: str
    vocab_size: int
    _llm: Any

    def encode(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


@dataclass
class _HFTokenizer:
    name: str
    vocab_size: int
    _tok: Any

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])


_CACHE: dict[str, Tokenizer] = {}


def load_tokenizer(model_path: Path | str | None = None) -> Tokenizer:
    """Tokenizer of a GGUF file or HF folder; default: the served SmolLM2 GGUF."""
    if model_path is None:
        from distillguard.models import smollm2_gguf

        model_path = smollm2_gguf()
    p = Path(model_path)
    key = str(p.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if not p.exists():
        raise FileNotFoundError(f"tokenizer source {p} does not exist: give a GGUF file or an HF model folder")
    tok: Tokenizer
    if p.is_file() and p.suffix == ".gguf":
        from llama_cpp import Llama

        llm = Llama(model_path=str(p), vocab_only=True, verbose=False)
        tok = _LlamaVocab(name=p.stem, vocab_size=int(llm.n_vocab()), _llm=llm)
    elif p.is_dir():
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(str(p))
        tok = _HFTokenizer(name=p.name, vocab_size=len(t), _tok=t)
    else:
        raise ValueError(f"cannot read a tokenizer from {p}: give a .gguf file or an HF model folder")
    _CACHE[key] = tok
    return tok


def from_hf(tokenizer: Any, name: str = "hf") -> Tokenizer:
    """Wrap an already-loaded transformers tokenizer (tests, the HF engine)."""
    return _HFTokenizer(name=name, vocab_size=len(tokenizer), _tok=tokenizer)
