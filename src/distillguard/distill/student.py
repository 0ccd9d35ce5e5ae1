"""`distill student`: initialise a smaller student from its teacher.

DistilBERT-style: the student keeps the teacher's embeddings, final norm and LM head, and a
subset of its transformer layers (every other one by default), copied weight for weight, so
training starts from a model that already speaks the teacher's language. Alternatively a fresh
student is built from the teacher's config with some fields changed (random init).
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.distill.config import DistillConfig
from distillguard.distill.modelio import load_teacher, param_count, resolve_teacher_path


class StudentConfigError(ValueError):
    pass


@dataclass
class StudentSummary:
    output: Path
    layers: list[int] | None
    teacher_layers: int
    student_params: int
    teacher_params: int


def select_layers(n_teacher: int, layers: str | list[int] | None, num_layers: int | None) -> list[int]:
    """Teacher layer indices to keep, in order."""
    if num_layers is not None:
        if not 1 <= num_layers <= n_teacher:
            raise StudentConfigError(f"student.num_layers = {num_layers}, but the teacher has {n_teacher} layers")
        if num_layers == 1:
            return [0]
        # Evenly spaced with the first and last layer kept: both ends matter most.
        return sorted({round(i * (n_teacher - 1) / (num_layers - 1)) for i in range(num_layers)})
    if layers is None or layers == "every_other":
        return list(range(0, n_teacher, 2))
    if isinstance(layers, list):
        bad = [i for i in layers if not 0 <= i < n_teacher]
        if bad:
            raise StudentConfigError(f"student.layers {bad} out of range: the teacher has layers 0..{n_teacher - 1}")
        return sorted(layers)
    raise StudentConfigError(f"student.layers must be 'every_other' or a list of indices, not {layers!r}")


_LAYER_KEY = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def copy_layers(teacher: Any, keep: list[int]) -> Any:
    """A student with the teacher's non-layer weights and layers ``keep`` (student layer j = teacher layer keep[j])."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(cfg)
    new_index = {t: s for s, t in enumerate(keep)}
    state = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER_KEY.match(key)
        if m:
            t = int(m.group(2))
            if t not in new_index:
                continue
            key = f"{m.group(1)}{new_index[t]}{m.group(3)}"
        state[key] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    # A tied LM head shows up as "missing" although it shares the embedding matrix.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise StudentConfigError(f"weights did not line up: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if cfg.tie_word_embeddings:
        student.tie_weights()
    return student


def from_config(teacher: Any, overrides: dict[str, Any]) -> Any:
    """A randomly initialised student from the teacher's config with ``overrides``; embeddings
    are still copied when their shape is unchanged (the vocabulary is the teacher's)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(teacher.config)
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise StudentConfigError(f"student.from_config: the teacher config has no field {k!r}")
        setattr(cfg, k, v)
    if getattr(cfg, "layer_types", None) and len(cfg.layer_types) != cfg.num_hidden_layers:
        cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    student = AutoModelForCausalLM.from_config(cfg)
    t_emb, s_emb = teacher.get_input_embeddings().weight, student.get_input_embeddings().weight
    if t_emb.shape == s_emb.shape:
        s_emb.data.copy_(t_emb.data)
    return student


def build_student(cfg: DistillConfig, teacher_model: Any = None, teacher_tok: Any = None) -> StudentSummary:
    s = cfg.student
    source = s.source or resolve_teacher_path(cfg.teacher.model_path)
    if cfg.teacher.kind == "openai" and s.source is None:
        raise StudentConfigError(
            "the teacher is behind an API, so its weights are unknown: set student.source to a local model "
            "(GGUF or HF folder) to take layers from, or student.from_config with it"
        )
    if teacher_model is None:
        # only read (its layers are copied), so the per-process cached teacher will do
        teacher_model, teacher_tok = load_teacher(source, threads=cfg.train.threads)
    n_teacher = int(teacher_model.config.num_hidden_layers)
    keep: list[int] | None = None
    if s.from_config:
        student = from_config(teacher_model, dict(s.from_config))
    else:
        keep = select_layers(n_teacher, s.layers, s.num_layers)
        student = copy_layers(teacher_model, keep)
    sp, tp = param_count(student), param_count(teacher_model)
    if sp >= tp:
        warnings.warn(
            f"the student ({sp:,} parameters) is not smaller than its teacher ({tp:,}); "
            "distillation will not make it faster — keep fewer layers or shrink from_config",
            stacklevel=2,
        )
    out = cfg.student_init_path()
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out, safe_serialization=True)
    teacher_tok.save_pretrained(out)
    (out / "distill_student.json").write_text(
        json.dumps(
            {"source": str(source), "teacher_layers": n_teacher, "kept_layers": keep,
             "from_config": s.from_config, "student_params": sp, "teacher_params": tp},
            indent=2,
        )
    )
    return StudentSummary(out, keep, n_teacher, sp, tp)
