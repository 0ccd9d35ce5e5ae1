"""CLI for distillguard.distill: collect -> student -> train -> eval -> export.

Every command reads the ``[distill]`` table of ``--config`` (the project TOML); flags override
single fields. Every step resumes: collect skips answered prompts, student/train skip finished
outputs, train restarts from its last checkpoint. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from distillguard.distill.config import DistillConfig, PromptSource

app = typer.Typer(no_args_is_help=True, help="Distil a teacher into a smaller, faster student.")
err = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="project TOML; its [distill] table drives every step")
WorkdirOpt = typer.Option(None, "--workdir", help="folder for every output of the run (distill.workdir)")


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or an unreachable teacher: one line, no traceback."""
    from pydantic import ValidationError

    from distillguard.config import ConfigError
    from distillguard.distill.collect import DatasetError
    from distillguard.distill.data import DataError
    from distillguard.distill.export import ExportError
    from distillguard.distill.modelio import ModelLoadError, TokenizerMismatch
    from distillguard.distill.prompts import PromptFileError
    from distillguard.distill.student import StudentConfigError
    from distillguard.distill.teachers import TeacherError
    from distillguard.engines.base import EngineError
    from distillguard.models import ModelNotInstalled

    return (ConfigError, ValidationError, DatasetError, DataError, ExportError, ModelLoadError, TokenizerMismatch,
            PromptFileError, StudentConfigError, TeacherError, EngineError, ModelNotInstalled, FileNotFoundError)


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda m, *a, **k: err.print(f"[yellow]warning:[/yellow] {m}", soft_wrap=True)
            return fn(*args, **kwargs)
    except _errors() as exc:
        _fail(_one_line(exc))
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume", code=130)


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"invalid setting distill.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
    return " ".join(str(exc).split())


def load_config(config: Optional[Path], workdir: Optional[Path] = None, **overrides: Any) -> DistillConfig:
    """The [distill] table of ``config`` (or defaults), then ``section__field`` overrides."""

    def build() -> DistillConfig:
        from distillguard.config import load_settings

        cfg = load_settings(config).distill if config else DistillConfig()
        data = cfg.model_dump()
        if workdir is not None:
            data["workdir"] = workdir
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition("__")
            if key:
                data[section][key] = value
            else:
                data[section] = value
        return DistillConfig.model_validate(data)

    return _run(build)


def free_cores() -> int:
    """CPU cores not already busy (1-minute load average), at least 1.

    More torch threads than free cores does not just share the CPU, it wastes it: the threads
    spin at barriers while the scheduler runs someone else. Measured on the shared 2-core box
    at load 8: 2 threads decoded ~7x slower per token than 1.
    """
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return n
    return max(1, min(n, round(n - busy)))


def quick_preset(cfg: DistillConfig) -> DistillConfig:
    """Small enough to collect, train and evaluate in under 5 minutes on 2 shared CPU cores.

    Where the time went before (10.4 min): the GGUF teacher was de-quantized by transformers
    ~40 s per load and loaded three times (student, train, eval); llama.cpp answered one prompt
    at a time at 5-7 tok/s on the busy machine; two torch threads spin-waited. Now the teacher
    answers 16 prompts per forward pass in transformers, is loaded once per process from a float
    copy made on first use, and every step uses only the free cores. The sizes below keep the
    demo honest (a real teacher, real logit-KD steps, a real held-out table) and small.
    """
    from distillguard.distill.prompts import builtin_prompts_path

    data = cfg.model_dump()
    if not cfg.collect.sources:
        data["collect"]["sources"] = [PromptSource(path=builtin_prompts_path(), field="prompt").model_dump()]
    if str(cfg.workdir) == "distill-run":
        data["workdir"] = Path("distill-quick")
    data["heldout_fraction"] = 0.15
    threads = free_cores()
    if cfg.teacher.kind == "local":
        data["teacher"]["engine"] = "batched"
    data["teacher"]["n_threads"] = threads
    data["collect"].update(max_prompts=32, max_tokens=40, batch_size=16)
    data["train"].update(max_steps=12, batch_size=4, max_length=128, warmup_steps=2, save_every=6, threads=threads)
    data["eval"].update(max_prompts=8, generate_prompts=2, max_new_tokens=20, threads=threads)
    return DistillConfig.model_validate(data)


# ---------------------------------------------------------------- commands


@app.command()
def collect(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    prompts: Optional[list[Path]] = typer.Option(None, "--prompts", help="JSONL prompt file(s) (replaces collect.sources)"),
    field: str = typer.Option("prompt", "--field", help="prompt field for --prompts: question, instruction, turns[0], ..."),
    limit: Optional[int] = typer.Option(None, "--limit", help="rows per --prompts file"),
    teacher_url: Optional[str] = typer.Option(None, "--teacher-url", help="OpenAI-compatible base URL (…/v1)"),
    teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="model name sent to the API"),
    teacher_path: Optional[Path] = typer.Option(None, "--teacher-path", help="local teacher: GGUF file or HF folder"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="dataset JSONL"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    top_logprobs: Optional[int] = typer.Option(None, "--top-logprobs", help="capture this many top logprobs per token"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency"),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="wall-clock budget; a rerun resumes"),
    quick: bool = typer.Option(False, "--quick", help="demo preset: built-in prompts, short answers"),
) -> None:
    """Ask the teacher every prompt once; append answers to a JSONL dataset (resumable)."""
    sources = [PromptSource(path=p, field=field, limit=limit).model_dump() for p in prompts] if prompts else None
    cfg = load_config(
        config, workdir, collect__sources=sources, collect__output=output, collect__max_tokens=max_tokens,
        collect__top_logprobs=top_logprobs, collect__concurrency=concurrency, collect__max_prompts=max_prompts,
        collect__max_minutes=max_minutes,
        teacher__model_path=teacher_path, teacher__model=teacher_model,
        teacher__url=teacher_url, teacher__kind="openai" if teacher_url else None,
    )
    if quick:
        cfg = quick_preset(cfg)
    _collect(cfg)


def _collect(cfg: DistillConfig) -> None:
    from distillguard.distill.collect import collect as run_collect

    s = _run(run_collect, cfg, progress=sys.stderr.isatty())
    err.print(
        f"collect: {s.asked} new answers ({s.completion_tokens} tokens, {s.seconds:.0f}s), {s.already} already there, "
        f"{s.retries} retries -> {s.output}"
        + ("; stopped by the time budget: rerun the same command to resume" if s.stopped_by_time else "")
    )


@app.command()
def student(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    layers: Optional[str] = typer.Option(None, "--layers", help="'every_other' or teacher layer indices: 0,2,4,..."),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", help="keep N evenly spaced layers"),
    source: Optional[Path] = typer.Option(None, "--source", help="model to take layers from (default the teacher)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    force: bool = typer.Option(False, "--force", help="rebuild even if the output exists"),
) -> None:
    """Initialise the student from the teacher by keeping a subset of its layers."""
    layer_value: Any = None
    if layers:
        try:
            layer_value = layers if layers == "every_other" else [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            _fail(f"--layers {layers!r}: give 'every_other' or comma-separated integers like 0,2,4")
    cfg = load_config(config, workdir, student__layers=layer_value, student__num_layers=num_layers,
                      student__source=source, student__output=output)
    _student(cfg, force)


def _student(cfg: DistillConfig, force: bool = False) -> None:
    from distillguard.distill.student import build_student

    out = cfg.student_init_path()
    if (out / "config.json").is_file() and not force:
        err.print(f"student: {out} exists (use --force to rebuild)")
        return
    s = _run(build_student, cfg)
    err.print(
        f"student: kept {len(s.layers) if s.layers else '-'} of {s.teacher_layers} layers {s.layers or ''}; "
        f"{s.student_params / 1e6:.1f}M parameters vs teacher {s.teacher_params / 1e6:.1f}M -> {s.output}"
    )


@app.command()
def train(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    method: Optional[str] = typer.Option(None, "--method", help="sft | logits | topk"),
    loss: Optional[str] = typer.Option(None, "--loss", help="forward_kl | reverse_kl | jsd"),
    beta: Optional[float] = typer.Option(None, "--beta", help="JSD mixing weight"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    hidden_weight: Optional[float] = typer.Option(
        None, "--hidden-weight", help="hidden-state alignment weight (logits; a student of kept teacher layers)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="wall-clock budget; the model is saved when it runs out"),
    epochs: Optional[float] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    learning_rate: Optional[float] = typer.Option(None, "--lr"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (students/<name>)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (mixed precision, ~2x faster with AMX)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda[:N] | mps (auto: a CUDA GPU if torch sees one)"),
    force: bool = typer.Option(False, "--force", help="train again even if this run finished"),
) -> None:
    """Train the student on the teacher (sequence-level or token-level KD); resumes from checkpoints."""
    cfg = load_config(
        config, workdir, train__method=method, train__loss=loss, train__beta=beta, train__temperature=temperature,
        train__hidden_weight=hidden_weight, train__max_steps=max_steps, train__max_minutes=max_minutes, train__epochs=epochs, train__batch_size=batch_size,
        train__learning_rate=learning_rate, train__name=name, train__precision=precision, train__device=device,
    )
    _train(cfg, force)


def _train(cfg: DistillConfig, force: bool = False) -> None:
    from distillguard.distill.train import train as run_train

    s = _run(run_train, cfg, progress=sys.stderr.isatty(), force=force)
    resumed = f", resumed at step {s.resumed_from}" if s.resumed_from else ""
    resumed += f", stopped by the time budget after step {s.stopped_at}" if s.stopped_at else ""
    err.print(
        f"train {s.method}/{s.loss}: {s.steps} steps on {s.examples} answers{resumed}; loss "
        f"{s.first_loss if s.first_loss is None else round(s.first_loss, 4)} -> "
        f"{s.last_loss if s.last_loss is None else round(s.last_loss, 4)} -> {s.output}"
    )


@app.command("eval")
def eval_cmd(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", help="held-out prompts scored teacher-forced"),
    generate_prompts: Optional[int] = typer.Option(None, "--generate-prompts", help="held-out prompts answered greedily"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="results JSON (default <workdir>/eval.json)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda[:N] | mps"),
) -> None:
    """Fidelity of the teacher, the initial student and each trained student on held-out prompts."""
    cfg = load_config(config, workdir, eval__max_prompts=max_prompts, eval__generate_prompts=generate_prompts,
                      eval__max_new_tokens=max_new_tokens, eval__output=json_out, eval__device=device)
    _eval(cfg)


def _eval(cfg: DistillConfig) -> dict[str, Any]:
    from distillguard.distill.evaluate import evaluate, render_table

    result = _run(evaluate, cfg, progress=sys.stderr.isatty())
    console = Console() if sys.stdout.isatty() else Console(width=160)
    render_table(result, console)
    err.print(f"eval: results in {cfg.eval_output()}")
    return result


@app.command()
def export(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    model: Optional[Path] = typer.Option(None, "--model", help="HF folder to export (default: the configured train run)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="GGUF weights: f32 | f16 | q8_0 | q4_1"),
) -> None:
    """Write the student as a transformers folder (safetensors) and a GGUF file for llama.cpp."""
    from distillguard.distill.export import export as run_export

    cfg = load_config(config, workdir, export__model=model, export__output=output, export__gguf_dtype=dtype)
    src = cfg.export.model or cfg.train_output()
    if not (Path(src) / "config.json").is_file():
        _fail(f"no model to export at {src}; run `distillguard distill train` or pass --model")
    s = _run(run_export, Path(src), cfg.export_output(), cfg.export.gguf_dtype)
    err.print(f"export: {s.hf_dir} (safetensors) and {s.gguf_path} ({s.tensors} tensors, {s.gguf_bytes / 1e6:.1f} MB)")
    err.print(f"serve it: DISTILLGUARD_ENGINE__MODEL_PATH={s.gguf_path} distillguard serve")


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    quick: bool = typer.Option(False, "--quick", help="demo preset: finishes in a few minutes on 2 CPU cores"),
) -> None:
    """collect -> student -> train -> eval in one go (each step resumes)."""
    cfg = load_config(config, workdir)
    if quick:
        cfg = quick_preset(cfg)
    if not cfg.collect.sources:
        _fail("collect.sources is empty: add [[distill.collect.sources]] to the config, or use --quick")
    _collect(cfg)
    _student(cfg)
    _train(cfg)
    result = _eval(cfg)
    sys.stdout.write(json.dumps({"eval": str(cfg.eval_output()), "models": [m["name"] for m in result["models"]]}) + "\n")
