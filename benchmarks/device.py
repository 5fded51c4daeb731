"""What the suite runs on: device description and the peaks measured in the same run."""

from __future__ import annotations

import platform
import re
import subprocess
import time
from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--bench-device cuda asked for, but torch sees no CUDA device")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(device: torch.device, size: str) -> dict:
    """The environment fields of a results file (docs/design.md#benchmarks): device, driver,
    CUDA, torch, triton, commit, date and the run's size."""
    import datetime as dt

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "driver": driver_version() if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": git_commit(),
        "date": dt.date.today().isoformat(),
        "size": size,
    }


def _best_time(fn, device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after a warm-up: a ceiling is what the
    hardware does, not what a shared machine's load left (the median of a busy moment
    under-measured the CPU's fp32 matmul ceiling by 45 % on 2026-12-06)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(device: torch.device, tiny: bool = False) -> dict[str, float]:
    """Copy bandwidth (a large device-to-device copy: bytes read + written), matmul
    throughput (bf16, fp32 with tf32 off, on CUDA fp32 with tf32 on, and on the CPU int8
    through ``torch._int_mm``, the ceiling of the int8 ONNX graph's GEMMs, in tera-ops) and
    the exponential throughput (on CUDA of a Triton kernel, :func:`measure_exp_rate`; on the
    CPU of ``torch.exp``, :func:`measure_cpu_exp_rate`), measured now, each the fastest of
    its repeats (:func:`_best_time`)."""
    if tiny:
        copy_mb, n, repeats = 8, 256, 2
    elif device.type == "cuda":
        copy_mb, n, repeats = 2048, 8192, 20
    else:
        copy_mb, n, repeats = 256, 1024, 7
    src = torch.empty(copy_mb * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t_copy = _best_time(lambda: dst.copy_(src), device, repeats)
    peaks = {"copy_gbps": 2 * src.numel() * 4 / t_copy / 1e9}
    kinds = [
        (torch.bfloat16, False, "matmul_tflops_bf16"),
        (torch.float32, False, "matmul_tflops_fp32"),
    ]
    if device.type == "cuda":
        kinds.append((torch.float32, True, "matmul_tflops_tf32"))
    was = torch.backends.cuda.matmul.allow_tf32
    try:
        for dtype, tf32, key in kinds:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            t_mm = _best_time(lambda a=a, b=b: a @ b, device, repeats)
            peaks[key] = 2 * n**3 / t_mm / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was
    if device.type == "cpu":
        try:
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            t_mm = _best_time(lambda: torch._int_mm(a, b), device, repeats)
            peaks["matmul_tops_int8"] = 2 * n**3 / t_mm / 1e12
        except (RuntimeError, AttributeError) as exc:  # a torch without a CPU int8 GEMM
            print(f"int8 matmul peak not measured: {exc!r}"[:300])
    try:
        if device.type == "cuda":
            peaks["exp_per_s"] = measure_exp_rate(device, tiny=tiny)
        else:
            peaks["exp_per_s"] = measure_cpu_exp_rate(tiny=tiny)
    except Exception as exc:  # a peak we cannot measure is left out, not fatal
        print(f"exp peak not measured: {exc!r}"[:300])
    return {k: round(v, 3) for k, v in peaks.items()}


def best_peaks(*runs: dict[str, float]) -> dict[str, float]:
    """Each ceiling's best over several measurements of :func:`measure_peaks` (the suite
    measures them at its start and its end)."""
    keys = dict.fromkeys(k for run in runs for k in run)
    return {k: max(run[k] for run in runs if k in run) for k in keys}


def measure_cpu_exp_rate(tiny: bool = False) -> float:
    """Exponentials per second of ``torch.exp`` on the CPU at torch's current threads: a
    float32 buffer of 256 Ki values per thread (1 MiB: in the L2 cache, so the exponential
    and not the memory is timed) exponentiated into another, 16 times per sample. The
    fastest of 7 samples: on a shared machine a descheduled thread stalls a whole parallel
    region, and the ceiling is what the hardware does, not what the load left."""
    n = 2**18 * torch.get_num_threads()
    x = torch.rand(n) - 0.5
    y = torch.empty_like(x)
    repeats = 2 if tiny else 16
    torch.exp(x, out=y)
    best = float("inf")
    for _ in range(3 if tiny else 7):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.exp(x, out=y)
        best = min(best, time.perf_counter() - start)
    return repeats * n / best


def measure_exp_rate(device: torch.device, tiny: bool = False) -> float:
    """Exponentials per second of a Triton kernel that does little else (two independent
    chains of ``x = exp2(-0.5 x)`` per element in float32: the special-function unit's
    throughput)."""
    import triton

    n = 2**16 if tiny else 2**24
    x = torch.rand(n, device=device)
    grid = (triton.cdiv(n, EXP_BLOCK),)

    def run():
        _exp_chain[grid](x, n, ITERS=EXP_ITERS, BLOCK=EXP_BLOCK, num_warps=8)

    t = _best_time(run, device, 3 if tiny else 10)
    return 2 * EXP_ITERS * n / t


EXP_ITERS, EXP_BLOCK = 256, 1024
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no Triton: no exponential peak
    _exp_chain = None
else:

    @triton.jit
    def _exp_chain(x_ptr, n, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
        y = x + 1.0
        for _ in range(ITERS):
            x = tl.exp2(x * -0.5)
            y = tl.exp2(y * -0.5)
        tl.store(x_ptr + offs, x + y, mask=offs < n)
