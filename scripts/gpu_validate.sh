#!/usr/bin/env bash
# GPU validation (issue "GPU validation"): `bash scripts/gpu_validate.sh` on a CUDA machine,
# the second call of a GPU session after scripts/gpu_check.sh. Within GPU_CHECK_BUDGET_S
# seconds (default 420 here), most valuable first, each file written as it goes under $OUT:
#   parity.{json,md}      scripts/gpu_parity.py: config (FFN kernel sizes 1 / 3 at 32 and 6
#                         FFN channels first, default, encoding, tiny, wide) x precision
#                         (fp32 tf32 / ieee, bf16, fp16): output and worst gradient error
#                         against float64, each with its bound
#   cuda-tests.log        every test under tests/kernels and tests/model with compiled
#                         kernels, slow ones included, no -x (each failure named)
#   sanitize*.log, sanitize.txt  scripts/gpu_sanitize.sh: compute-sanitizer memcheck and
#                         racecheck over one forward and backward of every kernel (it
#                         probes first whether the sanitizer can read this GPU)
#   gpu_validate.log      each step's exit status and seconds
# A session has 15 minutes of device time in all, machine starts included: after a full
# gpu_check.sh (about 8 minutes) run this one with what is left, e.g.
# `GPU_CHECK_BUDGET_S=240 bash scripts/gpu_validate.sh` (parity and the CUDA tests come first).
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-420}" GPU_LOG_NAME=gpu_validate.log
source scripts/gpu_steps.sh
nvidia-smi --query-gpu=name,driver_version --format=csv | tee -a "$log"
step parity 110 bash -c "set -o pipefail; $py scripts/gpu_parity.py --out '$out' 2>&1 | tail -4"
step cuda-tests 100 bash -c "set -o pipefail; $py -m pytest tests/kernels tests/model -m '' -q -p no:cacheprovider \
    --ignore=tests/kernels/test_resources.py --continue-on-collection-errors 2>&1 | tee '$out/cuda-tests.log' | tail -15"
step sanitize 200 bash scripts/gpu_sanitize.sh "$out"
echo "total: $((SECONDS - start))s of ${budget}s" | tee -a "$log"
