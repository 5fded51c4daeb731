#!/usr/bin/env bash
# GPU check of the fused kernels: `bash scripts/gpu_check.sh` on a CUDA machine. Finishes
# within GPU_CHECK_BUDGET_S seconds (default 470, about 8 minutes on an H100/H200): every
# step runs under `timeout` with the smaller of its own cap and the time left, and the steps
# run most valuable first, so a short budget drops the tail. Each step writes its files under
# $OUT (or ./gpu-out) as it goes; a cut-off step keeps what it wrote.
#   <device-slug>-<yyyymmdd>.{json,md}  scripts/gpu_timing.py: device time per case x provider
#                                (train_step, F-Encoder fwd / fwd+bwd, front-end, full
#                                forward; eager, compile, fused, fused-compile, cudagraph,
#                                compile-rank1) at B = 128, T = 128, fp32 and bf16, the peaks
#                                and floors, and issue #16's target table (the md). Same
#                                names as benchmarks/results/: commit them there, then
#                                `python -m benchmarks.report --readme-only`.
#   timing.log                   its console output
#   launches.{json,md}           python -m benchmarks.profile --launches: every launch of
#                                the fused front-end forward + backward vs its floor
#   sweep.{json,log}, tuned/sm_XX.json  scripts/gpu_sweep.py: each launch candidate of
#                                kernels/tuning.py timed; the tuned table to commit as
#                                kernels/tuned/sm_XX.json (with the F-Encoder passes that
#                                compile-rank1 won in step 1, if any)
#   tests.log                    the kernel and model tests with compiled kernels (no -x)
#   resources-device.{json,txt}  every kernel compiled and launched on this GPU: registers /
#                                shared / local from the cubin and the driver, vs prediction
#   bench-smoke.log              the pytest-benchmark suite's CUDA path at a tiny size
#   gpu_check.log                each step's exit status and seconds
# Needs only torch, triton and pytest (+ pytest-benchmark for the smoke step): the checkout
# runs from PYTHONPATH and nothing is installed. Tests that need soundfile or onnx are not
# run here.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_steps.sh

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$log"

# 1. the timing table (rows stop starting 25 s before the step's cap)
step timing 215 bash -c "set -o pipefail; $py scripts/gpu_timing.py --results-dir '$out' --budget-s 190 \
    2>&1 | tee '$out/timing.log' | cut -c1-220"
timing_json=$(ls -t "$out"/*-[0-9]*.json 2>/dev/null | head -1)
peaks=()
[[ -n "$timing_json" ]] && peaks=(--peaks-json "$timing_json")

# 2. per-launch backward breakdown against the floors
step launches 25 bash -c "set -o pipefail; $py -m benchmarks.profile --launches --steps 5 ${peaks[*]:-} \
    --json '$out/launches.json' 2>&1 | tee '$out/launches.md'"

# 3. the launch-settings sweep and the tuned table
step sweep 70 bash -c "set -o pipefail; $py scripts/gpu_sweep.py --out '$out/sweep.json' \
    --write-tuned '$out/tuned' --timing-json '${timing_json:-}' --budget-s 55 2>&1 | tee '$out/sweep.log' | tail -3 | cut -c1-400"

# 4. kernel and model tests on the GPU (all of them: no -x)
step tests 90 bash -c "set -o pipefail; $py -m pytest tests/kernels/test_freq_encoder.py \
    tests/kernels/test_band_attention.py tests/model/test_model.py \
    tests/kernels/test_dispatch_fit.py -q -p no:cacheprovider 2>&1 | tee '$out/tests.log' | tail -15"

# 5. resources of what launched, as the driver reports them
step resources 35 bash -c "set -o pipefail; $py -m benchmarks.resources --device --config default \
    --json '$out/resources-device.json' > '$out/resources-device.txt' 2>&1; \
    tail -3 '$out/resources-device.txt'"

# 6. the pytest-benchmark suite's CUDA path at a tiny size
step bench-smoke 25 bash -c "set -o pipefail; $py -m pytest benchmarks --benchmark-only --bench-size tiny -q \
    -p no:cacheprovider -k 'freq_encoder_fwd and (fused or rank1)' 2>&1 \
    | tee '$out/bench-smoke.log' | tail -5"

echo "total: $((SECONDS - start))s of ${budget}s" | tee -a "$log"
