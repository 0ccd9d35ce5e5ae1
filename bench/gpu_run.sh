#!/usr/bin/env bash
# Runs bench/distill_gpu.py on the lent GPU machine from what bench/gpu_pack.sh packed (see its
# header for the two device calls). Writes $OUT/distill_gpu.json, $OUT/distill_gpu.log and the
# collected teacher answers, $OUT/teacher.jsonl.gz.
#
# Checked here on the CPU with small settings:
#   PYVER=3.11 bash bench/gpu_pack.sh && OUT=/tmp/gpu-out GPU_RUN_DEVICE=cpu \
#     GPU_RUN_ARGS="--max-prompts 48 --max-steps 4 --batch-size 4 --eval-prompts 4" PYTHON=/path/to/bare/python bash bench/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder for the results}
A=.gpu/a/teacher.part-00
[ -f "$A" ] || A=/root/dg/teacher.part-00
[ -f "$A" ] || { echo "error: the first half of the teacher is not here (.gpu/a or /root/dg): make the first device call again" >&2; exit 2; }
MODEL=/tmp/dg-model/$(cut -d' ' -f3 .gpu/b/teacher.sha256)
mkdir -p /tmp/dg-model
cat "$A" .gpu/b/teacher.part-01 > "$MODEL"
(cd /tmp/dg-model && sha256sum -c --quiet "$OLDPWD/.gpu/b/teacher.sha256")
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dg-site .gpu/b/wheels/*.whl
export PYTHONPATH=/tmp/dg-site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# The teacher's answers come back whatever happens after collection (gzipped: ~1/4 of the 16 MiB a
# returned file may hold): generating them costs ~2 CPU-seconds each on a 2-core CPU, minutes here,
# and a later session can train on them anywhere (collect.output; collect resumes, asks nothing).
trap '[ -s /tmp/dg-run/teacher.jsonl ] && gzip -c /tmp/dg-run/teacher.jsonl > "$OUT/teacher.jsonl.gz"' EXIT
# shellcheck disable=SC2086
$PY bench/distill_gpu.py --device "${GPU_RUN_DEVICE:-cuda}" --teacher "$MODEL" --datasets .gpu/b/datasets \
  --workdir /tmp/dg-run --out "$OUT/distill_gpu.json" ${GPU_RUN_ARGS:-} 2>&1 | tee "$OUT/distill_gpu.log"
