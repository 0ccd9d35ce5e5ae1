"""Loading teachers and students as float transformers models (GGUF files or HF folders)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any


class ModelLoadError(ValueError):
    """A model path is missing or not a model; the message says what to give instead."""


class TokenizerMismatch(ValueError):
    """Teacher and student tokenize differently, so their logits cannot be compared token by token."""


def resolve_teacher_path(path: Path | None) -> Path:
    from distillguard.models import smollm2_gguf

    return Path(path) if path else smollm2_gguf()


def load_model(path: Path | str, threads: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in float32, eval mode. A ``.gguf`` file is de-quantized by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)
    path = Path(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; give a .gguf file or an HF model folder")
        folder, kwargs["gguf_file"] = path.parent, path.name
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json; give an HF model folder (e.g. from `distill student`)")
        folder = path
    else:
        raise ModelLoadError(f"model {path} does not exist")
    # The GGUF de-quantization bar is noise next to our own progress bars.
    prev = hf_logging.get_verbosity()
    prev_tqdm = os.environ.get("TQDM_DISABLE")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF loader's own tqdm ignores the HF switch
    try:
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    finally:
        hf_logging.set_verbosity(prev)
        hf_logging.enable_progress_bar()
        if prev_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = prev_tqdm
    model.eval()
    # A de-quantized GGUF model is a plain float model now; do not save it as "gguf quantized".
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def param_count(model: Any) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def check_same_tokenizer(teacher_tok: Any, student_tok: Any, what: str = "logit KD") -> None:
    """Refuse token-level KD between different vocabularies: the distributions do not line up."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        only_t = len(set(tv) - set(sv))
        raise TokenizerMismatch(
            f"teacher and student tokenizers differ (vocab {len(tv)} vs {len(sv)}, {only_t} teacher tokens "
            f"unknown to the student), so {what} cannot compare them token by token; use sequence-level KD "
            f"instead (train.method = 'sft'), which trains on the teacher's text"
        )


def quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
