"""Fixtures: the tiny random model (built once per session) behind an HFEngine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def collect(aiter: Any) -> list[Any]:
    return [c async for c in aiter]


CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distillguard.engines.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> Any:
    import torch

    torch.set_num_threads(1)
    from distillguard.engines.hf import HFEngine

    return HFEngine(tiny_dir, model_name="tiny")


@pytest.fixture(scope="session")
def smollm2() -> Any:
    from distillguard.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(n_threads=2)
