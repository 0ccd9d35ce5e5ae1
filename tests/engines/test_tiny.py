"""make_tiny_model: a random Llama body with SmolLM2's real tokenizer, cached."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.engines.tiny import make_tiny_model


def test_folder_is_a_complete_transformers_model(tiny_dir: Path, tiny: Any) -> None:
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tiny_dir / name).is_file(), name
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64
    assert cfg["vocab_size"] == len(tiny.tokenizer) == 49152
    assert tiny.tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tiny.is_end_token(0) and tiny.is_end_token(2) and not tiny.is_end_token(1)


def test_reused_when_present(tiny_dir: Path) -> None:
    before = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    assert make_tiny_model(tiny_dir) == tiny_dir
    assert time.perf_counter() - t < 1.0
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == before


def test_seed_and_shape_change_the_model(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    other = make_tiny_model(tmp_path / "other", seed=1, n_layers=1, hidden=32)
    a = load_file(tiny_dir / "model.safetensors")["model.embed_tokens.weight"]
    b = load_file(other / "model.safetensors")["model.embed_tokens.weight"]
    assert a.shape == (49152, 64) and b.shape == (49152, 32)
    again = make_tiny_model(tmp_path / "other", seed=2, n_layers=1, hidden=32)  # different seed: rebuilt
    c = load_file(again / "model.safetensors")["model.embed_tokens.weight"]
    assert not np.array_equal(b, c)
    assert json.loads((again / "tiny.json").read_text())["seed"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
