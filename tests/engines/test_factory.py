"""build_engine: the configured kind, or an error that says what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distillguard.config import EngineConfig
from distillguard.engines.base import EngineError
from distillguard.engines.factory import build_engine


def test_hf_from_a_folder(tiny_dir: Path) -> None:
    from distillguard.engines.hf import HFEngine

    e = build_engine(EngineConfig(kind="hf", model_path=tiny_dir, model_name="tiny", n_ctx=512))
    assert isinstance(e, HFEngine) and e.model_name == "tiny" and e.context_length == 512


def test_openai_needs_an_upstream_url() -> None:
    with pytest.raises(EngineError, match="upstream_url"):
        build_engine(EngineConfig(kind="openai"))


def test_openai_upstream_model_defaults_to_model_name() -> None:
    from distillguard.engines.openai_upstream import OpenAIUpstreamEngine

    e = build_engine(EngineConfig(kind="openai", upstream_url="http://127.0.0.1:9/v1", model_name="smollm2", timeout_s=3))
    assert isinstance(e, OpenAIUpstreamEngine) and e.upstream_model == "smollm2" and e.timeout_s == 3
    assert e.supports_logits_processors is False


@pytest.mark.parametrize("kind", ["llamacpp", "hf"])
def test_missing_model_file(kind: Any, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="model_path"):
        build_engine(EngineConfig(kind=kind, model_path=tmp_path / "absent.gguf"))


@pytest.mark.slow
def test_default_is_smollm2_on_llamacpp() -> None:
    from distillguard.engines.llamacpp import LlamaCppEngine

    e = build_engine(EngineConfig(n_threads=1))
    assert isinstance(e, LlamaCppEngine) and e.model_name == "smollm2" and e.model_path.name.endswith(".gguf")
