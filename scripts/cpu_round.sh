#!/usr/bin/env bash
# The CPU measurements of a round (docs/design.md#native-cpu-core), on a quiet machine:
#   bash scripts/cpu_round.sh [OUT_PREFIX]
# 1. benchmarks.compare, every provider interleaved, at torch's default threads and at 1;
# 2. the same at the default threads with oneDNN, ATen and the native core capped to AVX2
#    (the code paths of a CPU without AVX-512; eager, ATFNN's ATen path and its native core:
#    ONNX Runtime ignores the caps);
# 3. the per-op split (benchmarks.profile --cpu): eager, ATFNN's ATen path, its native core,
#    ONNX Runtime;
# 4. a 1-hour 16 kHz file through `atfnn-fast predict`, each predictor, end to end.
# Writes OUT_PREFIX.{json,md} (+ -avx2, -profile, -hour) and prints the load average before
# and after: figures taken under load are not to be trusted.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${1:-benchmarks/results/cpu-compare-$(date +%Y%m%d)}
echo "== $(date -u) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) load: $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -m atfnn_fast.app.cli info
$PY -m benchmarks.compare --threads 0,1 --rounds "${ROUNDS:-5}" --json "$out.json" --md "$out.md"
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ATFNN_NATIVE_ISA=avx2 \
  $PY -m benchmarks.compare --threads 0 --rounds "${ROUNDS:-5}" --providers fused,native \
  --json "$out-avx2.json" --md "$out-avx2.md"
$PY -m benchmarks.profile --cpu --batch 32 > "$out-profile.md"
PYTHONPATH=. $PY scripts/predict_memory.py --minutes 60 --predictors checkpoint onnx onnx-int8 \
  --out /tmp/atfnn-hour > "$out-hour.md"
echo "== $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
