"""The docs/design.md#benchmarks cases, timed with pytest-benchmark (no assertion is on a time)."""

from __future__ import annotations

import time

import pytest
import torch

from atfnn_fast import ATFNNConfig
from benchmarks import cases, floors


def _peak_memory_mb(bench: cases.Bench, device: torch.device) -> float | None:
    """Extra memory one call needs: peak allocated during the call minus what was
    allocated before it (parameters, inputs, optimiser state). CUDA only."""
    if device.type != "cuda":
        return None
    bench.setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    bench.fn()
    return round((torch.cuda.max_memory_allocated() - before) / 2**20, 2)


def _rounds(bench: cases.Bench, device: torch.device) -> int:
    """Enough rounds for about one second of timing, within [min, max]."""
    bench.setup()
    start = time.perf_counter()
    bench.fn()
    once = max(time.perf_counter() - start, 1e-6)
    low, high = (10, 200) if device.type == "cuda" else (3, 20)
    return int(min(high, max(low, 1.0 / once)))


def _host_ms(bench: cases.Bench, device: torch.device) -> float | None:
    """Host time of issuing one call (CUDA: launch overhead; no synchronisation inside)."""
    if device.type != "cuda":
        return None
    bench.setup()
    torch.cuda.synchronize()
    start = time.perf_counter()
    bench.fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return round(host * 1e3, 4)


def test_case(benchmark, bench_env, device, case, provider, dtype, batch):
    device = bench_env["torch_device"]
    reason = cases.skip_reason(case, provider, device, dtype)
    if reason:
        pytest.skip(reason)
    cfg = ATFNNConfig()
    frames = bench_env["frames"]
    elem = 4 if dtype == "float32" else 2
    counts = floors.case_counts(ATFNNConfig(), case, batch, bench_env["frames"], elem)
    try:
        bench = cases.build(case, provider, cfg, batch, frames, getattr(torch, dtype), device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        pytest.skip(f"B={batch} does not fit in this device's {total:.0f} GiB of memory")
    if device.type == "cuda":
        benchmark._timer = cases.CudaEventClock()  # device time, the same for every provider
    benchmark.group = f"{case} {dtype} B={batch}"
    benchmark.extra_info.update(
        case=case,
        provider=provider,
        dtype=dtype,
        batch=batch,
        frames=frames,
        bytes=counts.bytes,
        flops=counts.flops,
        exps=counts.exps,
        compile_s=None if bench.compile_s is None else round(bench.compile_s, 3),
        peak_mem_mb=_peak_memory_mb(bench, device),
        host_ms=_host_ms(bench, device),
    )
    rounds = 1 if benchmark.disabled else _rounds(bench, device)
    result = benchmark.pedantic(bench.fn, setup=bench.setup, rounds=rounds, warmup_rounds=1)
    # a benchmark of a broken computation is worthless: the result must at least be finite
    outputs = result if isinstance(result, torch.Tensor) else result[0]
    for out in [outputs] if isinstance(outputs, torch.Tensor) else outputs:
        assert torch.isfinite(out.float()).all(), f"{case}/{provider}: non-finite output"
