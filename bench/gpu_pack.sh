#!/usr/bin/env bash
# Packs what bench/distill_gpu.py needs on the lent GPU machine into .gpu/ (git-ignored).
#
# That machine has torch, transformers, typer, rich, httpx and numpy, but not pydantic,
# pydantic-settings or gguf; it has no ../shared beside the checkout; and one call carries at
# most 64 MiB, while the teacher GGUF alone is ~90 MB. So the GGUF goes in two halves over two
# calls made back to back (a warm machine keeps the first half, and the first call also copies it
# outside the checkout):
#
#   bash bench/gpu_pack.sh                       # here, once: .gpu/a (half the GGUF), .gpu/b (the rest)
#   device run, carry [".gpu/a"]:  mkdir -p /root/dg && cp .gpu/a/* /root/dg/ && nvidia-smi -L
#   device run, carry [".gpu/b"]:  bash bench/gpu_run.sh     # at once, while the machine is warm
#
# PYVER is the device machine's Python (3.12 there); PYVER=3.11 packs wheels this machine can use,
# which is how bench/gpu_run.sh is checked here on the CPU (GPU_RUN_DEVICE=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
PY=.venv/bin/python
GGUF=$($PY -c "from distillguard.models import smollm2_gguf; print(smollm2_gguf())")
rm -rf .gpu && mkdir -p .gpu/a .gpu/b/wheels .gpu/b/datasets
# the halves and a checksum of the whole, so a mismatched pair is refused, not half-loaded
split -n 2 -d "$GGUF" .gpu/teacher.part-
mv .gpu/teacher.part-00 .gpu/a/ && mv .gpu/teacher.part-01 .gpu/b/
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")") > .gpu/b/teacher.sha256
cp ../shared/datasets/*.jsonl .gpu/b/datasets/
# the versions this project runs with here, as wheels for the device's Python
want=""
for pkg in pydantic pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv gguf; do
  v=$($PY -m pip show "$pkg" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$v" ] || { echo "error: $pkg is not installed in .venv; run make setup first" >&2; exit 2; }
  want="$want $pkg==$v"
done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/b/wheels $want 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
du -sh .gpu/a .gpu/b
echo "packed for Python $PYVER:$want"
