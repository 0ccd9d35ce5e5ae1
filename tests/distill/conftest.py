"""Fixtures: a tiny random Llama (SmolLM2's tokenizer) as teacher, and one collected dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillguard.distill.config import CollectConfig, DistillConfig, PromptSource, StudentConfig, TeacherConfig, TrainConfig


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distillguard.engines.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "teacher", n_layers=4, hidden=64)


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distillguard.distill.prompts import builtin_prompts_path

    return builtin_prompts_path()


def make_cfg(workdir: Path, teacher: Path, prompts: Path, n: int = 12, **train: object) -> DistillConfig:
    return DistillConfig(
        workdir=workdir,
        heldout_fraction=0.25,
        teacher=TeacherConfig(model_path=teacher, n_threads=1),
        collect=CollectConfig(sources=[PromptSource(path=prompts, field="prompt", limit=n)], max_tokens=8,
                              temperature=1.0, top_logprobs=3),
        student=StudentConfig(layers=[0, 3]),
        train=TrainConfig(batch_size=4, max_steps=4, warmup_steps=1, save_every=2, max_length=96, threads=1, **train),
    )


@pytest.fixture(scope="session")
def collected(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path, prompt_file: Path) -> DistillConfig:
    """12 prompts answered by the tiny teacher (8 tokens, top-3 logprobs) and a 2-layer student."""
    from distillguard.distill.collect import collect
    from distillguard.distill.student import build_student

    cfg = make_cfg(tmp_path_factory.mktemp("run"), tiny_teacher, prompt_file)
    collect(cfg, progress=False)
    build_student(cfg)
    return cfg


@pytest.fixture
def run_cfg(collected: DistillConfig, tmp_path: Path) -> DistillConfig:
    """The shared dataset and student, with a fresh folder for trained students."""
    data = collected.model_dump()
    data["collect"]["output"] = collected.dataset_path()
    data["student"]["output"] = collected.student_init_path()
    data["workdir"] = tmp_path
    return DistillConfig.model_validate(data)
