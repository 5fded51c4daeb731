#!/usr/bin/env bash
# compute-sanitizer over one forward and backward of every Triton kernel of the fused
# front-end (scripts/sanitize_run.py: default and encoding configs, fp32 and bf16):
# memcheck (out-of-bounds and misaligned accesses) and racecheck (shared-memory hazards).
# Usage: bash scripts/gpu_sanitize.sh [OUTDIR]; writes sanitize-{probe,memcheck,racecheck}.log
# and one summary line per tool to sanitize.txt, each as soon as it finishes. At most about
# 4 minutes (each tool under its own timeout). Exit 0 also when the sanitizer cannot read the GPU (it says so).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python}"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$san" ]; then
  echo "compute-sanitizer: not found on this machine" | tee -a "$out/sanitize.txt"; exit 0
fi
# can it read this GPU at all? (it refuses some virtualised devices)
timeout 30 "$san" --tool memcheck "$py" -c "import torch; torch.ones(4, device='cuda').sum().item()" \
  > "$out/sanitize-probe.log" 2>&1
if grep -q "Device not supported\|error 999\|Unable to" "$out/sanitize-probe.log"; then
  echo "compute-sanitizer cannot read this GPU: $(grep -m1 -i 'error\|not supported' "$out/sanitize-probe.log")" \
    | tee -a "$out/sanitize.txt"; exit 0
fi
timeout 60 "$py" scripts/sanitize_run.py > "$out/sanitize-warm.log" 2>&1  # fills Triton's cache
# memcheck over every configuration and dtype; racecheck (slower) over the default fp32 run
for tool in memcheck racecheck; do
  args=(); [ "$tool" = racecheck ] && args=(--quick)
  timeout "$([ "$tool" = memcheck ] && echo 90 || echo 70)" "$san" --tool "$tool" \
    --target-processes all --print-limit 20 \
    "$py" scripts/sanitize_run.py "${args[@]}" > "$out/sanitize-$tool.log" 2>&1
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$out/sanitize-$tool.log" | tail -1)
  echo "$tool: exit $rc; ${summary:-no summary line}" | tee -a "$out/sanitize.txt"
done
