#!/usr/bin/env bash
# Everything a CUDA machine should check, in one call (the device tool's `run`):
#   bash scripts/gpu_check.sh            # results under $OUT (or ./gpu-out)
# 1. the whole test suite with the kernels compiled for real (bf16/fp16, opcheck's aot
#    dispatch, torch.compile without graph breaks, the no-score-tensor memory check),
# 2. the benchmark suite at all CUDA sizes, recorded as benchmarks/results/<gpu>-<date>.*,
# 3. where the full forward's time goes (torch.profiler), eager and fused.
# The machine has torch, triton, pytest, pytest-benchmark, onnx(runtime) and matplotlib but
# no registry: the checkout runs from PYTHONPATH, nothing is installed. It writes 7 files
# (the device tool brings back at most 8): tests.log, bench.log, the results .json/.md/.png
# and profile-{eager,fused}.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi
python -m pytest tests -m "" -q -p no:cacheprovider 2>&1 | tee "$out/tests.log"
python -m benchmarks.report --out "$out" -- -q -p no:cacheprovider 2>&1 | tee "$out/bench.log"
for provider in eager fused; do
    python -m benchmarks.profile --batch 128 --provider "$provider" \
        --json "$out/profile-$provider.json"
done
