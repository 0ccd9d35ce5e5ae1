"""Loading teachers and students as float transformers models (GGUF files or HF folders)."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any


class ModelLoadError(ValueError):
    """A model path is missing or not a model; the message says what to give instead."""


class DeviceUnavailable(ModelLoadError):
    """The configured device (``cuda``, ``cuda:1``, ``mps``) is not there; the message says what to set."""


class TokenizerMismatch(ValueError):
    """Teacher and student tokenize differently, so their logits cannot be compared token by token."""


def resolve_teacher_path(path: Path | None) -> Path:
    from distillguard.models import smollm2_gguf

    return Path(path) if path else smollm2_gguf()


def resolve_device(name: str = "auto") -> Any:
    """``torch.device`` for a config value: "auto" is the first CUDA GPU when torch sees one, else the CPU.

    An explicit accelerator that is not there is an error, never a silent fall-back to the CPU:
    a run sized for a GPU would take hours on a CPU.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise DeviceUnavailable(f"device {name!r} is not a device torch knows ({exc}); use 'auto', 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            why = "torch was built without CUDA" if not torch.backends.cuda.is_built() else f"torch sees {n} CUDA device(s)"
            raise DeviceUnavailable(f"device {name!r} asked for, but {why} (torch {torch.__version__}); set device = 'cpu' or 'auto'")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device {name!r} asked for, but torch sees no MPS device; set device = 'cpu' or 'auto'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceUnavailable(f"device {name!r}: DistillGuard runs on 'cpu', 'cuda[:N]' or 'mps'")
    return dev


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


_TEACHERS: dict[tuple[str, float, str], tuple[Any, Any]] = {}


def load_teacher(path: Path | str, threads: int | None = None, device: Any = None) -> tuple[Any, Any]:
    """The teacher as a frozen float model, loaded once per process (and device).

    `distill run` needs it in collect (batched engine), student, train and eval; de-quantizing a
    GGUF takes seconds each time, which is a good share of a demo's budget. Every user only
    reads it: its parameters are frozen and it stays in eval mode. ``device`` (a ``torch.device``;
    default the CPU) is where its weights live.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    p = Path(path).resolve()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (str(p), p.stat().st_mtime if p.exists() else 0.0, str(dev))
    if key not in _TEACHERS:
        if dev.type != "cpu":
            # a copy of the (cached) CPU teacher: whoever holds that one keeps it on the CPU
            model, tok = load_teacher(p, threads)
            _TEACHERS[key] = (copy.deepcopy(model).to(dev), tok)
        else:
            model, tok = _load_gguf_cached(p, threads) if p.suffix == ".gguf" and p.is_file() else load_model(p, threads=threads)
            for param in model.parameters():
                param.requires_grad_(False)
            _TEACHERS[key] = (model, tok)
    return _TEACHERS[key]


def gguf_cache_dir(gguf: Path) -> Path:
    """Where the float copy of a GGUF teacher lives: keyed by path, size and mtime, so a changed
    file gets a fresh copy. ``$DISTILLGUARD_CACHE`` overrides ``~/.cache/distillguard``."""
    root = os.environ.get("DISTILLGUARD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillguard"
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(root) / "gguf-as-hf" / f"{gguf.stem}-{key}"


def _load_gguf_cached(gguf: Path, threads: int | None) -> tuple[Any, Any]:
    """A GGUF teacher via a float safetensors copy made on first use.

    transformers de-quantizes a GGUF and rebuilds its tokenizer in Python: ~40 s on 2 busy
    cores for SmolLM2-135M, against ~1 s for the same model as an HF folder. Every distill step
    loads the teacher, so the copy pays for itself on the second load. Weights, vocabulary and
    chat template are the GGUF's own (the copy is what load_model returns, saved as is).
    """
    cache = gguf_cache_dir(gguf)
    if (cache / "config.json").is_file():
        try:
            return load_model(cache, threads=threads)
        except Exception:  # a damaged copy: rebuild it below
            shutil.rmtree(cache, ignore_errors=True)
    model, tok = load_model(gguf, threads=threads)
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)  # whole or not at all: a killed run never leaves half a copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # read-only or full disk: the model is loaded anyway
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
