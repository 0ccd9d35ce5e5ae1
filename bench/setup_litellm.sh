#!/usr/bin/env bash
# LiteLLM proxy for side-by-side gateway benchmarks, in its own virtualenv (.bench-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .bench-venv/bin/litellm ]; then
  python3.11 -m venv .bench-venv
  .bench-venv/bin/python -m pip install -q --upgrade pip
  .bench-venv/bin/python -m pip install -q "litellm[proxy]"
fi
.bench-venv/bin/litellm --version
