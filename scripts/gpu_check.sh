#!/usr/bin/env bash
# GPU check of the fused kernels: `bash scripts/gpu_check.sh` on a CUDA machine, about 6
# minutes on an H100. Checks, in order, each writing its own file under $OUT (or ./gpu-out)
# as soon as it finishes:
#   resources-device.{json,txt}  every kernel the fused front-end launches, compiled and
#                                launched on this GPU (fp32, bf16, fp16; default and encoding
#                                configs): registers / shared / local from the cubin, and the
#                                registers and spills the driver reports, vs the CPU prediction
#   tests.log                    the kernel and model tests with compiled kernels (fp32 parity,
#                                bf16/fp16, opcheck's aot dispatch, torch.compile, memory)
#   bench-smoke.log              the pytest-benchmark suite's CUDA path at a tiny size (event
#                                timer, cudagraph provider) for the F-Encoder and front-end
#   timing.json / timing.log     device time per case x provider at B = 128, fp32 and bf16
#                                (scripts/gpu_timing.py: CUDA events, CUDA-graph variant)
# Needs only torch, triton and pytest: the checkout runs from PYTHONPATH and nothing is
# installed. Tests that need soundfile or onnx are not run here.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
timeout 80 python -m benchmarks.resources --device --config default encoding \
    --json "$out/resources-device.json" > "$out/resources-device.txt" 2>&1
tail -3 "$out/resources-device.txt"
timeout 120 python -m pytest tests/kernels/test_freq_encoder.py tests/kernels/test_band_attention.py \
    tests/model/test_model.py tests/kernels/test_dispatch_fit.py -q -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -15
timeout 90 python -m pytest benchmarks --benchmark-only --bench-size tiny -q -p no:cacheprovider \
    -k "freq_encoder_fwd or front_end_fwd" 2>&1 | tee "$out/bench-smoke.log" | tail -5
timeout 150 python scripts/gpu_timing.py --out "$out/timing.json" 2>&1 | tee "$out/timing.log" | cut -c1-220
