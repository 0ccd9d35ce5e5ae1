"""Legitimate distillation, end to end: teacher answers -> smaller student -> fidelity -> GGUF.

    distillguard distill collect --config distill.toml   # teacher answers (JSONL, resumable)
    distillguard distill student --config distill.toml   # keep every other teacher layer
    distillguard distill train   --config distill.toml --method logits --loss jsd
    distillguard distill eval    --config distill.toml   # one table: teacher, initial, trained
    distillguard distill export  --config distill.toml --dtype q4_1
    distillguard distill run --quick                     # a few-minute demo on built-in prompts

Modules, in pipeline order: ``prompts`` (JSONL prompt files), ``teachers`` (local engine or
OpenAI-compatible URL with backoff), ``collect``, ``student``, ``data`` + ``losses`` + ``train``,
``evaluate``, ``export``; ``config`` holds the one ``DistillConfig`` that drives them all.
"""
